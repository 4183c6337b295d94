"""The motion loop's speed options (training/motion.py: train_motion's `compile`, `autocast`, `cache_captions`),
clips/s each beside eager fp32, measured in one process on one device.

    python benchmarks/motion_speed.py [--stage base|interpolation] [--batch-size 32] [--steps N] [--rounds 3]
        [--warmup 2] [--device cpu|cuda] [--threads N] [--variants NAME ...] [--model CASCADE] [--json PATH] [--smoke]

Each variant trains its own copy of the shipped tiny LaVie's UNet (`python -m lavie_model.tiny.tiny_lavie cascade`,
or --model) with the step train_motion takes: render a batch on the device, the stage's loss (VAE encoding,
caption embeddings, the UNet), backward, clipped AdamW step, EMA. Every variant first takes `--warmup` steps
(the first holds torch.compile's compilation: reported apart, with inductor's on-disk cache as found), then the
variants take turns, `--steps` steps each for `--rounds` rounds, so that a load that comes and goes weighs on all
of them alike. The check: every variant's first loss (the same weights, batch and noise) against eager fp32's,
within LOSS_TOLERANCE (relative; bf16 computes in 8-bit mantissas, compiled kernels round in another order, the
caption cache is exact). A failed check exits 1. `--smoke`: batch 2, 2 steps, eager variants and compile with
dynamo's "eager" backend (the plumbing, not inductor); its figures claim nothing.
"""

import argparse
import copy
import dataclasses
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

LOSS_TOLERANCE = {"fp32": 1e-5, "bf16": 1e-2}  # relative difference of the first loss from eager fp32's


@dataclasses.dataclass(frozen=True)
class Variant:
    compile: str | None = None  # torch.compile mode
    bf16: bool = False          # bf16 autocast
    cache: bool = False         # caption embeddings computed once per caption
    channels_last: bool = False  # the UNet's 4D weights (and so its conv activations) channels-last


VARIANTS = {
    "eager fp32": Variant(),
    "bf16 autocast": Variant(bf16=True),
    "caption cache": Variant(cache=True),
    "channels_last": Variant(channels_last=True),
    "bf16 + cache": Variant(bf16=True, cache=True),
    "channels_last + bf16 + cache": Variant(bf16=True, cache=True, channels_last=True),
    "compile": Variant(compile="default"),
    "compile + cache": Variant(compile="default", cache=True),
    "compile + bf16": Variant(compile="default", bf16=True),
    "compile + bf16 + cache": Variant(compile="default", bf16=True, cache=True),
    "compile + channels_last + bf16 + cache": Variant(compile="default", bf16=True, cache=True, channels_last=True),
}
CUDA_VARIANTS = {
    "reduce-overhead": Variant(compile="reduce-overhead"),
    "reduce-overhead + bf16 + cache": Variant(compile="reduce-overhead", bf16=True, cache=True),
}


def make_step(unet0, parts, recipe, num_frames: int, size: int, device, variant: Variant, backend: str):
    """step(i) -> loss: step i of train_motion's loop on a copy of `unet0`, with the variant's options."""
    from diffusers.training_utils import EMAModel

    from lavie_model.training.motion import rendered_batch
    from lavie_model.training.stages import sample_generators, training_loss
    from lavie_model.training.trainer import optimizer_and_schedule

    unet = copy.deepcopy(unet0).train()
    if variant.channels_last:
        unet.to(memory_format=torch.channels_last)
    optimizer, schedule = optimizer_and_schedule(unet, recipe.training_settings(), recipe.stage)
    trainable = [p for p in unet.parameters() if p.requires_grad]
    ema = EMAModel([p.detach().clone() for p in trainable], decay=recipe.ema_decay,
                   foreach=variant.compile is not None)
    model = unet if variant.compile is None else torch.compile(unet, mode=variant.compile, dynamic=False,
                                                               backend=backend)
    own_parts = dataclasses.replace(parts, caption_cache={} if variant.cache else None)  # the same modules
    b = recipe.batch_size

    def step(i: int) -> torch.Tensor:
        batch = rendered_batch(recipe, i, num_frames, size, device)
        generators = sample_generators(recipe.seed, 0, i * b, b)
        if variant.compile is not None:
            torch.compiler.cudagraph_mark_step_begin()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=variant.bf16):
            loss = training_loss(model, own_parts, batch, generators)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, recipe.max_grad_norm)
        optimizer.step()
        schedule.step()
        ema.step(trainable)
        return loss.detach()

    return step


