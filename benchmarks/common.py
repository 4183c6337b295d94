"""What the benchmarks share: the tiny training run they time (a model folder, shards, one fixed batch, the
trainer's DeepSpeed engine), timing in alternating order, the resident-set sampler, their tables, and running work
in a process of its own.

A benchmark imports it as `common` (a script's own folder is first on sys.path); nothing here is a benchmark.
"""

import argparse
import multiprocessing
import os
import queue as queues
import statistics
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

COLOURS = {"red": (1.0, 0.1, 0.1), "blue": (0.1, 0.2, 1.0), "yellow": (1.0, 0.9, 0.1), "green": (0.1, 0.8, 0.2)}
STAGES = ("base", "interpolation", "vsr")


# ---------------------------------------------------------------------------------------------- inputs

def moving_square(colour, direction: int, frames: int, size: int):
    """(f, 3, size, size) in [0, 1]: a coloured square crossing a gray background left or right."""
    import torch

    video = torch.full((frames, 3, size, size), 0.5)
    side = size // 4
    top = (size - side) // 2
    for i in range(frames):
        left = (4 + i * 2) % (size - side) if direction > 0 else (size - side - 4 - i * 2) % (size - side)
        video[i, :, top:top + side, left:left + side] = torch.tensor(colour)[:, None, None]
    return video


