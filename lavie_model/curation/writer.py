"""Clip files written in-process from frames decoded once: a spill holds the source's frames at the clip size
until a clip's cut points are known; each clip is then resampled, measured and encoded with libx264 through
PyAV.

Measured here on the frames as they go into the encoder, for `clip_scores` and `captioned_clips`:
- motion, as `clip_scores` reports it: the mean Farneback optical-flow magnitude in pixels per frame, on grey
  frames whose short side is `motion_size` pixels, over `motion_pairs` evenly spaced pairs of consecutive clip
  frames (every pair of a shorter clip);
- stills: the frames CLIP and the captioner look at, as JPEG at the clip size, so that neither decodes the clip.
"""

import ctypes
import ctypes.util
import functools
import io
import math
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
from av.video.frame import PictureType
from av.video.reformatter import Interpolation, VideoReformatter
from PIL import Image

# Farneback parameters (pyr_scale, levels, winsize, iterations, poly_n, poly_sigma, flags): OpenCV's usual ones
FARNEBACK = (0.5, 3, 15, 3, 5, 1.2, 0)


STILL_QUALITY = 90  # JPEG quality of the stills: about as faithful as the clips (crf 20); 50-60 kB at 568 x 320


@dataclass(frozen=True)
class ClipMeasure:
    """What the clip writer measures and keeps of each clip for `clip_scores` (ScoreConfig.measure() gives the
    scorer's settings) and `captioned_clips`."""

    motion_size: int = 64  # short side of the frames optical flow runs on
    motion_pairs: int = 24  # pairs of consecutive frames optical flow runs on, evenly spaced over the clip
    score_frames: int = 3  # stills for CLIP: this many frames evenly spaced from the first to the last
    caption_frames: int = 0  # stills for the captioner: the middle frames of this many equal parts (0: none)

    def still_indices(self, frame_count: int) -> set[int]:
        """The clip frames kept as stills."""
        scored = sample_indices(frame_count, self.score_frames) if self.score_frames else []
        captioned = middle_indices(frame_count, self.caption_frames) if self.caption_frames else []
        return set(scored) | set(captioned)


@dataclass(frozen=True)
class Encoder:
    """libx264 settings of a clip file (ClipConfig's crf, preset, x264_params)."""

    crf: int
    preset: str
    x264_params: str


def sample_indices(frame_count: int, count: int) -> list[int]:
    """`count` evenly spaced frame indices from the first to the last (fewer for very short clips)."""
    return sorted({round(float(index)) for index in np.linspace(0, frame_count - 1, count)})


def middle_indices(frame_count: int, count: int) -> list[int]:
    """The middle frame of each of `count` equal parts of a clip (distinct, ascending): the captioner's frames."""
    return sorted({int((i + 0.5) * frame_count / count) for i in range(count)})


def pair_starts(frame_count: int, pairs: int | None) -> set[int]:
    """First frames of the pairs (i, i + 1) that motion is measured on: `pairs` evenly spaced ones, or all (None)."""
    if frame_count < 2:
        return set()
    return set(range(frame_count - 1)) if pairs is None else set(sample_indices(frame_count - 1, pairs))


def clip_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """Display size scaled so that the short side is `short_side`, the long side rounded to even."""
    scale = short_side / min(width, height)
    if width <= height:
        return short_side, max(2, round(height * scale / 2) * 2)
    return max(2, round(width * scale / 2) * 2), short_side


class Motion:
    """Mean optical-flow magnitude over the pairs of consecutive frames that start at `starts`, fed frame by frame."""

    def __init__(self, frame_count: int, pairs: int | None, short_side: int):
        self.starts, self.short_side = pair_starts(frame_count, pairs), short_side
        self.reformatter, self.previous, self.size, self.magnitudes = VideoReformatter(), None, None, []

    def __call__(self, index: int, frame: av.VideoFrame) -> None:
        if index not in self.starts and index - 1 not in self.starts:
            return
        self.size = self.size or clip_size(frame.width, frame.height, self.short_side)
        # one swscale thread: PyAV's default (a thread pool per call) is several times slower here
        grey = self.reformatter.reformat(frame, *self.size, "gray", threads=1).to_ndarray()  # (h, w) uint8
        if index - 1 in self.starts:  # `previous` is frame index - 1
            flow = cv2.calcOpticalFlowFarneback(self.previous, grey, None, *FARNEBACK)  # (h, w, 2) pixels
            self.magnitudes.append(float(np.linalg.norm(flow, axis=2).mean()))
        self.previous = grey

    def value(self) -> float:
        return float(np.mean(self.magnitudes)) if self.magnitudes else math.nan


def encode_still(frame: av.VideoFrame) -> bytes:
    """A frame as JPEG (STILL_QUALITY)."""
    out = io.BytesIO()
    frame.to_image().save(out, format="JPEG", quality=STILL_QUALITY)
    return out.getvalue()


def decode_still(data: bytes) -> Image.Image:
    """A still as an RGB image."""
    return Image.open(io.BytesIO(data)).convert("RGB")


