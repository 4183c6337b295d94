"""Training step cost: the DeepSpeed step against a plain PyTorch loop, the data loader, peak memory.

    python benchmarks/train_step.py [--stage base|interpolation|vsr] [--preset tiny] [--steps 5] [--warmup 1]
        [--threads 2] [--device cpu|cuda] [--videos SHARDS --images SHARDS] [--model FOLDER]
        [--workers N] [--loader-samples 40] [--fed-steps 0] [--latent-steps 0] [--batch-size N]
        [--lora-steps 0 [--lora-rank 8]]
        [--gpu-paper [--paper-steps 3]] [--json out.json]

1. Step rate. One fixed micro-batch (collated from `TrainingStream` over the shards) and the same per-sample
   generators (`sample_generators`) feed two copies of the stage's UNet (same starting weights):
   - plain: `training_loss`, `loss.backward()`, `clip_grad_norm_`, `torch.optim.AdamW.step()`, the LR
     schedule, `zero_grad`;
   - deepspeed: `deepspeed.initialize` with the trainer's own config (`trainer.deepspeed_config`:
     ZeRO-2, the client AdamW and LR schedule; fp32 on the CPU, bf16 on CUDA), `engine.backward`,
     `engine.step`.
   After the warm-up steps the two alternate (AB BA AB ...), so that machine noise hits both alike; the
   table gives per loop the median seconds per optimizer step, samples/s, the CPU seconds of the process
   per step, and the ratio deepspeed / plain four ways: of the medians (the headline), the median of the
   per-round ratios (each pair ran back to back), of the minima and of the CPU times. On a busy machine
   the paired ratio and the minima are the steadier (CPU time grows too there: OpenMP threads spin while
   a sibling waits for a core).
   On CUDA the plain loop runs under bf16 autocast with fp32 weights (DeepSpeed keeps bf16 weights and
   fp32 master copies), so the CUDA ratio compares two mixed-precision recipes, not one.
2. Data loader. `TrainingStream` + `DataLoader(collate)` alone, with the preset's `training.num_workers`
   (or --workers) and with 0 workers: samples/s over --loader-samples samples after the first batch (its
   start-up: worker processes, the shuffle buffer). Against the step's consumption rate from 1: with
   workers the loader runs beside the step and is the bottleneck when it delivers fewer samples/s than
   the step takes; with 0 workers it runs in series, and the table gives the step time it adds. Then
   --fed-steps DeepSpeed steps fed by that loader, as the trainer runs them (on a machine with few cores
   its workers compete with the step for them), alternating with as many on the fixed batch.
3. Memory. The process's peak resident set (sampled from /proc every 5 ms) during the DeepSpeed steps and
   during the plain steps, beside the resident set before the first timed step; the process holds both
   UNet copies, their optimizers and the frozen VAE and text encoder throughout, so the table also gives
   per loop the largest rise of the resident set within one step (activations, gradients, optimizer
   work). On CUDA also torch.cuda.max_memory_allocated per loop.
4. --gpu-paper (CUDA only; skipped with a message otherwise): --paper-steps DeepSpeed steps of the paper-size
   base stage (bf16, ZeRO-2, gradient checkpointing, batch 2 of 16 x 320 x 512 frames plus the preset's M
   images: (2, 4, 16 + M, 40, 64) latents) on a randomly initialised paper UNet
   (`build_base_unet(load_preset('paper'))`), in a fresh process. No VAE or text encoder is loaded and
   nothing is downloaded: the latents and text embeddings (77 x 768 per frame) are random tensors of the
   right shapes. Time per step, peak allocated memory, the card's name, the step's model FLOPs (counted on the
   meta device, without checkpointing's recomputation) and the MFU they give on a card of known peak; and what
   reading pixels would add to each step: an SD 1.4-shaped VAE encoder over the batch's frames at 320 x 512 and
   a CLIP ViT-L/14-shaped text encoder over its captions (random weights), as a share of a pixel step.
   `paper_steps` times the interpolation and VSR stages too (benchmarks/device_check.py runs all three), and
   without deepspeed a plain bf16-autocast AdamW step.
5. --latent-steps N: precomputed latents against pixels (training/latents.py). Latent shards of the shards
   are built (the time and the bytes per clip are reported), then the same DeepSpeed engine runs N steps on
   the fixed pixel batch against the same samples' latent batch, and N steps fed by a pixel loader against N
   fed by a latent loader (the preset's workers), each pair alternating. The ratios pixels / latents are the
   speed-up of reading latents.
6. --lora-steps N [--lora-rank 8]: a second DeepSpeed engine trains a LoRA adapter (lavie_model/lora.py, the
   attention projections) of another copy of the UNet, N steps alternating with the full engine on the same batch:
   per engine the trainable weights, the optimizer-state bytes (AdamW's moments and ZeRO's fp32 master partitions,
   summed from the engine), s/step and the resident-set rise within a step, beside `lavie plan`'s optimizer row and
   peak for each.

Without --videos a small shard set is built in a temporary folder (moving coloured squares, as
tests/test_training.py's `shards` fixture; image shards too for the base stage); without --model a
random model folder of the preset (`init_random`).
"""

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from lavie_model.plan import SD_TEXT, SD_VAE, build_unet, stage_inputs

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


