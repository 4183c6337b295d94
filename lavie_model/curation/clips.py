"""Clips: shots found with PySceneDetect, cut into windows, written frame-accurately in the same decode.

Frames are addressed by their index in decode order, which is exact for variable frame rate files too. A
source is decoded once (`probe_and_cut`, riding on probe's decode; `make_clips` decodes a probed file again):
every frame feeds PySceneDetect's ContentDetector and is scaled to the clip size into a spill file; as soon
as a shot ends, its windows are resampled, measured (motion, stills) and encoded from the spill (writer.py), so no
boundary snaps to a keyframe and the spill holds about one shot. With `stream_copy`, pieces that need no
re-encoding keep the source's packets. Every piece of a source ends as a clip row or a drop row.
"""

import glob
import queue
import shutil
import subprocess
import tempfile
import threading
from bisect import bisect_left
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import cv2
import ffmpeg
import imageio_ffmpeg
import numpy as np
from av.video.reformatter import VideoReformatter
from scenedetect import FrameTimecode
from scenedetect.detectors import ContentDetector
from scenedetect.scene_manager import compute_downscale_factor

from .probe import ProbeConfig, ProbeResult, end_time, frame_duration, frame_time, open_input, probe
# re-exported: the clip settings and the planning of pieces live in windows.py
from .windows import ClipConfig, Piece, Shots, clip_name, plan_pieces, shot_pieces, span_piece  # noqa: F401
from .writer import ClipMeasure, FrameSpill, clip_size, measure_clip, resample, upright, write_clip


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
    motion: dict[str, float] = field(default_factory=dict)  # clip_id: motion (writer.py), measured while writing
    stills: dict[str, dict[int, bytes]] = field(default_factory=dict)  # clip_id: {clip frame: JPEG} (writer.py)
    peak_frames: int = 0  # the most frames the spill held at once
    copied: list[str] = field(default_factory=list)  # clip_ids that kept the source's packets (stream_copy)


class ContentScores(ContentDetector):
    """PySceneDetect's ContentDetector (default weights: hue, saturation and value alike, no edges), its frame score
    summed with OpenCV instead of numpy: the same integer sums divided the same way, so the same scores and cuts,
    in about half the time. Takes BGR or BGRA frames (OpenCV's BGR-to-HSV conversion ignores the fourth channel)."""

    def __init__(self, threshold: float, min_scene_len: int):
        super().__init__(threshold=threshold, min_scene_len=min_scene_len)
        self.last_hsv = None

    def _calculate_frame_score(self, timecode: FrameTimecode, frame_img: np.ndarray) -> float:
        hsv = cv2.cvtColor(frame_img, cv2.COLOR_BGR2HSV)  # (h, w, 3) uint8
        last, self.last_hsv = self.last_hsv, hsv
        if last is None:
            return 0.0
        pixels = float(hsv.shape[0] * hsv.shape[1])
        hue, saturation, value, _ = cv2.sumElems(cv2.absdiff(hsv, last))  # exact: integers below 2**53
        components = (hue / pixels, saturation / pixels, value / pixels, 0.0)
        weights = self._weights
        return sum(part * weight for part, weight in zip(components, weights)) / sum(abs(w) for w in weights)