def kept_stills(stills: dict[int, bytes] | None, indices: list[int]) -> list[Image.Image] | None:
    """The stills (clip frame: JPEG) at `indices` as RGB images, or None unless every one of them was kept."""
    if stills is None or any(index not in stills for index in indices):
        return None
    return [decode_still(stills[index]) for index in indices]


class Measurer:
    """A clip's motion and stills, fed its frames in order."""

    def __init__(self, frame_count: int, measure: ClipMeasure):
        self.motion = Motion(frame_count, measure.motion_pairs, measure.motion_size)
        self.wanted, self.stills = measure.still_indices(frame_count), {}

    def __call__(self, index: int, frame: av.VideoFrame) -> None:
        self.motion(index, frame)
        if index in self.wanted:
            self.stills[index] = encode_still(frame)

    def result(self) -> tuple[float, dict[int, bytes]]:
        return self.motion.value(), self.stills


SPILL_MEMORY = 256 * 2**20  # bytes of frames a spill holds in memory (about 940 frames at 568 x 320)


class FrameSpill:
    """yuv420p frames of one size, from frame `first` on: the newest in memory (as they are), up to `memory_bytes`,
    the older ones on disk, in unlinked temporary files of CHUNK frames each. Frames that no clip needs any more
    are forgotten, a chunk file once all its frames are, so that the spill holds about one shot at a time."""

    CHUNK = 64  # frames per file on disk (17 MB at 568 x 320)

    def __init__(self, folder: Path, width: int, height: int, memory_bytes: int | None = None):
        self.width, self.height, self.frame_bytes = width, height, width * height * 3 // 2
        self.folder, self.memory_frames = folder, max(1, (memory_bytes or SPILL_MEMORY) // self.frame_bytes)
        self.first, self.on_disk = 0, 0  # frames [first, first + on_disk) are on disk
        self.chunks: dict[int, object] = {}  # frame index // CHUNK: its file
        self.recent: list[av.VideoFrame] = []  # then these, in memory

    @property
    def count(self) -> int:
        return self.on_disk + len(self.recent)

    def append(self, index: int, frame: av.VideoFrame) -> None:
        """Hold frame `index` (yuv420p at the spill's size); frames are appended in order, without gaps."""
        if self.count == 0:
            self.first = index
        elif index != self.first + self.count:
            raise ValueError(f"frame {index} appended after frame {self.first + self.count - 1}")
        self.recent.append(frame)
        if len(self.recent) > self.memory_frames:  # the oldest frame in memory goes to disk
            oldest = self.first + self.on_disk
            chunk, slot = divmod(oldest, self.CHUNK)
            if chunk not in self.chunks:
                self.chunks[chunk] = tempfile.TemporaryFile(dir=self.folder, buffering=0)
            pixels = self.recent.pop(0).to_ndarray()  # (h * 3 / 2, w) uint8
            os.pwrite(self.chunks[chunk].fileno(), pixels.data, slot * self.frame_bytes)
            self.on_disk += 1

    def frame(self, index: int) -> av.VideoFrame:
        if not self.first <= index < self.first + self.count:
            raise IndexError(f"frame {index} is not held (frames {self.first} to {self.first + self.count - 1} are)")
        if index >= self.first + self.on_disk:
            return self.recent[index - self.first - self.on_disk]
        chunk, slot = divmod(index, self.CHUNK)
        data = os.pread(self.chunks[chunk].fileno(), self.frame_bytes, slot * self.frame_bytes)
        pixels = np.frombuffer(data, np.uint8).reshape(self.height * 3 // 2, self.width)
        return av.VideoFrame.from_ndarray(pixels, format="yuv420p")

    def forget_before(self, index: int) -> None:
        """Frames before `index` are needed no more; chunk files whose frames all are are removed."""
        drop = min(max(0, index - self.first), self.count)
        from_disk = min(drop, self.on_disk)
        self.first, self.on_disk = self.first + drop, self.on_disk - from_disk
        del self.recent[:drop - from_disk]
        last = self.first + self.on_disk - 1  # the last frame on disk
        disk = range(self.first // self.CHUNK, last // self.CHUNK + 1) if self.on_disk else range(0)  # chunks in use
        for chunk in [chunk for chunk in self.chunks if chunk not in disk]:
            self.chunks.pop(chunk).close()

    def close(self) -> None:
        for file in self.chunks.values():
            file.close()
        self.chunks, self.recent = {}, []


def upright(frame: av.VideoFrame, reformatter: VideoReformatter, size: tuple[int, int],
            rotation: int) -> av.VideoFrame:
    """A decoded frame as yuv420p scaled to the display `size` (bicubic, as ffmpeg's scale filter) and turned
    upright by its display rotation (degrees counter-clockwise)."""
    turns = round(rotation / 90) % 4
    width, height = size if turns % 2 == 0 else size[::-1]  # the stored picture's size before turning
    scaled = reformatter.reformat(frame, width, height, "yuv420p", interpolation=Interpolation.BICUBIC, threads=1)
    if not turns:
        return scaled
    pixels = scaled.to_ndarray()  # (h * 3 / 2, w)
    luma, chroma = pixels[:height], pixels[height:].reshape(2, height // 2, width // 2)
    luma, chroma = np.rot90(luma, turns), np.rot90(chroma, turns, axes=(1, 2))
    pixels = np.concatenate([luma.reshape(-1), chroma.reshape(-1)]).reshape(size[1] * 3 // 2, size[0])
    return av.VideoFrame.from_ndarray(pixels, format="yuv420p")


def resample(times: list[float], start: int, end: int, fps: float) -> list[int]:
    """The source frame shown at each output frame when frames [start, end) (times in seconds, times[end] the end of
    frame end - 1) are resampled to `fps` as ffmpeg's fps filter does: output frame n shows the last source frame
    whose time, in output frames from the start, rounds (half away from zero) to at most n; the output lasts the
    rounded duration (at least one frame)."""
    origin = times[start]
    count = max(1, math.floor((times[end] - origin) * fps + 0.5 + 1e-9))
    slots = [math.floor((times[i] - origin) * fps + 0.5 + 1e-9) for i in range(start, end)]
    shown, source = [], start
    for n in range(count):
        while source + 1 < end and slots[source + 1 - start] <= n:
            source += 1
        shown.append(source)
    return shown


M_PERTURB = -6  # glibc's mallopt parameter: fill memory on malloc (with ~byte) and on free (with byte)


@functools.cache
def repeatable_heap() -> None:
    """Make this process's malloc hand out zeroed memory (and fill freed memory with 0xFF); glibc only.

    x264's macroblock tree (`mbtree=1`, ClipConfig.x264_params) reads heap memory it has not written when the
    clip width is not a multiple of 16 (zeroing the input frames' row padding does not stop it). In a process
    that has decoded and encoded before, the same frames then gave a slightly different stream from run to run
    (45-48 dB apart, where the encode is about 43 dB from its input); a fresh ffmpeg process repeats its bytes.
    With the fill they repeat here too. Its cost is not measurable with x264 on one thread (X264_THREADS): 0.99x
    the CPU time of probe_and_cut with no fill and with a fill only around the encoder calls, median of 7 runs
    (with x264's own threads it was about 5%)."""
    mallopt = glibc_mallopt()
    if mallopt is not None:
        mallopt(M_PERTURB, 0xFF)


@functools.cache
def glibc_mallopt() -> Callable | None:
    """glibc's mallopt, or None elsewhere."""
    name = ctypes.util.find_library("c")
    return getattr(ctypes.CDLL(name), "mallopt", None) if name else None


# x264 threads per clip: one. The workers give the parallelism (CurationSettings.workers, one file each), and in
# each the decoder's threads and the clip writer's thread overlap. Over the short streams of clips (each one
# fills and drains them) x264's frame threads cost CPU: probe_and_cut took 12% more CPU time with them one file
# at a time and about 5% more wall time with two workers on two CPUs. They also make the bytes depend on the
# machine's CPU count (x264's default is 1.5 threads per CPU).
X264_THREADS = 1


def measure_clip(frame_of: Callable[[int], av.VideoFrame], sources: list[int],
                 measure: ClipMeasure) -> tuple[float, dict[int, bytes]]:
    """The motion and stills of the clip whose frames are `frame_of(source)` for `sources` (a clip kept by stream
    copy)."""
    measurer = Measurer(len(sources), measure)
    for n, source in enumerate(sources):
        measurer(n, frame_of(source))
    return measurer.result()


def write_clip(frame_of: Callable[[int], av.VideoFrame], size: tuple[int, int], sources: list[int], pts: list[int],
               time_base: Fraction, rate: Fraction, encoder: Encoder, measure: ClipMeasure,
               path: Path) -> tuple[float, dict[int, bytes]]:
    """Encode the frames `frame_of(source)` (yuv420p at `size`) for `sources` (in order, one per output frame, with
    `pts` in `time_base`) into `path` (mp4, H.264 yuv420p) and return the clip's motion and stills, measured on the
    way. The same frames give the same bytes every time (see repeatable_heap)."""
    measurer = Measurer(len(sources), measure)
    repeatable_heap()
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=rate)
        (stream.width, stream.height), stream.pix_fmt = size, "yuv420p"
        stream.codec_context.time_base = stream.time_base = time_base
        stream.codec_context.thread_count = X264_THREADS
        stream.options = {"crf": str(encoder.crf), "preset": encoder.preset} | (
            {"x264-params": encoder.x264_params} if encoder.x264_params else {})
        for n, (source, stamp) in enumerate(zip(sources, pts)):
            frame = frame_of(source)
            measurer(n, frame)
            # the encoder decides every frame's type (a decoded frame carries the source's I, P or B as a request)
            frame.pts, frame.time_base = stamp, time_base
            frame.pict_type = PictureType.NONE
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return measurer.result()
