"""`lavie plan` against measured peaks: `lavie train` on this CPU, and the paper-size figures beside their counts.

    python benchmarks/plan_calibration.py [--steps 3] [--cases tiny-full,tiny-lora,...|none] [--json out.json]

1. The runtime: the peak resident set of a process that imports what `lavie train` imports and joins a gloo
   group, beside plan.RUNTIME_CPU (fitted: the process beyond its model, which holds more than these imports).
2. For each case (preset, full or LoRA, gradient checkpointing), `lavie train --stage base` runs --steps steps
   (one rank, fp32, ZeRO-2) on a random model folder of the preset (`init_random`) and a small shard set of
   moving squares at the preset's pixel size, reading pixels; its measured peak is the largest `memory_mb` in
   metrics.jsonl: the rank's peak resident set (ru_maxrss), the whole run up to that step. Beside it the plan
   for the same settings (device cpu), the ratio, and the activation factor that would have made the plan exact
   (the measured peak less everything else, over the bytes autograd saves).
3. The paper-size base, interpolation and VSR plans on one 80 GB GPU (bf16, gradient checkpointing, the preset's
   batch), full and LoRA, with the parameter counts they come from; and where a GPU peak was measured before
   (README: one H100 80GB, random inputs, no EMA, no frozen parts), that figure beside the plan's matching rows.

The cases run one after another (nothing else should run: the peaks are of this machine's memory, not time).
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MID = str(ROOT / "benchmarks" / "mid_preset.yaml")
CASES = {  # name: (preset, LoRA rank, gradient checkpointing)
    "tiny-full": ("tiny", 0, False), "tiny-lora": ("tiny", 8, False),
    "mid-full": (MID, 0, False), "mid-lora": (MID, 8, False), "mid-full-checkpointing": (MID, 0, True),
    "tiny-full-checkpointing": ("tiny", 0, True),
}
# Peaks measured on one H100 80GB (README, "Paper scale"): bf16, ZeRO-2, gradient checkpointing, random inputs of
# the paper shapes, no EMA and no VAE or text encoder loaded: torch.cuda.max_memory_allocated in GiB
GPU_MEASURED = [("base", 2, 18.7), ("interpolation", 1, 20.3), ("interpolation", 2, 27.8)]

RUNTIME_PROBE = """
import os, resource
import deepspeed, diffusers, transformers, torch
from lavie_model.training import trainer, data, stages
trainer.single_rank_environment()
deepspeed.init_distributed(dist_backend="gloo")
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


def runtime_bytes() -> int:
    out = subprocess.run([sys.executable, "-c", RUNTIME_PROBE], capture_output=True, text=True, check=True,
                         env={"DS_ACCELERATOR": "cpu", "PATH": "/usr/bin:/bin"}, cwd=ROOT)
    return int(out.stdout.split()[-1])