class ShotDetector:
    """PySceneDetect's ContentDetector fed one decoded frame at a time (a `probe` frame hook), on frames
    downscaled as PySceneDetect does; `shots()` gives the result once every frame has been fed.

    An error on a frame (the errors `make_clips` records as a failed shot detection) stops it and `shots()`
    raises it, so that, fed by `probe`, a failure of shot detection never changes probe's verdict. With
    `detect=False` it only records the frames' times and keyframes (the shots are known already).
    """

    def __init__(self, config: ClipConfig = ClipConfig(), detect: bool = True):
        self.detector = ContentScores(config.threshold, config.min_scene_frames)
        self.times, self.cuts, self.size, self.rate, self.last_duration, self.error = [], [], None, None, None, None
        self.keyframes, self.detect, self.reformatter = [], detect, VideoReformatter()

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
            if not self.detect:
                return
            # one reformatter for every frame (a new one per frame costs more than the detector) and one swscale
            # thread (PyAV's default, a thread pool per call, is several times slower here); BGRA is the same
            # pixels as BGR24 with a fourth byte, and swscale writes it faster
            pixels = self.reformatter.reformat(frame, *self.size, "bgra", threads=1).to_ndarray()  # (h, w, 4)
            self.cuts += [cut.frame_num for cut in self.detector.process_frame(FrameTimecode(index, rate), pixels)]
        except MemoryError:  # the worker's memory limit (guard.py)
            raise
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
        cuts = self.cuts + ([cut.frame_num for cut in self.detector.post_process(last)] if self.detect else [])
        bounds = [0] + sorted(cut for cut in set(cuts) if 0 < cut < len(times)) + [len(times)]
        times = [time - times[0] for time in times + [end_time(times, self.last_duration, float(self.rate))]]
        return Shots(list(zip(bounds[:-1], bounds[1:])), times)


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
SHOT_COLUMNS = ("shot_ranges", "frame_times", "shot_threshold", "shot_min_frames")


def probe_with_shots(path, probe_config: ProbeConfig = ProbeConfig(), config: ClipConfig = ClipConfig(),
                     sha256: str | None = None) -> dict:
    """A probe row (ProbeResult's fields) with the shots found in the same decode, as SHOT_COLUMNS (None where
    the file was quarantined or shot detection failed); `stored_shots` reads them back for `make_clips`."""
    return shot_row(*probe_and_detect_shots(path, probe_config, config, sha256), config)


def shot_row(result: ProbeResult, shots: Shots | None, config: ClipConfig) -> dict:
    """A probe row: the result's fields, and the shots found with `config` as SHOT_COLUMNS (None without them)."""
    row = dict.fromkeys(SHOT_COLUMNS)
    if shots is not None:
        row |= {"shot_ranges": [list(r) for r in shots.ranges], "frame_times": shots.times,
                "shot_threshold": config.threshold, "shot_min_frames": config.min_scene_frames}
    return asdict(result) | row


def stored_shots(row: dict, config: ClipConfig) -> Shots | None:
    """The shots a probe row holds when they were found with `config`'s detector settings; else None (detect
    them again, as for a row written before a column of SHOT_COLUMNS existed)."""
    if any(row.get(name) is None for name in SHOT_COLUMNS):
        return None
    if (row["shot_threshold"], row["shot_min_frames"]) != (config.threshold, config.min_scene_frames):
        return None
    return Shots([(int(start), int(end)) for start, end in row["shot_ranges"]], [float(t) for t in row["frame_times"]])


def first_frame(path, at: float | None = None):
    """The first decoded frame of `path` (from the keyframe at or before `at` seconds, when given)."""
    with open_input(Path(path)) as container:
        stream = container.streams.video[0]
        if at is not None:
            container.seek(round(at / stream.time_base), stream=stream, backward=True)
        return next(container.decode(stream))


def copy_piece(path, piece: Piece, times: list[float], origin: float, partial: Path) -> bool:
    """Copy the packets of `piece` (keyframe to keyframe) from `path` (`times`: its frames' times from the first,
    whose own timestamp is `origin`) into `partial` without re-encoding; whether the copy holds exactly its frames
    (its frame count, and its first frame equal to the source's)."""
    middle = origin + (times[piece.start_frame] + times[piece.start_frame + 1]) / 2  # inside the piece's first frame
    count = piece.end_frame - piece.start_frame
    # seek to the keyframe at or before `middle` (the piece's first frame), keep the source's timestamps (an
    # offset by `middle` would put that keyframe before zero, where the mp4 edit list hides it), take `count`
    source = ffmpeg.input(f"file:{Path(path).absolute()}", seek_timestamp=1, ss=f"{middle:.6f}")
    copy = ffmpeg.output(source["v:0"], f"file:{Path(partial).absolute()}", f="mp4", c="copy", an=None,
                         avoid_negative_ts="make_zero", map_metadata=-1, **{"frames:v": count})
    command = copy.global_args("-nostdin", "-loglevel", "error", "-copyts").overwrite_output().compile(
        cmd=imageio_ffmpeg.get_ffmpeg_exe())  # an argument list, run without a shell
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