def build_shards(root: Path, size: int, frames: int = 24, clips: int = 8, images: int = 8) -> dict:
    """Two video shards of `clips` moving-square clips (size x size, `frames` frames) and an image shard."""
    import pandas as pd
    from PIL import Image

    from lavie_model.curation.shards import write_image_shards, write_shards
    from lavie_model.video import write_video

    rows = []
    for i in range(clips):
        name, colour = list(COLOURS.items())[i % len(COLOURS)]
        direction = 1 if i % 2 == 0 else -1
        path = write_video(moving_square(colour, direction, frames, size), root / f"clip{i}.mp4", fps=8)
        rows.append({"clip_id": f"clip{i:02d}", "path": str(path), "frame_count": frames,
                     "caption": f"a {name} square moving {'right' if direction > 0 else 'left'}"})
    write_shards(pd.DataFrame(rows), root / "videos", "videos", max_samples=-(-clips // 2))
    pictures = []
    for i in range(images):
        name, colour = list(COLOURS.items())[i % len(COLOURS)]
        path = root / f"image{i}.png"
        image = Image.new("RGB", (size + size // 4, size), tuple(int(255 * c) for c in colour))
        image.paste((128, 128, 128), (i * 4 % size, size // 4, i * 4 % size + size // 3, size // 2))
        image.save(path)
        pictures.append({"key": f"image{i}", "path": str(path), "caption": f"a {name} picture"})
    write_image_shards(pd.DataFrame(pictures), root / "images", "images")
    return {"videos": str(root / "videos"), "images": str(root / "images")}


def quiet_deepspeed() -> None:
    """DeepSpeed's info lines (config dumps, timers) off; its warnings stay."""
    import logging

    from deepspeed.utils import logger

    logger.setLevel(logging.WARNING)


# ---------------------------------------------------------------------------------------------- the tiny run

def tiny_parser(description: str, steps: int, steps_help: str) -> argparse.ArgumentParser:
    """The options of every benchmark that times the tiny training run; `--steps` is each one's own."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--stage", default="base", choices=STAGES)
    parser.add_argument("--preset", default="tiny", help="preset name or YAML file with a training section")
    parser.add_argument("--model", help="model folder (default: a random one of the preset, in a temp dir)")
    parser.add_argument("--videos", help="video shards (default: a small set built in a temp dir)")
    parser.add_argument("--images", help="image shards for the base stage")
    parser.add_argument("--steps", type=int, default=steps, help=steps_help)
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per loop first")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--workers", type=int, help="data loader workers (default: the preset's num_workers)")
    parser.add_argument("--batch-size", type=int, help="micro-batch (default: the preset's training.batch_size)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the results here as JSON")
    return parser


@dataclass
class TinyRun:
    """The stage's frozen parts, its data, shards, one fixed micro-batch, and the trainer's DeepSpeed engine on a
    copy of the stage's UNet, with `ds_step(index, batches)` its optimizer step (`batches`: gives the next
    micro-batch)."""

    args: argparse.Namespace
    root: Path
    began: float
    cuda: bool
    device: object
    preset: dict
    training: dict
    model: str
    parts: object
    data: object
    videos: object
    images: object
    workers: int
    batch: dict
    ds_config: dict
    engine: object
    ds_step: object

    @property
    def batch_size(self) -> int:
        return self.training["batch_size"]

    @property
    def samples_per_step(self) -> int:
        return self.batch_size * self.training["gradient_accumulation"]

    def sync(self):
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    def fixed_step(self, index: int) -> float:
        return self.ds_step(index, lambda: self.batch)

    def header(self) -> dict:
        """What the run is: the header of every report, and of its JSON."""
        import deepspeed
        import torch

        batch = self.batch
        shape = f"frames {tuple(batch['frames'].shape)}" + (
            f" + images {tuple(batch['images'].shape)}" if "images" in batch else "")
        return {
            "stage": self.args.stage, "preset": self.args.preset, "device": str(self.device),
            "threads": self.args.threads, "cuda": self.cuda,
            "batch": {"micro_batch": self.batch_size, "gradient_accumulation": self.training["gradient_accumulation"],
                      "shape": shape, "samples_per_step": self.samples_per_step},
            "deepspeed_config": self.ds_config, "deepspeed_version": deepspeed.__version__,
            "torch_version": torch.__version__,
            "trainable_parameters": sum(p.numel() for p in self.engine.module.parameters() if p.requires_grad),
        }


def tiny_run(args, root: Path) -> TinyRun:
    """The tiny training run of `args` (tiny_parser's options) in folder `root`: without --videos a small shard set
    is built there (moving coloured squares, as tests/test_training.py's `shards` fixture; image shards too for the
    base stage), without --model a random model folder of the preset (`init_random`)."""
    import torch

    torch.set_num_threads(args.threads)
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available here")
    if not cuda:
        os.environ["DS_ACCELERATOR"] = "cpu"  # as the trainer does without CUDA; here also beside a GPU

    from lavie_model.config import load_preset
    from lavie_model.model_folder import init_random
    from lavie_model.training.stages import load_parts, load_unet, stage_data
    from lavie_model.training.trainer import (TrainSettings, deepspeed_config, release_shared_buffer,
                                              single_rank_environment)

    single_rank_environment()
    import deepspeed

    quiet_deepspeed()
    began = time.perf_counter()
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    preset = load_preset(args.preset)
    training = preset["training"]
    if args.batch_size:
        training["batch_size"] = args.batch_size
    if args.stage != "base":
        training["image_frames"] = 0  # only the base stage reads images
    workers = training["num_workers"] if args.workers is None else args.workers

    model = args.model or str(init_random(root / "model", args.preset))
    parts = load_parts(model, args.stage).to(device, dtype)
    data = stage_data(args.stage, preset, parts.vae_scale)
    videos, images = args.videos, args.images
    if videos is None:
        built = build_shards(root, max(data.size), data.span + 8)  # the stage's pixel size, its span and a few more
        videos = built["videos"]
        images = built["images"] if args.stage == "base" and data.image_frames else None
    elif args.stage == "base" and data.image_frames and not images:
        print("note: no --images given: the base stage runs without images (image_frames 0)")
        data.image_frames = 0
    if args.stage != "base":
        images = None
    progress(began, "model folder and shards ready")

    settings = TrainSettings(stage=args.stage, model=model, videos=videos, output=str(root / "run"),
                             preset=args.preset, images=images, seed=args.seed)
    ds_config = deepspeed_config(settings, training, cuda)
    batch = fixed_batch(videos, images, data, training["batch_size"], args.seed, training["shuffle_buffer"])
    deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo")
    if not cuda:
        release_shared_buffer(0)  # DeepSpeed's CPU all-reduce buffer in /dev/shm, which it never removes
    engine, ds_step = deepspeed_stepper(load_unet(model, args.stage).train(), parts, training, ds_config, args.seed)
    return TinyRun(args, root, began, cuda, device, preset, training, model, parts, data, videos, images, workers,
                   batch, ds_config, engine, ds_step)


def run_and_report(parser: argparse.ArgumentParser, measure, report) -> None:
    """Parse the tiny run's options, build it in a temporary folder, `measure(run)` -> results, print
    `report(results)` after the run's header, and write the results to --json."""
    import json

    args = parser.parse_args()
    if args.images and args.stage != "base":
        parser.error("--images: only the base stage trains on images")
    if args.images and not args.videos:
        parser.error("--images needs --videos")
    with tempfile.TemporaryDirectory(prefix="train-step-") as root:
        run = tiny_run(args, Path(root))
        results = run.header() | measure(run) | {"wall_s": time.perf_counter() - run.began}
    print_header(results)
    report(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n")
        print(f"\nresults written to {args.json}")


def print_header(results: dict) -> None:
    batch = results["batch"]
    print(f"{results['preset']} preset, {results['stage']} stage, {results['device']}, {results['threads']} threads, "
          f"deepspeed {results['deepspeed_version']}, torch {results['torch_version']}")
    print(f"micro-batch {batch['micro_batch']} x accumulation {batch['gradient_accumulation']}: {batch['shape']}; "
          f"{results['trainable_parameters'] / 1e6:.2f} M trainable parameters")
    config = results["deepspeed_config"]
    print(f"DeepSpeed: ZeRO-{config['zero_optimization']['stage']}, {'bf16' if config['bf16']['enabled'] else 'fp32'}, "
          f"client AdamW + LR schedule, gradient clipping {config['gradient_clipping']}")
    print()


# ---------------------------------------------------------------------------------------------- memory

def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class RssSampler:
    """Samples this process's resident set every `interval` s in a thread. Per phase label: the peak, and the
    largest rise within one call of `run` over the resident set at its start (what one step adds)."""

    def __init__(self, interval: float = 0.005):
        self.interval, self.phase, self.peaks, self.rises = interval, None, {}, {}
        self._current = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            if self.phase is not None:
                self._current = max(self._current, rss_bytes())
            time.sleep(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def run(self, phase, function):
        """function() with its resident set recorded under `phase` (sampled before and after too)."""
        start = self._current = rss_bytes()
        self.phase = phase
        try:
            return function()
        finally:
            self.phase = None
            peak = max(self._current, rss_bytes())
            self.peaks[phase] = max(self.peaks.get(phase, 0), peak)
            self.rises[phase] = max(self.rises.get(phase, 0), peak - start)


# ---------------------------------------------------------------------------------------------- steps

def stream_of(videos, images, data, seed: int, buffer: int, batch_size: int, latents: bool = False):
    from lavie_model.training.data import TrainingStream, expand_shards

    return TrainingStream(expand_shards(videos), data, seed, images=expand_shards(images) if images else None,
                          shuffle_buffer=buffer, batch_size=batch_size, latents=latents)


def fixed_batch(videos, images, data, batch_size: int, seed: int, buffer: int, latents: bool = False) -> dict:
    from lavie_model.training.data import collate

    stream = stream_of(videos, images, data, seed, buffer, batch_size, latents)
    return collate([example for example, _ in zip(stream, range(batch_size))])


def make_optimizer(unet, training):
    import torch

    trainable = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=training["learning_rate"], weight_decay=training["weight_decay"])
    warmup = max(1, training["warmup_steps"])
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
    return trainable, optimizer, schedule


def deepspeed_stepper(unet, parts, training, ds_config, seed):
    """The engine, and one optimizer step of the trainer's DeepSpeed loop: `step(index, batches)`."""
    import deepspeed

    from lavie_model.training.stages import sample_generators, training_loss

    _, optimizer, schedule = make_optimizer(unet, training)
    engine, _, _, _ = deepspeed.initialize(model=unet, optimizer=optimizer, lr_scheduler=schedule, config=ds_config)
    accumulation = training["gradient_accumulation"]
    max_noise_level = training["vsr"]["max_noise_level"]

    def step(index: int, batches) -> float:
        """`batches`: a callable giving the next micro-batch."""
        for micro in range(accumulation):
            batch = batches()
            batch_size = len(batch["key"])
            generators = sample_generators(seed, 0, (index * accumulation + micro) * batch_size, batch_size)
            loss = training_loss(engine.module, parts, batch, generators, max_noise_level)
            engine.backward(loss)
            engine.step()
        return loss.item()

    return engine, step


def timed(function, sync) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process: all its threads) of function()."""
    wall, cpu = time.perf_counter(), time.process_time()
    function()
    sync()
    return time.perf_counter() - wall, time.process_time() - cpu


def abba(loops: dict, rounds: int, first_index: int, sync, sampler, cuda) -> dict:
    """Time two loops `{name: step(index)}` in alternating order (AB BA AB ...); per loop its wall and CPU
    seconds per step, the peak resident set and, on CUDA, the peak allocated memory."""
    import torch

    a, b = loops
    out = {name: {"seconds": [], "cpu_seconds": [], "cuda_peak": 0} for name in loops}
    for r in range(rounds):
        for name in ((a, b) if r % 2 == 0 else (b, a)):
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            index = first_index + r
            wall, cpu = sampler.run(name, lambda: timed(lambda: loops[name](index), sync))
            out[name]["seconds"].append(wall)
            out[name]["cpu_seconds"].append(cpu)
            if cuda:
                out[name]["cuda_peak"] = max(out[name]["cuda_peak"], torch.cuda.max_memory_allocated())
    return out


def summary(times: dict, samples_per_step: int, sampler, name: str) -> dict:
    median = statistics.median(times["seconds"])
    return {"seconds": times["seconds"], "cpu_seconds": times["cpu_seconds"], "median_s": median,
            "min_s": min(times["seconds"]), "median_cpu_s": statistics.median(times["cpu_seconds"]),
            "samples_per_s": samples_per_step / median, "peak_rss_mb": sampler.peaks[name] / 2**20,
            "step_rss_rise_mb": sampler.rises[name] / 2**20,
            "cuda_max_allocated_mb": times["cuda_peak"] / 2**20}


def ratios(over: dict, under: dict) -> dict:
    """over / under: of the medians, the median of the per-round ratios (each pair ran back to back), the
    minima, and the median CPU seconds."""
    pairs = [x / y for x, y in zip(over["seconds"], under["seconds"])]
    return {"median": over["median_s"] / under["median_s"], "paired_median": statistics.median(pairs),
            "min": over["min_s"] / under["min_s"], "cpu_median": over["median_cpu_s"] / under["median_cpu_s"]}


def loader_rate(videos, images, data, batch_size, workers, seed, buffer, samples, latents: bool = False) -> dict:
    """Samples/s of TrainingStream + DataLoader over `samples` samples after the first batch."""
    from torch.utils.data import DataLoader

    from lavie_model.training.data import collate

    stream = stream_of(videos, images, data, seed, buffer, batch_size, latents)
    loader = iter(DataLoader(stream, batch_size=batch_size, num_workers=workers, collate_fn=collate))
    start = time.perf_counter()
    next(loader)
    first = time.perf_counter() - start
    start, got = time.perf_counter(), 0
    while got < samples:
        got += len(next(loader)["key"])
    seconds = time.perf_counter() - start
    del loader  # shuts its workers down
    return {"workers": workers, "samples": got, "seconds": seconds, "samples_per_s": got / seconds,
            "first_batch_s": first}


def progress(began: float, what: str) -> None:
    print(f"[{time.perf_counter() - began:6.1f} s] {what}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- tables

def table(header: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]


def step_table(rows: dict, cuda: bool) -> None:
    width = max(10, *map(len, rows))
    print(f"{'loop':{width}} {'s/step':>7} {'samples/s':>9} {'min s':>6} {'max s':>6} {'CPU s':>6} "
          f"{'peak RSS MB':>11}" + (f" {'CUDA MB':>8}" if cuda else "") + "  seconds per step, in order")
    for name, s in rows.items():
        print(f"{name:{width}} {s['median_s']:7.3f} {s['samples_per_s']:9.3f} {s['min_s']:6.2f} "
              f"{max(s['seconds']):6.2f} {s['median_cpu_s']:6.2f} {s['peak_rss_mb']:11.0f}"
              + (f" {s['cuda_max_allocated_mb']:8.0f}" if cuda else "")
              + "  " + " ".join(f"{x:.2f}" for x in s["seconds"]))


def ratio_lines(label: str, ratio: dict, target: float | None = None) -> None:
    verdict = ""
    if target is not None:
        verdict = (f"; target <= {target:.2f}: {'met' if ratio['median'] <= target else 'NOT met'} by the medians, "
                   f"{'met' if ratio['paired_median'] <= target else 'NOT met'} by the paired rounds")
    print(f"{label}: {ratio['median']:.3f} (medians), {ratio['paired_median']:.3f} (median of back-to-back pairs), "
          f"{ratio['min']:.3f} (minima), {ratio['cpu_median']:.3f} (median CPU time){verdict}")


# ---------------------------------------------------------------------------------------------- processes

def first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"


def to_dtype(model, dtype):
    """`model` in `dtype`, its `_keep_in_fp32_modules` (the rotary frequencies) in fp32, as
    from_pretrained(torch_dtype=...) loads it."""
    import torch

    torch.nn.Module.to(model, dtype)  # diffusers' own `to` warns of the modules put back in fp32 below
    for name, module in model.named_modules():
        if name.split(".")[-1] in (getattr(model, "_keep_in_fp32_modules", None) or ()):
            module.to(torch.float32)
    return model


def reporting(queue, function, args):
    """In a child process: function(*args) into `queue`, or the error that ended it."""
    try:
        queue.put(function(*args))
    except BaseException as error:  # report, do not leave the parent waiting
        queue.put({"error": first_line(error), "traceback": traceback.format_exc()})


def in_own_process(function, args: tuple, timeout: float, start: str = "spawn") -> dict:
    """function(*args) in a fresh process (multiprocessing's `start` method: spawned, or "forkserver": forked from
    the fork server); its dict, or {"error": ...} when it raised (a CUDA out-of-memory), crashed (a segfault, the
    kernel's out-of-memory killer) or ran past `timeout` seconds (then it is killed)."""
    context = multiprocessing.get_context(start)
    queue = context.Queue()
    process = context.Process(target=reporting, args=(queue, function, args))
    process.start()
    ends = time.time() + timeout
    try:
        while True:
            alive = process.is_alive()  # a result is in the queue before its process ends
            try:
                return queue.get(timeout=1)
            except queues.Empty:
                if not alive:
                    return {"error": f"the process ended with exit code {process.exitcode} and no result "
                                     "(killed for memory?)"}
                if time.time() > ends:
                    process.kill()
                    return {"error": f"stopped after {timeout:.0f} s: over the section's budget"}
    finally:
        process.join(10)  # a child that reported ends by itself
        if process.is_alive():
            process.kill()
            process.join()
