"""Curation speed: source seconds per wall second for each CPU stage, beside decode-only and the encode floor;
with --ray, the Ray backend beside the local pool.

    python benchmarks/curation.py [--n 40] [--seconds 10] [--width 640] [--height 360] [--fps 25]
                                  [--preset paper] [--short-side PX] [--clip-fps FPS] [--min-seconds S]
                                  [--max-seconds S] [--workers N] [--repeat R] [--stream-copy] [--ray]

Generates N synthetic H.264 videos (a textured background panning under a moving square; every third
video has two hard cuts), then times, over all of them, one stage after the other in one process:
decoding every frame with PyAV (the speed limit); probe; shot detection; probe and shot detection in one
decode (what `probed_videos` alone runs); cutting a probed file from its stored shots in a decode of its own
(what `video_clips` alone runs); probe, shot detection, cutting, encoding and motion in one decode
(`probe_and_cut`, what the assets run when both are materialized; its probe rows and clips are checked
against the separate passes); the frames CLIP sees, from the stills the writer kept (what `clip_scores` does
given the writer's motion and stills; CLIP itself is left out); the same frames decoded from the clip files, and
motion measured again on them (what `clip_scores` does for clips without stills or motion); and sharding.

The whole, as the assets run it, is the one-decode stage run on `--workers` files at once (processes, as
CurationSettings.workers), the CLIP frames and sharding; one file at a time is shown too. Beside them, the
floor of any curation that writes H.264 clips: one ffmpeg transcode of each whole source to the clip size and
frame rate with the clip encoder's settings and x264 thread count (writer.X264_THREADS; `--workers` at once,
and one at a time), and with x264's fastest preset (`ultrafast`), no cuts. Target: the whole within 1.3x of
the encode floor. This machine's timings wander by 20-40% from minute to minute, so the pooled stage and the
pooled floor run in turn `--repeat` times and the ratio is the median of each run against the floor run beside
it (the table shows medians).

Wall and CPU seconds (this process and its finished children) are reported; CPU seconds are steadier on a
shared machine. Clip settings come from the preset's `curation` section (paper: short side 320, 24 fps,
clips of 2.6-10 s); the options override them. Peak memory is sampled every 20 ms: the resident set of this
process and of its children (the worker processes, ffmpeg), and the most frames a spill held. With
--stream-copy, N more videos are made at the clip size and rate and cut twice: re-encoded, and with
ClipConfig.stream_copy (pieces from keyframe to keyframe keep the source's packets).
"""

import argparse
import dataclasses
import multiprocessing
import os
import resource
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import av
import cv2
import imageio_ffmpeg
import numpy as np
import pandas as pd
import psutil

from lavie_model.config import load_preset
from lavie_model.curation.clips import (ClipConfig, clip_size, detect_shots, make_clips, probe_and_cut,
                                        probe_with_shots, stored_shots)
from lavie_model.curation.probe import ProbeConfig, open_input, probe
from lavie_model.curation.scores import ScoreConfig, read_clip
from lavie_model.curation.shards import write_shards
from lavie_model.curation.writer import X264_THREADS


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
    """Samples the resident set of a process (default: this one) and of all its children until stopped (MB)."""

    def __init__(self, pid: int | None = None):
        super().__init__(daemon=True)
        self.process, self.done = psutil.Process(pid), threading.Event()
        self.start_rss = self.own = self.process.memory_info().rss / 2**20
        self.children = 0.0

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


