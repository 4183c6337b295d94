"""Probe: decode-validate one video file in-process with PyAV, and say why it is unusable if it is.

Every frame is decoded (the frame count is what decodes, not what the container claims), so a file that
passes can be cut and transcoded. `probe` never raises on bad input: an empty, undecodable, truncated,
audio-only, too short or too small file gives a result with `ok=False` and a `reason`. Another per-frame
pass (shot detection) can ride on probe's decode through `on_frame`, so that a file is decoded once.
"""

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

# Two frames count as evenly spaced when their gaps differ by less than this fraction of the median gap.
VFR_TOLERANCE = 0.1
# Frames the decoder may deliver fewer than the container lists (edit lists) before a file counts as truncated.
MISSING_FRAMES_TOLERATED = 1


@dataclass(frozen=True)
class ProbeConfig:
    min_seconds: float = 1.0  # shorter videos are quarantined
    min_side: int = 64  # videos whose short side (after rotation) is smaller are quarantined


@dataclass
class ProbeResult:
    path: str
    sha256: str
    size_bytes: int
    ok: bool
    reason: str = ""  # why the file is quarantined; empty when ok
    duration: float | None = None  # seconds, from the decoded frames' timestamps
    fps: float | None = None  # decoded frames per second of duration (the average rate of a VFR file)
    variable_frame_rate: bool | None = None
    width: int | None = None  # display size: coded size with the rotation applied
    height: int | None = None
    codec: str | None = None
    rotation: int | None = None  # degrees, one of 0, 90, 180, 270
    frame_count: int | None = None  # frames that decoded
    has_audio: bool | None = None


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def open_input(path: Path):
    """Open a local file with PyAV; the `file:` prefix keeps a name with a colon from reading as a protocol."""
    return av.open(f"file:{path.absolute()}")


def frame_time(frame, index: int, rate: float) -> float:
    """Seconds of a decoded frame from its timestamp, or from its index where it has none."""
    return float(frame.time) if frame.time is not None else index / rate


def frame_duration(frame) -> float | None:
    return float(frame.duration * frame.time_base) if frame.duration and frame.time_base else None


def end_time(times: list[float], last_duration: float | None, rate: float) -> float:
    """When the last frame ends: after its own duration, else the median gap, else one frame at `rate`."""
    if last_duration is None:
        last_duration = float(np.median(np.diff(times))) if len(times) > 1 else 1 / rate
    return times[-1] + last_duration


# Called with (index, frame, rate) for every frame probe decodes; rate is the stream's average frame rate.
FrameHook = Callable[[int, av.VideoFrame, Fraction], None]


def probe(path, config: ProbeConfig = ProbeConfig(), sha256: str | None = None,
          on_frame: FrameHook | None = None) -> ProbeResult:
    """Decode every frame of `path` and describe it; `ok=False` with a reason for unusable input.

    sha256: the file's digest when the caller already has it (ingestion computed it), saving a full read.
    on_frame: called with every decoded frame, in decode order; it must not raise (an FFmpegError, OSError
    or ValueError from it would quarantine the file as undecodable).
    """
    path = Path(path)
    if not path.is_file():
        return ProbeResult(str(path), sha256 or "", 0, ok=False, reason="not a file")
    try:
        result = ProbeResult(str(path), sha256 or sha256_of(path), path.stat().st_size, ok=True)
    except OSError as error:
        return ProbeResult(str(path), "", 0, ok=False, reason=f"unreadable: {error.strerror or error}")
    if result.size_bytes == 0:
        return _quarantine(result, "empty file: 0 bytes")
    try:
        problem = _decode(path, result, on_frame)
    except (av.error.FFmpegError, OSError, ValueError) as error:
        problem = f"undecodable: {getattr(error, 'strerror', None) or error}"
    if problem:
        return _quarantine(result, problem)
    if result.duration < config.min_seconds:
        return _quarantine(result, f"too short: {result.duration:.2f} s < {config.min_seconds} s")
    if min(result.width, result.height) < config.min_side:
        return _quarantine(result, f"too small: {result.width}x{result.height}, short side < {config.min_side} px")
    return result


def _quarantine(result: ProbeResult, reason: str) -> ProbeResult:
    result.ok, result.reason = False, reason
    return result


def _decode(path: Path, result: ProbeResult, on_frame: FrameHook | None) -> str:
    """Fill `result` from a full decode; the reason the file is unusable, or "" when it decodes."""
    with open_input(path) as container:
        result.has_audio = bool(container.streams.audio)
        if not container.streams.video:
            return "no video stream (audio only)" if result.has_audio else "no video stream"
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        result.codec = stream.codec_context.name
        average_rate = stream.average_rate or Fraction(25)
        rate = float(average_rate)
        times, last_duration, rotation, coded_size = [], None, 0, None
        for index, frame in enumerate(container.decode(stream)):
            if index == 0:
                rotation, coded_size = frame.rotation, (frame.width, frame.height)
            times.append(frame_time(frame, index, rate))
            last_duration = frame_duration(frame)
            if on_frame is not None:
                on_frame(index, frame, average_rate)
        listed = stream.frames
    if not times:
        return "undecodable: no video frame decodes"
    if listed and len(times) < listed - MISSING_FRAMES_TOLERATED:
        return f"truncated: {len(times)} of the {listed} frames the container lists decode"
    gaps = np.diff(times)
    result.frame_count = len(times)
    result.duration = end_time(times, last_duration, rate) - times[0]
    result.fps = len(times) / result.duration
    result.variable_frame_rate = bool(gaps.size and gaps.max() - gaps.min() > VFR_TOLERANCE * np.median(gaps))
    result.rotation = round(rotation / 90) % 4 * 90
    width, height = coded_size
    result.width, result.height = (height, width) if result.rotation in (90, 270) else (width, height)
    return ""