def clip_size_and_frames(stage, data) -> tuple[int, int]:
    """A clip size and length that serve `stage`: its pixel size, its span plus a few frames."""
    return max(data.size), data.span + 8


def quiet_deepspeed() -> None:
    """DeepSpeed's info lines (config dumps, timers) off; its warnings stay."""
    import logging

    from deepspeed.utils import logger

    logger.setLevel(logging.WARNING)


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


def plain_stepper(unet, parts, batch, training, seed, cuda):
    """One optimizer step of a plain PyTorch loop (the trainer's step without DeepSpeed)."""
    import contextlib

    import torch

    from lavie_model.training.stages import sample_generators, training_loss

    trainable, optimizer, schedule = make_optimizer(unet, training)
    batch_size, accumulation = len(batch["key"]), training["gradient_accumulation"]
    max_noise_level = training["vsr"]["max_noise_level"]
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else contextlib.nullcontext

    def step(index: int) -> float:
        for micro in range(accumulation):
            generators = sample_generators(seed, 0, (index * accumulation + micro) * batch_size, batch_size)
            with autocast():
                loss = training_loss(unet, parts, batch, generators, max_noise_level)
            (loss / accumulation).backward()
        torch.nn.utils.clip_grad_norm_(trainable, training["max_grad_norm"])
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    return step


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


# ---------------------------------------------------------------------------------------------- tiny run