def synchronize(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU, {os.cpu_count()} cores ({platform.machine()}), {torch.get_num_threads()} threads"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stage", choices=("base", "interpolation"), default="base")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, help="timed steps per variant per round (default: 3 on the CPU, 20 "
                                                 "on a GPU)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant first (compilation)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, help="torch's CPU threads (default: torch's own choice)")
    parser.add_argument("--variants", nargs="*", help=f"of: {', '.join(VARIANTS | CUDA_VARIANTS)} (default: all "
                                                      "that the device runs)")
    parser.add_argument("--model", help="cascade folder (default: the shipped tiny LaVie's)")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--smoke", action="store_true", help="batch 2, 2 steps, no inductor: the code runs")
    args = parser.parse_args(argv)

    from lavie_model.tiny.stand_ins import shipped_cascade
    from lavie_model.training.motion import MotionRecipe
    from lavie_model.training.stages import load_parts, load_unet
    from lavie_model.training.trainer import preset_with_overrides

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch._dynamo.config.recompile_limit = 64  # each compiled variant may add an entry: none may fall back to eager
    args.steps = args.steps or (20 if device.type == "cuda" else 3)
    available = VARIANTS | (CUDA_VARIANTS if device.type == "cuda" else {})
    names = args.variants or list(available)
    if args.smoke:
        args.batch_size, args.steps, args.rounds, args.warmup = 2, 1, 1, 1
        names = args.variants or ["eager fp32", "bf16 autocast", "caption cache", "compile + cache"]
    if names[0] != "eager fp32":
        names = ["eager fp32"] + [n for n in names if n != "eager fp32"]
    unknown = [n for n in names if n not in available]
    if unknown:
        parser.error(f"unknown variants {unknown} on {device.type}; choose from {list(available)}")
    backend = "eager" if args.smoke else "inductor"

    with tempfile.TemporaryDirectory() as scratch:
        model = Path(args.model) if args.model else shipped_cascade(Path(scratch) / "cascade")
        parts = load_parts(model, args.stage).to(device, torch.float32)
        unet0 = load_unet(model, args.stage).to(device)
    preset = preset_with_overrides("tiny", {})
    recipe = MotionRecipe(stage=args.stage, batch_size=args.batch_size)
    data = preset["data"]
    num_frames = 4 * preset["training"]["interpolation"]["keyframes"] - 3 if args.stage == "interpolation" \
        else data["num_frames"]
    size = data["latent_size"][0] * parts.vae_scale

    rows, steps = {}, {}
    for name in names:  # warm-up: the first step on batch 0 is the loss check and holds the compilation
        variant = available[name]
        step = steps[name] = make_step(unet0, parts, recipe, num_frames, size, device, variant, backend)
        synchronize(device)
        started = time.perf_counter()
        first = step(0).item()
        first_seconds = time.perf_counter() - started
        for i in range(1, args.warmup):
            step(i)
        synchronize(device)
        reference = rows["eager fp32"]["loss"] if rows else first
        difference = abs(first - reference) / abs(reference)
        tolerance = LOSS_TOLERANCE["bf16" if variant.bf16 else "fp32"]
        rows[name] = {"variant": name, **dataclasses.asdict(variant), "loss": first,
                      "relative_difference": difference, "tolerance": tolerance, "ok": difference <= tolerance,
                      "first_step_s": first_seconds, "seconds": 0.0, "timed_steps": 0}
        print(f"{name}: first step {first_seconds:.1f} s, loss {first:.6f} ({difference:.1e} from eager)", flush=True)

    at = max(args.warmup, 1)
    for round_ in range(args.rounds):  # the variants take turns: each round, each its `steps` steps
        for name, row in rows.items():
            synchronize(device)
            started = time.perf_counter()
            for i in range(at, at + args.steps):
                steps[name](i)
            synchronize(device)
            row["seconds"] += time.perf_counter() - started
            row["timed_steps"] += args.steps
        at += args.steps
        print(f"round {round_ + 1}/{args.rounds}: " + ", ".join(
            f"{name} {row['timed_steps'] * args.batch_size / row['seconds']:.2f}" for name, row in rows.items()),
            flush=True)

    eager = rows["eager fp32"]
    eager_rate = eager["timed_steps"] * args.batch_size / eager["seconds"]
    print(f"\n{args.stage} stage, batch {args.batch_size}, {device_name(device)}; {args.rounds} rounds x {args.steps} "
          f"timed steps per variant after {args.warmup} warm-up steps; torch {torch.__version__}")
    print("\n| variant | clips/s | vs eager | first step s | first loss | relative difference | check |")
    print("|---|---|---|---|---|---|---|")
    for row in rows.values():
        row["clips_per_s"] = row["timed_steps"] * args.batch_size / row["seconds"]
        row["ratio"] = row["clips_per_s"] / eager_rate
        check = f"{'ok' if row['ok'] else 'FAIL'} (<= {row['tolerance']:.0e})"
        print(f"| {row['variant']} | {row['clips_per_s']:.2f} | {row['ratio']:.2f}x | {row['first_step_s']:.1f} | "
              f"{row['loss']:.6f} | {row['relative_difference']:.1e} | {check} |")
    if args.smoke:
        print("\n(smoke run: batch 2, one timed step, compile on dynamo's eager backend: the figures claim nothing)")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "device": device_name(device), "stage": args.stage, "batch_size": args.batch_size, "steps": args.steps,
            "rounds": args.rounds, "warmup": args.warmup, "torch": torch.__version__, "smoke": args.smoke,
            "rows": list(rows.values())}, indent=2) + "\n")
    return 0 if all(row["ok"] for row in rows.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
