"""Probe: decode-validate one video file in-process with PyAV, and say why it is unusable if it is.

Every frame is decoded (the frame count is what decodes, not what the container claims), so a file that
passes can be cut and transcoded. `probe` never raises on bad input: an empty, undecodable, truncated,
audio-only, too short or too small file gives a result with `ok=False` and a `reason`. Another per-frame
pass (shot detection) can ride on probe's decode through `on_frame`, so that a file is decoded once.

Limits (ProbeConfig's max_*, CurationSettings' fields of the same names; docs/guides/curation-limits.md): the
header is checked before the first frame is decoded (frame size, declared duration, frame rate, streams), and
every decoded frame again (a header can lie), so a file beyond a limit is quarantined with the limit and its value
named, never half-processed. A header that declares far more video than decodes is quarantined too. The wall-clock
and memory bounds of a file's work are guard.py's; probe declares the file's duration to it.
"""

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from .guard import declare_duration

# Two frames count as evenly spaced when their gaps differ by less than this fraction of the median gap.
VFR_TOLERANCE = 0.1
# Frames the decoder may deliver fewer than the container lists (edit lists) before a file counts as truncated.
MISSING_FRAMES_TOLERATED = 1


# A header that declares more than this many times the seconds that decode, and a minute more, is quarantined.
DECLARED_SLACK = (2.0, 60.0)


@dataclass(frozen=True)
class ProbeConfig:
    min_seconds: float = 1.0  # shorter videos are quarantined
    min_side: int = 64  # videos whose short side (after rotation) is smaller are quarantined
    # Limits beyond which a file is quarantined, from its header before decoding and from every frame decoded.
    # The defaults admit every real dataset's videos and refuse what none holds:
    max_frame_pixels: int = 8192 * 4320  # DCI 8K (35.4 MP): admits 8K UHD 7680x4320 and 8K 360° 8192x4096
    max_duration_seconds: float = 12 * 3600.0  # YouTube's upload limit; long videos are cut into clips as usual
    max_frame_rate: float = 1000.0  # high-speed datasets (X4K1000FPS) go to 1000 fps
    max_streams: int = 64  # video, audio and subtitle tracks together (a Blu-ray remux has a few dozen)

    def __post_init__(self):
        limits = (self.max_frame_pixels, self.max_duration_seconds, self.max_frame_rate, self.max_streams)
        if min(limits) <= 0:
            raise ValueError(f"probe limits must be positive, got {self}")


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
        problem = _decode(path, result, on_frame, config)
    except MemoryError:  # PyAV's ENOMEM too: the worker's memory limit (guard.py), not the file's fault alone
        raise
    except (av.error.FFmpegError, OSError, ValueError) as error:
        problem = f"undecodable: {getattr(error, 'strerror', None) or error}"
    if problem:
        return _quarantine(result, problem)
    if result.duration < config.min_seconds:
        return _quarantine(result, f"too short: {result.duration:.2f} s < {config.min_seconds} s")
    if min(result.width, result.height) < config.min_side:
        return _quarantine(result, f"too small: {result.width}x{result.height}, short side < {config.min_side} px")
    if result.fps > config.max_frame_rate:
        return _quarantine(result, f"frame rate too high: {result.fps:,.1f} fps decode, over max_frame_rate = "
                                   f"{config.max_frame_rate:,g}")
    return result


def header_problem(container, stream, config: ProbeConfig) -> str:
    """Why the header of an open file puts it beyond a limit of `config`, or "": nothing decoded yet."""
    if len(container.streams) > config.max_streams:
        return f"too many streams: {len(container.streams):,}, over max_streams = {config.max_streams:,}"
    width, height = stream.codec_context.width, stream.codec_context.height
    if width * height > config.max_frame_pixels:
        return _too_large(width, height, config)
    if (declared := declared_seconds(container, stream)) > config.max_duration_seconds:
        return (f"too long: the header declares {declared:,.0f} s, over max_duration_seconds = "
                f"{config.max_duration_seconds:,g}")
    if stream.average_rate and float(stream.average_rate) > config.max_frame_rate:
        return (f"frame rate too high: the header declares {float(stream.average_rate):,.1f} fps, over "
                f"max_frame_rate = {config.max_frame_rate:,g}")
    return ""


def declared_seconds(container, stream, video_only: bool = False) -> float:
    """The seconds the header declares: the longest of the container's and the video stream's durations (0 where
    neither is known); with `video_only`, the video stream's, or the container's where it holds nothing else."""
    container_seconds = container.duration / av.time_base if container.duration else 0.0
    stream_seconds = float(stream.duration * stream.time_base) if stream.duration and stream.time_base else 0.0
    if video_only:
        return stream_seconds or (container_seconds if len(container.streams) == 1 else 0.0)
    return max(container_seconds, stream_seconds)


def _too_large(width: int, height: int, config: ProbeConfig, where: str = "") -> str:
    return (f"frame too large: {where}{width}x{height} = {width * height:,} pixels, over max_frame_pixels = "
            f"{config.max_frame_pixels:,}")


def _quarantine(result: ProbeResult, reason: str) -> ProbeResult:
    result.ok, result.reason = False, reason
    return result


def _decode(path: Path, result: ProbeResult, on_frame: FrameHook | None, config: ProbeConfig) -> str:
    """Fill `result` from a full decode; the reason the file is unusable, or "" when it decodes. The header's
    limits are checked before the first frame, each frame's as it decodes (the decode stops at the first over)."""
    with open_input(path) as container:
        result.has_audio = bool(container.streams.audio)
        if not container.streams.video:
            return "no video stream (audio only)" if result.has_audio else "no video stream"
        stream = container.streams.video[0]
        if stream.codec_context is None:
            return "undecodable: no decoder for the video stream's codec"
        if problem := header_problem(container, stream, config):
            return problem
        declared = declared_seconds(container, stream, video_only=True)
        declare_duration(declared_seconds(container, stream))  # the wall-clock limit of a guarded worker
        stream.thread_type = "AUTO"
        result.codec = stream.codec_context.name
        average_rate = stream.average_rate or Fraction(25)
        rate = float(average_rate)
        times, last_duration, rotation, coded_size = [], None, 0, None
        for index, frame in enumerate(container.decode(stream)):
            if index == 0:
                rotation, coded_size = frame.rotation, (frame.width, frame.height)
            if frame.width * frame.height > config.max_frame_pixels:
                return _too_large(frame.width, frame.height, config, f"frame {index} decodes at ")
            times.append(frame_time(frame, index, rate))
            if times[-1] - times[0] > config.max_duration_seconds:
                return (f"too long: frame {index} is at {times[-1] - times[0]:,.0f} s, over max_duration_seconds = "
                        f"{config.max_duration_seconds:,g}")
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
    if declared > DECLARED_SLACK[0] * result.duration + DECLARED_SLACK[1]:
        return f"inconsistent header: it declares {declared:,.2f} s of video, {result.duration:,.2f} s decode"
    result.fps = len(times) / result.duration
    result.variable_frame_rate = bool(gaps.size and gaps.max() - gaps.min() > VFR_TOLERANCE * np.median(gaps))
    result.rotation = round(rotation / 90) % 4 * 90
    width, height = coded_size
    result.width, result.height = (height, width) if result.rotation in (90, 270) else (width, height)
    return ""