def cpu_seconds() -> float:
    """User and system CPU seconds of this process and of its finished children."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def decode_only(path: Path) -> int:
    with open_input(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        return sum(1 for _ in container.decode(stream))


def transcode_whole(path: Path, size: tuple[int, int], config: ClipConfig, out: Path) -> None:
    """One ffmpeg run: all of `path` re-encoded at `size` and the clip frame rate, as the clip writer encodes (its
    settings and its x264 thread count)."""
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-y", "-i", str(path),
               "-vf", (f"fps={config.fps}," if config.fps else "") + f"scale={size[0]}:{size[1]}", "-an",
               "-c:v", "libx264", "-threads", str(X264_THREADS), "-pix_fmt", "yuv420p", "-crf", str(config.crf),
               "-preset", config.preset]
    if config.x264_params:
        command += ["-x264-params", config.x264_params]
    subprocess.run(command + [str(out)], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=40, help="number of synthetic videos")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each video")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--preset", default="paper", help="preset whose curation section gives the clip settings")
    parser.add_argument("--short-side", type=int, help="short side of the clips")
    parser.add_argument("--clip-fps", type=float, help="frame rate of the clips (0: the source's)")
    parser.add_argument("--min-seconds", type=float, help="shortest clip")
    parser.add_argument("--max-seconds", type=float, help="longest clip")
    parser.add_argument("--workers", type=int, default=max(1, min(4, os.cpu_count() or 1)),
                        help="files at once, as CurationSettings.workers (default min(4, CPUs))")
    parser.add_argument("--repeat", type=int, default=5,
                        help="runs of the pooled stage, each beside a run of the pooled floor (the ratio's median)")
    parser.add_argument("--stream-copy", action="store_true",
                        help="also cut sources made at the clip size and rate, re-encoded and by stream copy")
    parser.add_argument("--ray", action="store_true",
                        help="also run probe_and_cut as Ray tasks on a local cluster of --workers CPUs, in turn with "
                             "the local pool (CurationSettings.ray_address against .workers)")
    args = parser.parse_args()
    overrides = {"short_side": args.short_side, "fps": args.clip_fps, "min_seconds": args.min_seconds,
                 "max_seconds": args.max_seconds}
    config = ClipConfig(**load_preset(args.preset)["curation"])
    config = dataclasses.replace(config, **{name: value for name, value in overrides.items() if value is not None})
    config = dataclasses.replace(config, fps=config.fps or None)
    scoring = ScoreConfig()
    print(f"clips: {config}")

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
        timings, cpu = {}, {}

        def timed(name, work_on, items=paths):
            started, cpu_started = time.perf_counter(), cpu_seconds()
            out = [work_on(item) for item in items]
            timings[name], cpu[name] = time.perf_counter() - started, cpu_seconds() - cpu_started
            return out

        timed("decode only (PyAV)", decode_only)
        probed = timed("probe", probe)
        timed("shot detection", lambda path: detect_shots(path, config))
        rows = timed("probe + shot detection, one decode (probed_videos alone)",
                     lambda path: probe_with_shots(path, config=config))
        measure = scoring.measure()

        def cut_stored(path):
            index = paths.index(path)
            return make_clips(probed[index], work / "stored", config, stored_shots(rows[index], config),
                              measure=measure)

        stored = timed("cutting from the stored shots, a decode of its own (video_clips alone)", cut_stored)
        one_decode = "probe, shots, cutting, motion and stills in one decode (probe_and_cut: the assets)"
        fused = timed(one_decode, lambda path: probe_and_cut(path, work / "clips", config=config, measure=measure))
        for (row, one), again, path in zip(fused, stored, paths):
            same = [(c.start_frame, c.end_frame, c.frame_count) for c in one.clips] == \
                [(c.start_frame, c.end_frame, c.frame_count) for c in again.clips]
            if row != rows[paths.index(path)] or not same or one.motion.keys() != {c.clip_id for c in one.clips}:
                raise AssertionError(f"probe_and_cut differs from probe_with_shots and make_clips on {path}")
        clips = [{"clip_id": c.clip_id, "path": c.path, "frame_count": c.frame_count,
                  "motion": result.motion[c.clip_id], "stills": result.stills[c.clip_id],
                  "bytes": Path(c.path).stat().st_size,
                  "caption": f"a clip of {Path(c.source_path).name}"}
                 for _, result in fused for c in result.clips]
        spill_frames = max(result.peak_frames for _, result in fused)

        sizes = {path: clip_size(result.width, result.height, config.short_side) for path, result in zip(paths, probed)}
        for name, encoder in (("floor: one transcode per source, clip encoder", config),
                              ("floor: one transcode per source, ultrafast", dataclasses.replace(
                                  config, preset="ultrafast", x264_params=""))):
            timed(name, lambda path: transcode_whole(path, sizes[path], encoder, work / "whole.mp4"))
        # as the assets run them: `workers` files at once (CurationSettings.workers), the floor likewise
        def pooled(batch):  # the processes end inside the timing, so that their CPU time is counted
            with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("fork")) as pool:
                return list(pool.map(probe_and_cut, batch, [work / "pooled"] * len(batch), [ProbeConfig()] * len(batch),
                                     [config] * len(batch), [measure] * len(batch)))

        pooled_decode = f"probe_and_cut, {args.workers} files at once (the assets)"
        pooled_floor = f"floor: {args.workers} transcodes at once, clip encoder"
        runs = []  # (wall, CPU) of the pooled one-decode stage and of the pooled floor, run in turn
        with ThreadPoolExecutor(args.workers) as pool:
            for _ in range(args.repeat):
                timed(pooled_decode, pooled, [paths])
                timed(pooled_floor, lambda batch: list(pool.map(
                    lambda path: transcode_whole(path, sizes[path], config, work / f"whole_{path.stem}.mp4"), batch)),
                    [paths])
                runs.append({name: (timings[name], cpu[name]) for name in (pooled_decode, pooled_floor)})
        for name in (pooled_decode, pooled_floor):  # the table shows medians
            timings[name] = float(np.median([run[name][0] for run in runs]))
            cpu[name] = float(np.median([run[name][1] for run in runs]))
        ray_report = ray_against_pool(args, paths, work, config, measure) if args.ray else None

        clip_frames = "CLIP frames from the writer's stills, its motion (clip_scores)"
        timed(clip_frames, lambda row: read_clip(row["path"], row["frame_count"], scoring.frames_per_clip,
                                                 scoring.motion_size, scoring.motion_pairs, row["motion"],
                                                 row["stills"]), clips)
        timed("CLIP frames decoded from the clip files, the writer's motion (clips without stills)",
              lambda row: read_clip(row["path"], row["frame_count"], scoring.frames_per_clip, scoring.motion_size,
                                    scoring.motion_pairs, row["motion"]), clips)
        measured = timed("motion and CLIP frames, measured on the clip files (clips without the writer's motion)",
                         lambda row: read_clip(row["path"], row["frame_count"], scoring.frames_per_clip,
                                               scoring.motion_size, scoring.motion_pairs)[1], clips)
        gaps = [abs(again - row["motion"]) for again, row in zip(measured, clips)]
        if args.stream_copy:  # sources already at the clip size and rate: re-encoded pieces against copied ones
            width, height = sizes[paths[0]]
            rate = round(config.fps or args.fps)
            ready = [work / f"ready_{index:03d}.mp4" for index in range(args.n)]
            for index, path in enumerate(ready):
                make_video(path, args.seconds, width, height, rate, cuts=2 if index % 3 == 0 else 0, seed=index)
            for name, copy in (("at the clip size: probe and cut, re-encoded", False),
                               ("at the clip size: probe and cut, stream copy", True)):
                copy_config = dataclasses.replace(config, stream_copy=copy)
                results = timed(name, lambda path, c=copy_config, n=name: probe_and_cut(
                    path, work / n.split(", ")[-1].replace(" ", "_"), config=c, measure=measure)[1], ready)
            print(f"stream copy: {sum(len(r.copied) for r in results)} of {sum(len(r.clips) for r in results)} "
                  f"pieces copied")
        shards = timed("sharding", lambda table: write_shards(table, work / "shards", prefix="bench"),
                       [pd.DataFrame(clips).drop(columns=["stills"])])[0]
        after = [clip_frames, "sharding"]
        for name, first in (("whole, one file at a time", one_decode), ("whole, as the assets run it", pooled_decode)):
            timings[name] = sum(timings[stage] for stage in [first, *after])
            cpu[name] = sum(cpu[stage] for stage in [first, *after])
        memory.done.set()
        memory.join()

    source_seconds = sum(result.duration for result in probed)
    decode = timings["decode only (PyAV)"]
    print(f"{source_seconds:.0f} s of source video, {sum(len(r['shot_ranges']) for r in rows)} shots "
          f"({args.n + 2 * len(range(0, args.n, 3))} made), {len(clips)} clips "
          f"({sum(row['frame_count'] for row in clips)} frames, {sum(row['bytes'] for row in clips) / 2**20:.1f} MB) "
          f"in {len(shards)} shards\n")
    print("| stage | wall s | source s per wall s | x decode-only time | CPU s | x decode-only CPU |")
    print("|---|---|---|---|---|---|")
    for name, seconds in timings.items():
        print(f"| {name} | {seconds:.2f} | {source_seconds / seconds:.1f} | {seconds / decode:.2f} "
              f"| {cpu[name]:.2f} | {cpu[name] / cpu['decode only (PyAV)']:.2f} |")
    print(f"\npeak RSS: this process {memory.own:.0f} MB ({memory.start_rss:.0f} MB before the first stage, most of "
          f"it torch and open_clip, which the scores module imports), its children {memory.children:.0f} MB; "
          f"a spill file held at most {spill_frames} frames")
    still_bytes = sum(len(data) for row in clips for data in row["stills"].values())
    print(f"stills: {sum(len(row['stills']) for row in clips)} frames, {still_bytes / 2**20:.2f} MB, "
          f"{still_bytes / sum(row['bytes'] for row in clips):.1%} of the clips' bytes")
    print(f"motion measured on the clip files against the writer's (before compression): median difference "
          f"{np.median(gaps):.4f} px/frame, largest {max(gaps):.4f}; motion itself: median "
          f"{np.median([row['motion'] for row in clips]):.3f}")
    floor = [timings[name] for name in timings if name.startswith("floor: one")]
    print(f"one transcode per source alone / decode-only = {floor[0] / decode:.2f} with the clip encoder, "
          f"{floor[1] / decode:.2f} with ultrafast")
    whole, floor_name = "whole, one file at a time", "floor: one transcode per source, clip encoder"
    print(f"{whole} / the encode floor ({floor_name[7:]}) = {timings[whole] / timings[floor_name]:.2f} wall, "
          f"{cpu[whole] / cpu[floor_name]:.2f} CPU")
    after_wall, after_cpu = timings[clip_frames] + timings["sharding"], cpu[clip_frames] + cpu["sharding"]
    walls = sorted((run[pooled_decode][0] + after_wall) / run[pooled_floor][0] for run in runs)
    cpus = sorted((run[pooled_decode][1] + after_cpu) / run[pooled_floor][1] for run in runs)
    verdict = "within" if np.median(walls) <= 1.3 else "NOT within"
    print(f"whole, as the assets run it / the encode floor ({pooled_floor[7:]}), each run beside its floor run "
          f"({args.repeat} runs): wall {np.median(walls):.2f} median ({walls[0]:.2f}-{walls[-1]:.2f}), CPU "
          f"{np.median(cpus):.2f} ({cpus[0]:.2f}-{cpus[-1]:.2f}): {verdict} the 1.3x target")
    if ray_report:
        print(ray_report)


def ray_against_pool(args, paths: list[Path], work: Path, config: ClipConfig, measure) -> str:
    """probe_and_cut as the asset runs it (lavie_model.curation.per_file.probe_and_cut_job) over all files: Ray tasks
    on a local cluster of `--workers` CPUs (already up) against `--workers` forked processes, in turn `--repeat`
    times; the same rows either way. The cluster's start-up time, the peak memory of its processes, and tasks
    retried."""
    from lavie_model.cluster.ray_cluster import LocalCluster, connected, map_tasks, tasks_retried
    from lavie_model.curation.probe import sha256_of
    from lavie_model.curation.per_file import probe_and_cut_job

    jobs = [(path, sha256_of(path), work / "ray_bench", config, measure, None) for path in paths]

    def pool():
        with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("fork")) as executor:
            return list(executor.map(probe_and_cut_job, jobs))

    walls = {"pool": [], "ray": []}
    with LocalCluster(work / "ray", nodes=1, cpus=args.workers) as cluster:
        os.environ.update(cluster.env)
        memory = PeakMemory(cluster.pid)
        memory.start()
        with connected(cluster.address) as ray:
            started = time.perf_counter()  # untimed: the workers start and import the code once
            map_tasks(ray, probe_and_cut_job, jobs[:args.workers])
            warm_up = time.perf_counter() - started
            for _ in range(args.repeat):
                for name, run in (("pool", pool), ("ray", lambda: map_tasks(ray, probe_and_cut_job, jobs))):
                    started = time.perf_counter()
                    rows = run()
                    walls[name].append(time.perf_counter() - started)
                    if name == "pool":
                        expected = [row for row, _ in rows]
                    elif [row for row, _ in rows] != expected:
                        raise AssertionError("Ray's probe rows differ from the local pool's")
            retried = tasks_retried(ray, ["probe_and_cut_job"])
        memory.done.set()
        memory.join()
    ratios = sorted(r / p for r, p in zip(walls["ray"], walls["pool"]))
    verdict = "within" if np.median(ratios) <= 1.15 else "NOT within"
    return (f"\nRay against the local pool, probe_and_cut over the {len(paths)} files, {args.workers} CPUs each, "
            f"{args.repeat} runs in turn (cluster up before timing):\n"
            f"| backend | wall s, median | runs |\n|---|---|---|\n"
            f"| local pool, {args.workers} processes | {np.median(walls['pool']):.2f} | "
            f"{', '.join(f'{w:.2f}' for w in walls['pool'])} |\n"
            f"| Ray, 1 node of {args.workers} CPUs | {np.median(walls['ray']):.2f} | "
            f"{', '.join(f'{w:.2f}' for w in walls['ray'])} |\n"
            f"Ray / pool, each run beside the pool run before it: {np.median(ratios):.2f} median "
            f"({ratios[0]:.2f}-{ratios[-1]:.2f}): {verdict} the 1.15x target. Apart: cluster start-up "
            f"{cluster.started_in:.1f} s, then {warm_up:.1f} s for a first round of {args.workers} files (the workers "
            f"start and import the code); peak memory of the cluster's processes (head, raylet, workers) {memory.children + memory.own:.0f} "
            f"MB; tasks retried: {retried}")


if __name__ == "__main__":
    main()