# what a failure to decode, scale, spill or encode raises (a clip's own failure becomes its drop row)
CUT_ERRORS = (av.error.FFmpegError, OSError, ValueError, IndexError)


class Cutter:
    """A frame hook (for `probe`, or a decode of its own in `make_clips`) that writes a video's clips while it
    decodes. Each frame is scaled upright to the clip size into a spill file (writer.FrameSpill); a piece is
    written as soon as its frames are all in: a shot's windows once the detector has found the shot's end (the
    cuts it reports never go back), a span's once a frame at or after its end has decoded, a given plan's once
    its last frame has. A thread of its own encodes the pieces while decoding goes on, and decoding waits
    while it is more than the spill's memory ahead of the writer, so the spill holds at most about the longest
    shot and that many frames more. Files are written under partial names in a folder of their own; `finish`
    renames them into place once the whole video has decoded, `discard` removes them. It never raises from a
    frame: the first error stops it, and `finish` turns it into drop rows."""

    def __init__(self, path, out_dir, config: ClipConfig, measure: ClipMeasure, shots: Shots | None = None,
                 spans: list[dict] | None = None):
        self.path, self.out_dir, self.config, self.measure = Path(path), Path(out_dir), config, measure
        self.spans = spans
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.work = Path(tempfile.mkdtemp(prefix=work_prefix(self.path), dir=self.out_dir))
        self.detector = ShotDetector(config, detect=shots is None)
        self.given = shots
        self.next_shot, self.boundary, self.spans_done = 0, 0, set()  # what planning has covered
        self.planned: list[tuple[Piece, str]] = []  # pieces planned and not yet written, with drop reasons
        if shots is not None:  # the whole plan is known before the first frame
            self.planned = self._plan(shots.times, len(shots.times) - 1, shots)
        self.written: list[tuple[Piece, Path, int, tuple]] = []  # piece, partial file, frames, (motion, stills)
        self.copied: set[tuple[int, int]] = set()  # the pieces' frames
        self.drops: list[tuple[Piece, str]] = []
        self.times: list[float] = []  # each decoded frame's time from the first
        self.spill, self.error, self.copy_source, self.peak_frames, self.memory_error = None, None, None, 0, None
        self.shots: Shots | None = None  # the video's shots, once it has decoded (times then ends with its end)
        self.reformatter = VideoReformatter()
        self.jobs: queue.Queue = queue.Queue()  # pieces for the writer thread; None ends it
        self.writer: threading.Thread | None = None
        self.in_flight: list[Piece] = []  # pieces given to the writer and not written yet
        self.lock = threading.Condition()  # guards the spill and in_flight; notified when a piece is written

    def __call__(self, index: int, frame: av.VideoFrame, rate: Fraction) -> None:
        self.detector(index, frame, rate)
        if self.error is not None or self.detector.error is not None:
            return
        try:
            if self.spill is None:
                self._start(frame, rate)
            self.times.append(self.detector.times[-1] - self.detector.times[0])
            picture = upright(frame, self.reformatter, self.spill_size, self.rotation)
            with self.lock:
                self.spill.append(index, picture)
                self.peak_frames = max(self.peak_frames, self.spill.count)
            if self.given is None:
                self.planned += self._plan(self.times, len(self.times))
            self._write_ready(final=False)
            with self.lock:  # decoding is more than the spill's memory ahead of the writer: wait for it
                while self.in_flight and self._lead() > self.spill.memory_frames:
                    self.lock.wait()
                    self.spill.forget_before(self._needed_from(len(self.times)))
        except MemoryError:  # the worker's memory limit (guard.py): the whole file fails, not a piece
            raise
        except CUT_ERRORS as error:
            self.error = error

    def _start(self, frame: av.VideoFrame, rate: Fraction) -> None:
        self.rotation = round(frame.rotation / 90) % 4 * 90
        width, height = (frame.height, frame.width) if self.rotation in (90, 270) else (frame.width, frame.height)
        self.display = (width, height)
        self.spill_size = clip_size(width, height, self.config.short_side)
        self.spill = FrameSpill(self.work, *self.spill_size)
        self.rate, self.time_base = rate, frame.time_base or Fraction(1, 90000)
        if self.config.stream_copy:  # what the stream holds, for copyable(): its codec and pixel format
            with open_input(self.path) as container:
                context = container.streams.video[0].codec_context
                self.copy_source = (context.name, context.pix_fmt)

    def _plan(self, times: list[float], frames: int, shots: Shots | None = None) -> list[tuple[Piece, str]]:
        """Pieces newly known over `frames` frame starts in `times`; with the video's `shots` (then `times` ends
        with the end of the video), every piece left."""
        if self.spans is not None:
            ready = [i for i, span in enumerate(self.spans) if i not in self.spans_done
                     and (shots is not None or (frames and times[frames - 1] >= float(span["end"]) - 1e-3))]
            self.spans_done.update(ready)
            return [span_piece(times, frames, i, self.spans[i], self.config) for i in ready]
        if shots is not None:  # the shots from where planning stopped
            if self.boundary and shots.ranges[self.next_shot][0] != self.boundary:  # never seen: cuts only go forward
                raise ValueError(f"the detector's shots of {self.path} differ from the cuts it reported while decoding")
            ranges = list(enumerate(shots.ranges))[self.next_shot:]
        else:  # the shots the detector's cuts have closed so far
            cuts = sorted(c for c in set(self.detector.cuts) if self.boundary < c < frames)
            ranges = list(enumerate(zip([self.boundary] + cuts[:-1], cuts), start=self.next_shot))
        if ranges:
            self.next_shot, self.boundary = ranges[-1][0] + 1, ranges[-1][1][1]
        return [item for shot, (start, end) in ranges for item in shot_pieces(times, shot, start, end, self.config)]

    def _lead(self) -> int:
        """Frames decoded past the last the writer still has to write."""
        return len(self.times) - max(piece.end_frame for piece in self.in_flight)

    def _needed_from(self, frames: int) -> int:
        """The first frame a piece not written yet (or not planned yet) may need."""
        starts = [piece.start_frame for piece, _ in self.planned] + [piece.start_frame for piece in self.in_flight]
        if self.given is None and self.spans is None:
            starts.append(self.boundary)
        elif self.spans is not None:
            starts += [bisect_left(self.times, float(span["start"]) - 1e-3) for i, span in enumerate(self.spans)
                       if i not in self.spans_done]
        return min(starts, default=frames)

    def _write_ready(self, final: bool) -> None:
        frames = len(self.times) - (1 if final else 0)  # when final, times ends with the end of the video
        waiting = []
        for piece, reason in self.planned:
            if reason:
                self.drops.append((piece, reason))
            elif final or piece.end_frame < frames:  # frame end has decoded: the piece's end time is known
                self._submit(piece)
            else:
                waiting.append((piece, reason))
        self.planned = waiting
        with self.lock:
            self.spill.forget_before(self._needed_from(frames))

    def _submit(self, piece: Piece) -> None:
        """Give `piece` to the writer thread (started with the first)."""
        job = (piece, self._copyable(piece), self.times)
        with self.lock:
            self.in_flight.append(piece)
        if self.writer is None:
            self.writer = threading.Thread(target=self._write_all, name=f"clips of {self.path.name}", daemon=True)
            self.writer.start()
        self.jobs.put(job)

    def _write_all(self) -> None:
        while (job := self.jobs.get()) is not None:
            try:
                self._write(*job)
            except MemoryError as error:  # raised again by finish(): over the worker's memory limit
                self.memory_error = error
            except Exception as error:  # the thread's edge: a piece that fails in any way becomes a drop row
                self.drops.append((job[0], f"transcode failed: {error}"))
            finally:
                with self.lock:
                    self.in_flight.remove(job[0])
                    self.lock.notify()

    def _drain(self) -> None:
        """Wait until the writer thread has written every piece given to it, and end it."""
        if self.writer is not None:
            self.jobs.put(None)
            self.writer.join()
            self.writer = None

    def _frame(self, index: int) -> av.VideoFrame:
        with self.lock:
            return self.spill.frame(index)

    def _write(self, piece: Piece, copy: bool, times: list[float]) -> None:
        """Write one piece from the spill (in the writer thread): copied, or resampled and encoded; measured."""
        start, end, fps = piece.start_frame, piece.end_frame, self.config.fps
        partial = self.work / f"{start:06d}_{end:06d}.mp4"
        sources = resample(times, start, end, fps) if fps else list(range(start, end))
        encoder, size = self.config.encoder(), self.spill_size
        try:
            if copy and copy_piece(self.path, piece, times, self.detector.times[0], partial):
                measured = measure_clip(self._frame, sources, self.measure)
                self.copied.add((start, end))
            else:
                if fps:  # one tick per output frame
                    rate = Fraction(fps).limit_denominator(1_001_000)
                    time_base, pts = 1 / rate, list(range(len(sources)))
                else:  # the source's frame times
                    rate, time_base = self.rate, self.time_base
                    pts = [round((times[i] - times[start]) / time_base) for i in sources]
                measured = write_clip(self._frame, size, sources, pts, time_base, rate, encoder, self.measure, partial)
        except MemoryError:
            partial.unlink(missing_ok=True)
            raise
        except (av.error.FFmpegError, OSError, RuntimeError) as error:
            partial.unlink(missing_ok=True)
            self.drops.append((piece, f"transcode failed: {error}"))
            return
        self.written.append((piece, partial, len(sources), measured))

    def _copyable(self, piece: Piece) -> bool:
        """Whether `piece` can keep the source's packets (ClipConfig.stream_copy): H.264 yuv420p, upright, at the
        clip size, at the clip rate over the piece, from a keyframe to a keyframe or the end of the video."""
        if not self.config.stream_copy or self.copy_source != ("h264", "yuv420p") or self.rotation:
            return False
        if self.spill_size != self.display:
            return False
        keyframes, start, end = self.detector.keyframes, piece.start_frame, piece.end_frame
        last = self.shots is not None and end == len(self.times) - 1  # the piece ends with the video
        if start not in keyframes or not (end in keyframes or last):
            return False
        gaps = np.diff(self.times[start:end + 1])
        return self.config.fps is None or bool(np.all(np.abs(gaps * self.config.fps - 1) <= 1e-3))

    def finish(self, probed: ProbeResult) -> ClipsResult:
        """The clip rows (their files renamed into place) and drop rows of a video that decoded to the end."""
        source = (probed.sha256, probed.path)
        try:
            if self.detector.error is not None or not self.detector.times:
                error = self.detector.error or ValueError(f"no video frame decodes in {self.path}")
                end = probed.frame_count or 0
                return ClipsResult([], [DropRow(*source, 0, 0, end, 0.0, probed.duration or 0.0,
                                                f"shot detection failed: {error}")])
            self.shots = self.given or self.detector.shots(self.path)
            self.times = self.shots.times  # the frames' times, then the end of the video
            if self.error is None:
                try:
                    if self.given is None:
                        self.planned += self._plan(self.times, len(self.times) - 1, self.shots)
                    self._write_ready(final=True)
                except MemoryError:
                    raise
                except CUT_ERRORS as error:
                    self.error = error
            self._drain()
            if self.memory_error is not None:
                raise self.memory_error
            if self.error is not None:  # everything not written yet fails with it
                self.drops += [(piece, reason or f"transcode failed: {self.error}") for piece, reason in self.planned]
                self.drops += [(piece, f"transcode failed: {self.error}") for piece, *_ in self.written]
                self.written, self.planned = [], []
            times = self.times
            clips, motion, stills = [], {}, {}
            for piece, partial, frame_count, measured in sorted(self.written, key=lambda item: item[0].start_frame):
                path = self.out_dir / clip_name(probed.sha256, piece)
                partial.replace(path)
                seconds = times[piece.end_frame] - times[piece.start_frame]
                clips.append(ClipRow(
                    path.stem, *source, piece.shot, piece.start_frame, piece.end_frame, times[piece.start_frame],
                    times[piece.end_frame], self.config.fps or frame_count / seconds, *self.spill_size, frame_count,
                    str(path)))
                motion[path.stem], stills[path.stem] = measured
            drops = [DropRow(*source, piece.shot, piece.start_frame, piece.end_frame, times[piece.start_frame],
                             times[piece.end_frame], reason)
                     for piece, reason in sorted(self.drops, key=lambda item: item[0].start_frame)]
            copied = [clip.clip_id for clip in clips if (clip.start_frame, clip.end_frame) in self.copied]
            return ClipsResult(clips, drops, motion, stills, self.peak_frames, copied)
        finally:
            self.discard()

    def discard(self) -> None:
        """Remove the spill and every partial file."""
        self._drain()
        if self.spill is not None:
            self.spill.close()
        shutil.rmtree(self.work, ignore_errors=True)