def run_tiny(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available here")
    if not cuda:
        os.environ["DS_ACCELERATOR"] = "cpu"  # as the trainer does without CUDA; here also beside a GPU

    from torch.utils.data import DataLoader

    from lavie_model.config import load_preset
    from lavie_model.model_folder import init_random
    from lavie_model.training.data import collate
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

    with tempfile.TemporaryDirectory(prefix="train-step-") as root:
        root = Path(root)
        model = args.model or str(init_random(root / "model", args.preset))
        parts = load_parts(model, args.stage).to(device, dtype)
        data = stage_data(args.stage, preset, parts.vae_scale)
        videos, images = args.videos, args.images
        if videos is None:
            size, frames = clip_size_and_frames(args.stage, data)
            built = build_shards(root, size, frames)
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
        batch_size = training["batch_size"]
        samples_per_step = batch_size * training["gradient_accumulation"]
        buffer = training["shuffle_buffer"]
        batch = fixed_batch(videos, images, data, batch_size, args.seed, buffer)
        shape = f"frames {tuple(batch['frames'].shape)}" + (
            f" + images {tuple(batch['images'].shape)}" if "images" in batch else "")

        deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo")
        if not cuda:
            release_shared_buffer(0)  # DeepSpeed's CPU all-reduce buffer in /dev/shm, which it never removes
        plain_unet = load_unet(model, args.stage).train().to(device)
        ds_unet = load_unet(model, args.stage).train()
        plain_step = plain_stepper(plain_unet, parts, batch, training, args.seed, cuda)
        engine, ds_step = deepspeed_stepper(ds_unet, parts, training, ds_config, args.seed)

        def sync():
            if cuda:
                torch.cuda.synchronize()

        loops = {"plain": lambda i: plain_step(i), "deepspeed": lambda i: ds_step(i, lambda: batch)}
        warmup = {name: [] for name in loops}
        for i in range(args.warmup):  # the first steps allocate gradients and the optimizer states
            for name, step in loops.items():
                warmup[name].append(timed(lambda: step(i), sync)[0])
        progress(began, f"{args.warmup} warm-up step(s) per loop done")

        rss_before = rss_bytes()
        with RssSampler() as sampler:
            # 1. plain against DeepSpeed, same batch
            times = abba(loops, args.steps, args.warmup, sync, sampler, cuda)
            steps = {name: summary(times[name], samples_per_step, sampler, name) | {"warmup_seconds": warmup[name]}
                     for name in loops}
            progress(began, "1. plain / deepspeed steps timed")

            # 2. the loader alone, with the default workers and with none
            loaders = [loader_rate(videos, images, data, batch_size, n, args.seed, buffer, args.loader_samples)
                       for n in dict.fromkeys([workers, 0])]
            progress(began, "2. loaders timed")

            # ... and feeding the DeepSpeed steps as in the trainer, against the fixed batch, alternating
            fed = None
            if args.fed_steps:
                stream = stream_of(videos, images, data, args.seed, buffer, batch_size)
                loader = iter(DataLoader(stream, batch_size=batch_size, num_workers=workers, collate_fn=collate))
                next(loader)  # the loader's start-up (worker, shuffle buffer) is not timed
                fed_loops = {"deepspeed, fixed batch": loops["deepspeed"],
                             "deepspeed, fed by loader": lambda i: ds_step(i, lambda: next(loader))}
                times = abba(fed_loops, args.fed_steps, args.warmup + args.steps, sync, sampler, cuda)
                del loader
                fed = {name: summary(times[name], samples_per_step, sampler, name) for name in fed_loops}
                fed["workers"] = workers
                fed["ratio"] = ratios(fed["deepspeed, fed by loader"], fed["deepspeed, fixed batch"])
                progress(began, "2. loader-fed steps timed")

            # 6. a LoRA adapter's engine against the full one, same batch, alternating
            lora = None
            if args.lora_steps:
                lora = lora_against_full(args, model, parts, batch, training, ds_config, engine, loops["deepspeed"],
                                         sync, sampler, cuda, samples_per_step, args.warmup + args.steps)
                progress(began, "6. LoRA against full fine-tuning timed")

            # 5. the same engine on precomputed latents against pixels: fixed batches, then fed by their loaders
            latent = None
            if args.latent_steps:
                latent = latents_against_pixels(args, model, preset, data, videos, images, batch, ds_step, workers,
                                                root, sync, sampler, cuda, samples_per_step,
                                                args.warmup + args.steps + args.fed_steps)
                progress(began, "5. latents against pixels timed")

        return {
            "stage": args.stage, "preset": args.preset, "device": str(device), "threads": args.threads,
            "batch": {"micro_batch": batch_size, "gradient_accumulation": training["gradient_accumulation"],
                      "shape": shape, "samples_per_step": samples_per_step},
            "deepspeed_config": ds_config, "deepspeed_version": deepspeed.__version__,
            "torch_version": torch.__version__, "steps": steps, "overhead": ratios(steps["deepspeed"], steps["plain"]),
            "rss_before_steps_mb": rss_before / 2**20, "peak_rss_process_mb": peak_rss_bytes() / 2**20,
            "loaders": loaders, "fed": fed, "default_workers": workers, "latents": latent, "lora": lora,
            "trainable_parameters": sum(p.numel() for p in ds_unet.parameters() if p.requires_grad),
            "cuda": cuda, "wall_s": time.perf_counter() - began,
        }


def optimizer_state_bytes(engine) -> int:
    """Bytes of a DeepSpeed ZeRO engine's optimizer states: AdamW's moments and ZeRO's fp32 master partitions."""
    import torch

    zero = engine.optimizer
    tensors = [t for state in zero.optimizer.state.values() for t in state.values() if torch.is_tensor(t)]
    tensors += list(getattr(zero, "single_partition_of_fp32_groups", []))
    return sum(t.numel() * t.element_size() for t in tensors)


def lora_against_full(args, model, parts, batch, training, ds_config, full_engine, full_step, sync, sampler, cuda,
                      samples_per_step, first_index) -> dict:
    """Section 6: a second DeepSpeed engine training a rank-`args.lora_rank` adapter (lavie_model/lora.py, the
    trainer's default targets) of another copy of the stage's UNet, alternating with the full engine on the same
    batch; per engine the trainable weights, the optimizer-state bytes, s/step, the resident-set rise within a step,
    and `lavie plan`'s figures for both."""
    from lavie_model.lora import add_lora
    from lavie_model.plan import PlanSettings, plan
    from lavie_model.training.stages import load_unet

    unet = load_unet(model, args.stage).train()
    add_lora(unet, args.lora_rank, seed=args.seed)
    engine, step = deepspeed_stepper(unet, parts, training, ds_config, args.seed)
    loops = {"deepspeed, full": full_step, "deepspeed, LoRA": lambda i: step(i, lambda: batch)}
    for i in range(args.warmup):  # the LoRA engine's first steps allocate its states
        loops["deepspeed, LoRA"](first_index + i)
    times = abba(loops, args.lora_steps, first_index + args.warmup, sync, sampler, cuda)
    rows = {name: summary(times[name], samples_per_step, sampler, name) for name in loops}
    for name, eng in (("deepspeed, full", full_engine), ("deepspeed, LoRA", engine)):
        rank = args.lora_rank if "LoRA" in name else 0
        planned = plan(PlanSettings(preset=args.preset, stage=args.stage, device="cuda" if cuda else "cpu",
                                    lora_rank=rank, batch_size=training["batch_size"]))
        rows[name] |= {"trainable_parameters": sum(p.numel() for p in eng.module.parameters() if p.requires_grad),
                       "optimizer_state_bytes": optimizer_state_bytes(eng),
                       "planned_optimizer_bytes": planned.device["optimizer"], "planned_peak_bytes": planned.total}
    return {"rank": args.lora_rank, "steps": rows, "ratio": ratios(rows["deepspeed, LoRA"], rows["deepspeed, full"])}


def latents_against_pixels(args, model, preset, data, videos, images, pixel_batch, ds_step, workers, root, sync,
                           sampler, cuda, samples_per_step, first_index) -> dict:
    """Section 5: build latent shards of the shards (timed, sized), then time the DeepSpeed step on the pixel
    batch against the same samples' latent batch, and fed by a pixel loader against a latent loader (the preset's
    workers), each pair alternating (AB BA ...). The step on latents skips the VAE and the text encoder; its
    loader reads arrays instead of decoding and resizing video."""
    from torch.utils.data import DataLoader

    from lavie_model.training.data import collate, expand_shards
    from lavie_model.training.latents import FAMILY_OF, Encoders, encode_shards

    batch_size, buffer = len(pixel_batch["key"]), preset["training"]["shuffle_buffer"]
    encoders = Encoders.load(model, FAMILY_OF[args.stage], preset, device="cuda" if cuda else "cpu")
    started = time.perf_counter()
    made = encode_shards(expand_shards(videos), root / "latents" / "videos", encoders, "video")
    made_images = encode_shards(expand_shards(images), root / "latents" / "images", encoders, "image") if images else []
    build_s = time.perf_counter() - started
    latent_videos = [root / "latents" / "videos" / m["name"] for m in made]
    latent_images = [root / "latents" / "images" / m["name"] for m in made_images] or None
    latent_batch = fixed_batch(latent_videos, latent_images, data, batch_size, args.seed, buffer, latents=True)
    if latent_batch["key"] != pixel_batch["key"]:
        raise RuntimeError("the latent and pixel streams gave different samples: the comparison would be unfair")

    fixed_loops = {"pixels, fixed batch": lambda i: ds_step(i, lambda: pixel_batch),
                   "latents, fixed batch": lambda i: ds_step(i, lambda: latent_batch)}
    fixed = abba(fixed_loops, args.latent_steps, first_index, sync, sampler, cuda)
    loaders = {name: iter(DataLoader(stream_of(shards, pictures, data, args.seed, buffer, batch_size, name == "latents"),
                                     batch_size=batch_size, num_workers=workers, collate_fn=collate))
               for name, shards, pictures in (("pixels", videos, images), ("latents", latent_videos, latent_images))}
    for loader in loaders.values():
        next(loader)  # start-up (workers, shuffle buffer) untimed
    fed_loops = {"pixels, fed by loader": lambda i: ds_step(i, lambda: next(loaders["pixels"])),
                 "latents, fed by loader": lambda i: ds_step(i, lambda: next(loaders["latents"]))}
    fed = abba(fed_loops, args.latent_steps, first_index + args.latent_steps, sync, sampler, cuda)
    del loaders
    rows = {name: summary(times[name], samples_per_step, sampler, name)
            for times, loops in ((fixed, fixed_loops), (fed, fed_loops)) for name in loops}
    clips, frames = sum(m["samples"] for m in made), sum(m["frames"] for m in made)
    rates = {name: loader_rate(shards, pictures, data, batch_size, workers, args.seed, buffer, args.loader_samples,
                               latents=name == "latents")
             for name, shards, pictures in (("pixels", videos, images), ("latents", latent_videos, latent_images))}
    return {
        "steps": rows, "workers": workers,
        "speedup_fixed": ratios(rows["pixels, fixed batch"], rows["latents, fixed batch"]),
        "speedup_fed": ratios(rows["pixels, fed by loader"], rows["latents, fed by loader"]),
        "loaders": rates, "build_s": build_s, "clips": clips, "frames": frames, "images": sum(
            m["samples"] for m in made_images),
        "bytes": sum(m["bytes"] for m in made + made_images),
        "kb_per_clip": sum(m["bytes"] for m in made) / clips / 1024,
        "build_s_per_clip": sum(m["seconds"] for m in made) / clips,
        "curated_kb_per_clip": sum(Path(p).stat().st_size for p in expand_shards(videos)) / clips / 1024,
    }


def progress(began: float, what: str) -> None:
    print(f"[{time.perf_counter() - began:6.1f} s] {what}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- paper run

# Dense bf16 tensor-core peak (FLOP/s) by a part of the card's name, the first that matches; other cards: unknown
DENSE_BF16_PEAK = (("H200", 989e12), ("H100 PCIe", 756e12), ("H100 SXM", 989e12), ("H100 80GB HBM3", 989e12),
                   ("A100", 312e12))


def dense_bf16_peak(card: str) -> float | None:
    return next((peak for part, peak in DENSE_BF16_PEAK if part in card), None)


def paper_case(queue, preset_name, steps, images):
    """In a fresh process: DeepSpeed steps of a random paper-size base UNet on random latents (CUDA, bf16)."""
    try:
        queue.put(paper_steps(preset_name, steps, images))
    except BaseException as error:  # report, do not hang the parent
        import traceback

        queue.put({"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()})


def step_flops(stage: str, preset: dict, images: int) -> dict:
    """FLOPs of one forward and of one training step's forward and backward (no recomputation: model FLOPs),
    counted with torch.utils.flop_counter on the meta device (shapes only: no memory, no compute)."""
    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        unet = build_unet(stage, preset).train()
        sample, timesteps, text, kwargs, target = stage_inputs(unet, stage, preset, images)
    if "class_labels" in kwargs:  # the noise-level embedding: a lookup, no FLOPs; its check reads values meta lacks
        del kwargs["class_labels"]
        unet.class_embedding = None
    with FlopCounterMode(display=False) as forward, torch.no_grad():
        unet(sample, timesteps, text, **kwargs)
    with FlopCounterMode(display=False) as step:
        F.mse_loss(unet(sample, timesteps, text, **kwargs).sample, target).backward()
    return {"forward": forward.get_total_flops(), "step": step.get_total_flops()}


def paper_steps(preset_name, steps, images, device_name="cuda", stage="base", deadline=None) -> dict:
    """Training steps of a randomly initialised `stage` UNet of the preset on one random micro-batch of its training
    shapes, with gradient checkpointing: DeepSpeed with the trainer's config (ZeRO-2; bf16 on CUDA) when deepspeed
    imports, else a plain AdamW step (bf16 autocast on CUDA). One warm-up step, then `steps` timed ones, fewer when
    time.time() passes `deadline`. With the step's model FLOPs and MFU, and for the base stage what reading pixels
    would add: an SD-shaped VAE encoder over the frames and images and a CLIP-shaped text encoder over the captions."""
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        os.environ.pop(name, None)  # a port of its own, not the parent's
    import torch
    import torch.nn.functional as F

    from lavie_model.config import load_preset
    from lavie_model.training.trainer import (TrainSettings, deepspeed_config, release_shared_buffer,
                                              single_rank_environment)

    cuda = device_name == "cuda"
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    preset = load_preset(preset_name)
    training = preset["training"]
    m = (training["image_frames"] if images is None else images) if stage == "base" else 0
    flops = step_flops(stage, preset, m)
    single_rank_environment()
    try:
        import deepspeed
    except ImportError:
        deepspeed = None

    torch.manual_seed(0)
    with device:
        unet = build_unet(stage, preset).train()
    unet.enable_gradient_checkpointing()
    parameters = sum(p.numel() for p in unet.parameters())
    trainable, optimizer, schedule = make_optimizer(unet, training)
    if deepspeed is not None:
        quiet_deepspeed()
        deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo")
        if not cuda:
            release_shared_buffer(0)
        settings = TrainSettings(stage=stage, model="(random)", videos="(random)", output="(none)", preset=preset_name)
        ds_config = deepspeed_config(settings, training, cuda)
        engine, _, _, _ = deepspeed.initialize(model=unet, optimizer=optimizer, lr_scheduler=schedule, config=ds_config)
        model, dtype = engine.module, engine.module.dtype
        engine_name = f"DeepSpeed {deepspeed.__version__} ZeRO-{ds_config['zero_optimization']['stage']}"
    else:
        model, dtype = unet, torch.float32  # fp32 weights under bf16 autocast, as the trainer without DeepSpeed
        engine_name = "plain torch (deepspeed not installed)"
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda and deepspeed is None)
    with device:
        sample, timesteps, text, kwargs, target = stage_inputs(unet, stage, preset, m)
    sample, text = sample.to(dtype), text.to(dtype)

    def step():
        with autocast:
            loss = F.mse_loss(model(sample, timesteps, text, **kwargs).sample.float(), target)
        if deepspeed is not None:
            engine.backward(loss)
            engine.step()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, training["max_grad_norm"])
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()

    started = time.perf_counter()
    step()  # warm-up: allocates gradients and optimizer states
    warmup_s = time.perf_counter() - started
    encode = {}
    if stage == "base":
        b, f = sample.shape[0], sample.shape[2]
        vae = preset["model"].get("vae", SD_VAE)
        scale = 2 ** (len(vae["block_out_channels"]) - 1)
        size = tuple(n * scale for n in sample.shape[-2:])
        frozen_dtype = torch.bfloat16 if cuda else torch.float32  # the frozen encoders, as the trainer holds them
        encode_s = encoder_seconds(b * f, size, b * (1 + m), device, frozen_dtype, vae,
                                   preset["model"].get("text_encoder", SD_TEXT), repeats=3 if cuda else 1)
        encode = {"encode_s": encode_s, "encode_frames": b * f, "encode_size": list(size)}
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    values = []
    while len(values) < steps and (not values or deadline is None or time.time() < deadline):
        start = time.perf_counter()
        step()
        values.append(time.perf_counter() - start)
    median = statistics.median(values)
    card = torch.cuda.get_device_name(device) if cuda else "cpu"
    peak = dense_bf16_peak(card) if cuda else None
    batch = sample.shape[0]
    return {"stage": stage, "card": card, "engine": engine_name, "parameters": parameters,
            "trainable_parameters": sum(p.numel() for p in trainable), "sample": list(sample.shape),
            "text": list(text.shape), "image_frames": m, "dtype": str(dtype), "gradient_checkpointing": True,
            "warmup_s": warmup_s, "seconds": values, "median_s": median, "samples_per_s": batch / median,
            "stopped_by_deadline": len(values) < steps,
            "max_allocated_mb": torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None,
            "peak_rss_mb": peak_rss_bytes() / 2**20,
            "inputs": "random latents and text embeddings (no VAE, no text encoder, no weights)",
            "forward_flops": flops["forward"], "step_flops": flops["step"],
            "tflops_per_s": flops["step"] / median / 1e12,
            "dense_bf16_peak": peak, "mfu": flops["step"] / median / peak if peak else None,
            **encode, **({"vae_share": encode["encode_s"] / (encode["encode_s"] + median)} if encode else {})}


def encoder_seconds(frames: int, size: tuple[int, int], captions: int, device, dtype, vae_config=SD_VAE,
                    text_config=SD_TEXT, repeats: int = 3) -> float:
    """Median seconds of what the pixel path adds to each step and precomputed latents remove: a VAE encoder
    (Stable Diffusion's by default) over `frames` frames of `size` and a text encoder (CLIP ViT-L/14's) over
    `captions` captions, in one call each, as training_loss makes them."""
    import torch
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device(device):
        vae = AutoencoderKL(**vae_config).to(dtype).eval()
        text_encoder = CLIPTextModel(CLIPTextConfig(**text_config)).to(dtype).eval()
        pixels = torch.randn(frames, 3, *size, dtype=dtype)
        tokens = torch.randint(text_encoder.config.vocab_size, (captions, 77))
    cuda = torch.device(device).type == "cuda"

    def run():
        with torch.no_grad():
            vae.encode(pixels).latent_dist.sample()
            text_encoder(tokens)[0]
        if cuda:
            torch.cuda.synchronize()

    run()  # warm-up
    values = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        values.append(time.perf_counter() - start)
    return statistics.median(values)


def run_paper(args) -> dict:
    import torch

    if not torch.cuda.is_available():
        return {"skipped": "CUDA is not available on this machine: the paper-size step needs a GPU"}
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=paper_case, args=(queue, "paper", args.paper_steps, None))
    process.start()
    process.join()
    if process.exitcode != 0 and queue.empty():
        return {"error": f"the paper-size run exited with code {process.exitcode} (out of memory?)"}
    return queue.get()


# ---------------------------------------------------------------------------------------------- report

def report(results: dict, paper: dict | None) -> None:
    batch = results["batch"]
    print(f"{results['preset']} preset, {results['stage']} stage, {results['device']}, {results['threads']} threads, "
          f"deepspeed {results['deepspeed_version']}, torch {results['torch_version']}")
    print(f"micro-batch {batch['micro_batch']} x accumulation {batch['gradient_accumulation']}: {batch['shape']}; "
          f"{results['trainable_parameters'] / 1e6:.2f} M trainable parameters")
    config = results["deepspeed_config"]
    print(f"DeepSpeed: ZeRO-{config['zero_optimization']['stage']}, {'bf16' if config['bf16']['enabled'] else 'fp32'}, "
          f"client AdamW + LR schedule, gradient clipping {config['gradient_clipping']}")
    print()
    steps, cuda = results["steps"], results["cuda"]
    print(f"1. training step on one fixed batch: {len(steps['plain']['seconds'])} steps per loop, alternating "
          f"(AB BA ...)")
    step_table({name: steps[name] for name in ("plain", "deepspeed")}, cuda)
    if steps["plain"]["warmup_seconds"]:
        print("warm-up, untimed in the table: " + ", ".join(
            f"{name} " + " ".join(f"{x:.2f}" for x in steps[name]["warmup_seconds"]) + " s" for name in steps))
    ratio_lines("deepspeed / plain", results["overhead"], target=1.15)
    print()
    rate = steps["deepspeed"]["samples_per_s"]
    print(f"2. data loader alone (TrainingStream + DataLoader + collate) against the DeepSpeed step's "
          f"{rate:.2f} samples/s")
    print(f"{'workers':>7} {'samples':>7} {'samples/s':>10} {'first batch s':>14}  verdict")
    for loader in results["loaders"]:
        if loader["workers"]:
            headroom = loader["samples_per_s"] / rate
            verdict = (f"{headroom:.1f}x the step's rate: "
                       + ("not the bottleneck" if headroom >= 1 else "THE BOTTLENECK"))
        else:
            verdict = f"in series: would add {rate / loader['samples_per_s'] * 100:.1f}% to the step time"
        default = " (the preset's workers)" if loader["workers"] == results["default_workers"] else ""
        print(f"{loader['workers']:>7} {loader['samples']:>7} {loader['samples_per_s']:10.2f} "
              f"{loader['first_batch_s']:14.2f}  {verdict}{default}")
    fed = results["fed"]
    if fed:
        print(f"DeepSpeed steps fed by that loader ({fed['workers']} worker(s)) against the fixed batch, alternating:")
        step_table({name: value for name, value in fed.items() if name.startswith("deepspeed")}, cuda)
        ratio_lines("fed / fixed", fed["ratio"])
    print()
    deep, plain = steps["deepspeed"], steps["plain"]
    print(f"3. memory: peak resident set during the DeepSpeed steps {deep['peak_rss_mb']:.0f} MB, during the plain "
          f"steps {plain['peak_rss_mb']:.0f} MB ({results['rss_before_steps_mb']:.0f} MB before the timed steps; "
          f"process peak {results['peak_rss_process_mb']:.0f} MB). One process holds both UNet copies, their")
    print(f"   optimizer states, the frozen VAE and text encoder and the imports. Largest rise within one step over "
          f"the resident set at its start: DeepSpeed {deep['step_rss_rise_mb']:.0f} MB, plain "
          f"{plain['step_rss_rise_mb']:.0f} MB")
    print("   (memory taken from the system during the step; what the allocator kept from earlier steps and "
          "reused is not counted).")
    if cuda:
        print(f"   CUDA max allocated: DeepSpeed steps {steps['deepspeed']['cuda_max_allocated_mb']:.0f} MB, plain "
              f"steps {steps['plain']['cuda_max_allocated_mb']:.0f} MB")
    lora = results["lora"]
    if lora:
        print()
        print(f"6. a rank-{lora['rank']} LoRA adapter (attention projections) against full fine-tuning, the same batch "
              f"and DeepSpeed config, alternating:")
        step_table(lora["steps"], cuda)
        print(f"{'engine':18} {'trainable':>10} {'optimizer states MB':>20} {'plan: optimizer MB':>19} "
              f"{'plan: peak MB':>14} {'step RSS rise MB':>17}")
        for name, row in lora["steps"].items():
            print(f"{name:18} {row['trainable_parameters']:10,} {row['optimizer_state_bytes'] / 2**20:20.1f} "
                  f"{row['planned_optimizer_bytes'] / 2**20:19.1f} {row['planned_peak_bytes'] / 2**20:14.0f} "
                  f"{row['step_rss_rise_mb']:17.0f}")
        ratio_lines("LoRA / full step time", lora["ratio"])
    latent = results["latents"]
    if latent:
        print()
        print(f"5. precomputed latents against pixels, the same DeepSpeed engine and samples "
              f"({latent['workers']} loader worker(s)), alternating:")
        print(f"   latent shards of {latent['clips']} clips ({latent['frames']} frames) and {latent['images']} "
              f"images built in {latent['build_s']:.1f} s ({latent['build_s_per_clip'] * 1000:.0f} ms per clip); "
              f"{latent['kb_per_clip']:.0f} kB per clip (the curated mp4 shards: "
              f"{latent['curated_kb_per_clip']:.0f} kB per clip)")
        step_table(latent["steps"], cuda)
        ratio_lines("speed-up on the fixed batch, pixels / latents", latent["speedup_fixed"])
        ratio_lines("speed-up fed by the loaders, pixels / latents", latent["speedup_fed"])
        print("   loaders alone: " + ", ".join(f"{name} {rate['samples_per_s']:.1f} samples/s"
                                              for name, rate in latent["loaders"].items()))
    if paper is None:
        return
    print()
    if "skipped" in paper:
        print(f"4. paper-size base step: skipped: {paper['skipped']}")
    elif "error" in paper:
        print(f"4. paper-size base step: failed: {paper['error']}")
        if "traceback" in paper:
            print(paper["traceback"])
    else:
        print(f"4. paper-size base step on {paper['card']}: a randomly initialised {paper['parameters'] / 1e6:.0f} M-"
              f"parameter base UNet; {paper['inputs']}")
        print(f"   latents {tuple(paper['sample'])} (16 frames + {paper['image_frames']} images), text "
              f"{tuple(paper['text'])}, {paper['dtype']}, {paper['engine']}, gradient checkpointing")
        allocated = (f"max allocated {paper['max_allocated_mb'] / 1024:.1f} GiB, "
                     if paper["max_allocated_mb"] is not None else "")
        print(f"   {paper['median_s']:.3f} s/step (median of {len(paper['seconds'])}), "
              f"{paper['samples_per_s']:.2f} samples/s, {allocated}peak RSS {paper['peak_rss_mb'] / 1024:.1f} GiB")
        mfu = f", MFU {paper['mfu']:.1%} of the card's dense bf16 peak" if paper["mfu"] is not None else ""
        print(f"   {paper['step_flops'] / 1e12:.1f} TFLOP per step (model FLOPs, counted): "
              f"{paper['tflops_per_s']:.0f} TFLOP/s{mfu}")
        size = " x ".join(map(str, paper["encode_size"]))
        print(f"   pixels instead of latents would add {paper['encode_s']:.3f} s per step (the SD-shaped VAE over "
              f"{paper['encode_frames']} frames of {size} and the text encoder): {paper['vae_share']:.0%} of a pixel "
              f"step, the share precomputed latents remove")


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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", default="base", choices=STAGES)
    parser.add_argument("--preset", default="tiny", help="preset name or YAML file with a training section")
    parser.add_argument("--model", help="model folder (default: a random one of the preset, in a temp dir)")
    parser.add_argument("--videos", help="video shards (default: a small set built in a temp dir)")
    parser.add_argument("--images", help="image shards for the base stage")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per loop")
    parser.add_argument("--warmup", type=int, default=1,
                        help="untimed steps per loop first, alternating (1: a plain and a DeepSpeed step)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--workers", type=int, help="data loader workers (default: the preset's num_workers)")
    parser.add_argument("--loader-samples", type=int, default=40)
    parser.add_argument("--fed-steps", type=int, default=0,
                        help="DeepSpeed steps fed by the loader, alternating with as many on the fixed batch "
                             "(0: none)")
    parser.add_argument("--latent-steps", type=int, default=0,
                        help="steps per loop of section 5, precomputed latents against pixels (0: skip it)")
    parser.add_argument("--batch-size", type=int, help="micro-batch (default: the preset's training.batch_size)")
    parser.add_argument("--lora-steps", type=int, default=0,
                        help="steps per engine of section 6, a LoRA adapter against full fine-tuning (0: skip it)")
    parser.add_argument("--lora-rank", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gpu-paper", action="store_true", help="also time the paper-size base step (CUDA)")
    parser.add_argument("--paper-steps", type=int, default=3)
    parser.add_argument("--json", help="write the results here as JSON")
    args = parser.parse_args()
    if args.images and args.stage != "base":
        parser.error("--images: only the base stage trains on images")
    if args.images and not args.videos:
        parser.error("--images needs --videos")

    results = run_tiny(args)
    paper = run_paper(args) if args.gpu_paper else None
    report(results, paper)
    if args.json:
        Path(args.json).write_text(json.dumps({"tiny": results, "paper": paper}, indent=2, default=str) + "\n")
        print(f"\nresults written to {args.json}")


if __name__ == "__main__":
    sys.exit(main())