def inputs(root: Path, preset: str) -> dict:
    """A random model folder of the preset and shards at its pixel size."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from common import build_shards

    from lavie_model.config import load_preset
    from lavie_model.model_folder import init_random

    loaded = load_preset(preset)
    scale = 2 ** (len(loaded["model"]["vae"]["block_out_channels"]) - 1)
    size = max(loaded["data"]["latent_size"]) * scale
    frames = loaded["data"]["num_frames"] * loaded["training"]["frame_stride"] + 4
    (root / "shards").mkdir(parents=True)
    shards = build_shards(root / "shards", size, frames=frames, clips=8, images=8)
    return {"model": str(init_random(root / "model", preset)), **shards}


def measure(case: str, root: Path, made: dict, steps: int) -> dict:
    """Run `lavie train` for `steps` steps; its peak memory and wall time."""
    preset, rank, checkpointing = CASES[case]
    output = root / case
    command = [sys.executable, "-m", "lavie_model.cli", "train", "--stage", "base", "--preset", preset,
               "--model", made["model"], "--videos", made["videos"], "--images", made["images"],
               "--output", str(output), "--max-steps", str(steps)]
    command += ["--lora", str(rank)] if rank else []
    command += ["--gradient-checkpointing"] if checkpointing else []
    started = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT, capture_output=True)
    lines = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    return {"peak_bytes": max(line["memory_mb"] for line in lines) * 2**20, "seconds": time.perf_counter() - started}


def planned(preset: str, rank: int, checkpointing: bool, device: str = "cpu", stage: str = "base",
            batch_size: int | None = None, latents: bool = False):
    from lavie_model.finetune.plan import plan
    from lavie_model.training.trainer import TrainSettings

    settings = TrainSettings(stage=stage, model="", videos="", output="", preset=preset, lora_rank=rank,
                             gradient_checkpointing=checkpointing, latents="(precomputed)" if latents else None,
                             overrides={"batch_size": batch_size} if batch_size else {})
    return plan(settings, device)


def exact_factor(result, measured: float) -> float:
    """The activation factor that would make the plan equal `measured` (the rest held as predicted)."""
    from lavie_model.finetune.plan import ACTIVATION_FACTOR, PASSES

    held = sum(value for name, value in result.device.items() if name not in PASSES)
    settings = result.settings
    factor = ACTIVATION_FACTOR[settings["device"], settings["gradient_checkpointing"]]
    return (measured - held) / (result.device["activations"] / factor)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--cases", default=",".join(CASES),
                        help=f"comma list of {', '.join(CASES)}; none: only the paper-size plans")
    parser.add_argument("--json", help="write the results here as JSON")
    args = parser.parse_args()
    cases = [] if args.cases == "none" else args.cases.split(",")
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        parser.error(f"unknown cases {', '.join(unknown)}; choose from {', '.join(CASES)}")

    from lavie_model.finetune.plan import GiB, RUNTIME_CPU

    results = {"runtime_bytes": runtime_bytes(), "cases": {}, "paper": {}, "gpu_measured": []}
    print(f"1. runtime: a process with the trainer's imports and a gloo group peaks at "
          f"{results['runtime_bytes'] / GiB:.2f} GiB (plan.RUNTIME_CPU: {RUNTIME_CPU / GiB:.2f} GiB)\n")
    print("2. lavie train --stage base, one rank on this CPU, fp32, ZeRO-2, pixels: measured peak resident set "
          "against the plan")
    print(f"{'case':24} {'weights':>9} {'trainable':>10} {'saved/sample':>13} {'measured GiB':>13} {'planned GiB':>12} "
          f"{'plan/meas.':>10} {'exact factor':>12} {'run s':>6}")
    with tempfile.TemporaryDirectory() as folder:
        made = {}
        for case in cases:
            preset, rank, checkpointing = CASES[case]
            if preset not in made:
                made[preset] = inputs(Path(folder) / Path(preset).stem, preset)
            measured = measure(case, Path(folder), made[preset], args.steps)
            result = planned(preset, rank, checkpointing)
            row = {"measured_bytes": measured["peak_bytes"], "planned_bytes": result.total,
                   "ratio": result.total / measured["peak_bytes"],
                   "exact_factor": exact_factor(result, measured["peak_bytes"]), "seconds": measured["seconds"],
                   "plan": result.as_dict()}
            results["cases"][case] = row
            print(f"{case:24} {result.parameters / 1e6:8.2f}M {result.trainable / 1e6:9.3f}M "
                  f"{result.saved_per_sample / 2**20:10.0f} MiB {row['measured_bytes'] / GiB:13.3f} "
                  f"{row['planned_bytes'] / GiB:12.3f} {row['ratio']:10.3f} {row['exact_factor']:12.2f} "
                  f"{row['seconds']:6.0f}")
    if cases:
        worst = max(abs(row["ratio"] - 1) for row in results["cases"].values())
        print(f"largest error {worst:.1%} (target: within 15%)")
    print()

    print("3. paper size, one GPU, bf16, ZeRO-2, gradient checkpointing, the preset's micro-batch, pixels: "
          "predicted (GiB per rank)")
    print(f"{'stage':14} {'mode':10} {'UNet weights':>13} {'trainable':>10} {'saved/sample':>13} {'weights':>8} "
          f"{'grads':>6} {'optim':>6} {'ema':>5} {'frozen':>6} {'activ.':>7} {'encode':>7} {'total':>6}  fits 80 GB")
    for stage in ("base", "interpolation", "vsr"):
        for rank in (0, 16):
            if stage == "interpolation" and rank:
                continue  # an adapter needs a trained interpolation UNet; same shapes as full but for the states
            result = planned("paper", rank, True, device="cuda", stage=stage)
            results["paper"][f"{stage}-{'lora' if rank else 'full'}"] = result.as_dict()
            d = {name: value / GiB for name, value in result.device.items()}
            print(f"{stage:14} {'LoRA 16' if rank else 'full':10} {result.parameters / 1e6:12.1f}M "
                  f"{result.trainable / 1e6:9.2f}M {result.saved_per_sample / 2**20:9.0f} MiB {d['weights']:8.2f} "
                  f"{d['gradients']:6.2f} {d['optimizer']:6.2f} {d['ema']:5.2f} {d['frozen']:6.2f} "
                  f"{d['activations']:7.2f} {d['encoding']:7.2f} {result.total / GiB:6.2f}  "
                  f"{'yes' if result.fits(80e9) else 'NO'}")
    print("\n   against the H100 peaks measured before (random inputs: weights, gradients, optimizer, activations and "
          "the step; no EMA, VAE, text encoder or CUDA context):")
    for stage, batch, measured in GPU_MEASURED:
        result = planned("paper", 0, True, device="cuda", stage=stage, batch_size=batch, latents=True)
        d = result.device
        part = d["weights"] + d["gradients"] + d["optimizer"] + max(d["activations"], d["step"])
        results["gpu_measured"].append({"stage": stage, "batch": batch, "measured_gib": measured,
                                        "planned_gib": part / GiB, "ratio": part / GiB / measured})
        print(f"   {stage} batch {batch}: measured {measured:.1f} GiB, planned {part / GiB:.1f} GiB "
              f"({part / GiB / measured:.3f})")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nresults written to {args.json}")


if __name__ == "__main__":
    main()