def make_clips(probed: ProbeResult, out_dir, config: ClipConfig = ClipConfig(), shots: Shots | None = None,
               spans: list[dict] | None = None, measure: ClipMeasure = ClipMeasure()) -> ClipsResult:
    """Shots, windows and clip files of a probed video, in a decode of its own; every piece ends as a clip row or
    a drop row.

    shots: those `probe_with_shots` found with the same config; None detects them in the same decode.
    spans: a URL table's time spans of this video: one clip per span (its index is the clip's `shot`) instead
    of the shots' windows.
    measure: what is measured and kept of each clip as it is written (motion, stills; ScoreConfig.measure()).
    """
    if not probed.ok:
        raise ValueError(f"{probed.path} was quarantined by probe ({probed.reason}); it has no clips")
    cutter = Cutter(probed.path, out_dir, config, measure, shots, spans)
    try:
        with open_input(Path(probed.path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            rate = stream.average_rate or Fraction(25)
            for index, frame in enumerate(container.decode(stream)):
                cutter(index, frame, rate)
    except MemoryError:  # the worker's memory limit (guard.py)
        cutter.discard()
        raise
    except (av.error.FFmpegError, OSError, ValueError, IndexError) as error:
        if shots is None:  # the file changed since it was probed: its shots cannot be told
            cutter.detector.error = error
        else:
            cutter.error = cutter.error or error
    return cutter.finish(probed)


def probe_and_cut(path, out_dir, probe_config: ProbeConfig = ProbeConfig(), config: ClipConfig = ClipConfig(),
                  measure: ClipMeasure = ClipMeasure(), sha256: str | None = None,
                  spans: list[dict] | None = None) -> tuple[dict, ClipsResult]:
    """`probe_with_shots` and `make_clips` in one decode: the probe row (with the shots, as SHOT_COLUMNS) and the
    clips; a quarantined file has no clip and no drop row (its probe row says why)."""
    cutter = Cutter(path, out_dir, config, measure, spans=spans)
    try:
        result = probe(path, probe_config, sha256, on_frame=cutter)
    except MemoryError:  # the worker's memory limit (guard.py)
        cutter.discard()
        raise
    if not result.ok:
        cutter.discard()
        return shot_row(result, None, config), ClipsResult([], [])
    clips = cutter.finish(result)
    return shot_row(result, cutter.shots, config), clips


def work_prefix(path) -> str:
    """The start of the name of the folder a Cutter of `path` writes its partial clips in (under the clips folder):
    .cutting-STEM- (the stem of a stored file is its SHA-256)."""
    return f".cutting-{Path(path).stem[:64]}-"


def remove_partial_clips(out_dir, path, sha256: str) -> int:
    """Remove what a worker killed while cutting `path` left in `out_dir`: its Cutter's folders of partial clips and
    the clip files of its source (a worker killed while renaming them into place); how many entries."""
    out_dir = Path(out_dir)
    entries = [*out_dir.glob(glob.escape(work_prefix(path)) + "*"), *out_dir.glob(f"{glob.escape(sha256)}_*.mp4")]
    for entry in entries:
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
    return len(entries)
