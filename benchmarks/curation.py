"""Curation speed: seconds of source video per wall second for each CPU stage, beside decode-only.

    python benchmarks/curation.py [--n 40] [--seconds 10] [--width 640] [--height 360] [--fps 25]
                                  [--short-side 320] [--clip-fps FPS] [--max-seconds 10]

Generates N synthetic H.264 videos (a textured background panning under a moving square; every third
video has two hard cuts), then times, over all of them: decoding every frame with PyAV (the speed limit),
probe, shot detection, cutting and transcoding, and the whole (the three stages one after the other).
Peak memory is sampled every 20 ms: the resident set of this process (probe and shot detection run
here) and of its ffmpeg children (cutting and transcoding run there). Target: the whole within 4x of
decode-only time.
"""

import argparse
import tempfile
import threading
import time
from pathlib import Path

import av
import cv2
import numpy as np
import psutil

from lavie_model.curation.clips import ClipConfig, clip_name, clip_size, cut_clips, detect_shots, plan_pieces
from lavie_model.curation.probe import open_input, probe


def make_video(path: Path, seconds: float, width: int, height: int, fps: int, cuts: int, seed: int) -> None:
    """A panning textured scene with grain (a new scene at each cut) under a moving square."""
    rng = np.random.default_rng(seed)
    frames = round(seconds * fps)
    shot_starts = [frames * k // (cuts + 1) for k in range(cuts + 1)]
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "veryfast", "crf": "23"}
        for index in range(frames):
            if index in shot_starts:  # a new scene: other colours, bright and dark in turn, with fine detail
                shot = shot_starts.index(index)
                low, high = (100, 256) if shot % 2 == 0 else (0, 110)
                coarse = rng.integers(low, high, (height // 24, width // 12, 3), dtype=np.uint8)
                detail = rng.integers(-30, 31, (height // 3, 2 * width // 3, 1), dtype=np.int16)
                texture = (cv2.resize(coarse, (2 * width, height), interpolation=cv2.INTER_CUBIC).astype(np.int16)
                           + cv2.resize(detail, (2 * width, height), interpolation=cv2.INTER_LINEAR)[..., None])
            shift = round(index * min(2.0, width / frames))  # a slow pan that never runs off the texture
            grain = rng.integers(-3, 4, (height, width, 1), dtype=np.int16)  # sensor noise, new every frame
            pixels = np.clip(texture[:, shift:shift + width] + grain, 0, 255).astype(np.uint8)
            left = index * (width - 64) // frames
            pixels[height // 2 - 32:height // 2 + 32, left:left + 64] = (255, 255, 255)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(stream.encode())


class PeakMemory(threading.Thread):
    """Samples the resident set of this process and of all its children until stopped (MB)."""

    def __init__(self):
        super().__init__(daemon=True)
        self.process, self.done = psutil.Process(), threading.Event()
        self.own = self.children = 0.0

    def run(self):
        while not self.done.wait(0.02):
            self.own = max(self.own, self.process.memory_info().rss / 2**20)
            children = 0
            for child in self.process.children(recursive=True):
                try:
                    children += child.memory_info().rss
                except psutil.NoSuchProcess:
                    pass
            self.children = max(self.children, children / 2**20)


def decode_only(path: Path) -> int:
    with open_input(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        return sum(1 for _ in container.decode(stream))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=40, help="number of synthetic videos")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each video")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--short-side", type=int, default=320, help="short side of the clips")
    parser.add_argument("--clip-fps", type=float, default=None, help="frame rate of the clips (default: the source's)")
    parser.add_argument("--max-seconds", type=float, default=10.0, help="longest clip")
    args = parser.parse_args()
    config = ClipConfig(short_side=args.short_side, fps=args.clip_fps, max_seconds=args.max_seconds)

    with tempfile.TemporaryDirectory(prefix="curation_bench_") as work:
        work = Path(work)
        paths = [work / f"video_{index:03d}.mp4" for index in range(args.n)]
        started = time.perf_counter()
        for index, path in enumerate(paths):
            make_video(path, args.seconds, args.width, args.height, args.fps, cuts=2 if index % 3 == 0 else 0,
                       seed=index)
        print(f"generated {args.n} x {args.seconds:g} s at {args.width}x{args.height}, {args.fps} fps "
              f"in {time.perf_counter() - started:.1f} s")
        memory = PeakMemory()
        memory.start()
        timings = {}

        def timed(name, work_on):
            started = time.perf_counter()
            out = [work_on(path) for path in paths]
            timings[name] = time.perf_counter() - started
            return out

        timed("decode only (PyAV)", decode_only)
        probed = timed("probe", probe)
        shots = dict(zip(paths, timed("shot detection", detect_shots)))

        def cut(path):
            result = probed[paths.index(path)]
            pieces, _ = plan_pieces(shots[path], config)
            names = [clip_name(result.sha256, piece) for piece in pieces]
            return cut_clips(path, pieces, names, clip_size(result.width, result.height, config.short_side),
                             work / "clips", config)

        clips = timed("cutting and transcoding", cut)
        timings["whole"] = timings["probe"] + timings["shot detection"] + timings["cutting and transcoding"]
        memory.done.set()
        memory.join()

    source_seconds = sum(result.duration for result in probed)
    decode = timings["decode only (PyAV)"]
    print(f"{source_seconds:.0f} s of source video, {sum(len(s.ranges) for s in shots.values())} shots "
          f"({args.n + 2 * len(range(0, args.n, 3))} made), {sum(map(len, clips))} clips\n")
    print("| stage | wall s | source s per wall s | x decode-only time |")
    print("|---|---|---|---|")
    for name, seconds in timings.items():
        print(f"| {name} | {seconds:.2f} | {source_seconds / seconds:.1f} | {seconds / decode:.2f} |")
    print(f"\npeak RSS: this process {memory.own:.0f} MB, its ffmpeg children {memory.children:.0f} MB")
    verdict = "within" if timings["whole"] <= 4 * decode else "NOT within"
    print(f"whole / decode-only = {timings['whole'] / decode:.2f}: {verdict} the 4x target")


if __name__ == "__main__":
    main()
