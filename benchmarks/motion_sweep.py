"""Several tiny-LaVie pretraining recipes at once on one GPU, each for a fixed time, with their held-out curves.

    python benchmarks/motion_sweep.py --out DIR [--seconds 300] [--device cuda] [--smoke]

Each recipe runs `python -m lavie_model.tiny.tiny_lavie train` in its own process (the tiny UNets leave a GPU mostly
idle between kernel launches, so several processes share it better than one), stops after `--seconds` of
training, and is scored as tiny_lavie scores it (held-out combinations, 96 clips and prompts, 95% intervals).
DIR gets `sweep.md` (the curves as tables), `sweep.json`, `logs.tar.gz` (every run's logs, curves and recipe)
and, per stage, the best run's EMA UNet in fp16 (`best_base.tar`, `best_interpolation.tar`: a diffusers folder
each). `--smoke` runs two recipes for two steps on the CPU, scored on 2 held-out clips (a test runs it).
"""

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

RECIPES = {  # name -> (stage, MotionRecipe fields)
    "base-default": ("base", {"batch_size": 128}),
    "base-2d-0.3": ("base", {"batch_size": 128, "lr_2d_scale": 0.3}),
    "base-travel-0.8": ("base", {"batch_size": 128, "travel": 0.8}),
    "base-2d-1.0-lr-3e-4": ("base", {"batch_size": 128, "lr_2d_scale": 1.0, "learning_rate": 3e-4}),
    "interp-default": ("interpolation", {}),
    "interp-residual": ("interpolation", {"interpolation_target": "blend_residual"}),
}
SMOKE = {"base-default": ("base", {"batch_size": 2, "eval_every": 2, "log_every": 1}),
         "interp-residual": ("interpolation", {"batch_size": 2, "eval_every": 2, "log_every": 1,
                                               "interpolation_target": "blend_residual"})}


def score(stage: str, row: dict) -> float:
    """What picks the best run of a stage: the classifier's direction (base), PSNR over the latent blend."""
    if stage == "base":
        return row.get("sampled_direction", row["direction_classifier"])["value"]
    return row["psnr"] - row["psnr_latent_blend"]


def table(rows: list[dict], stage: str) -> str:
    from lavie_model.evaluation.stats import Rate

    if stage == "base":
        lines = ["| step | loss | classifier direction | margin | sampled colour | sampled direction |",
                 "|---|---|---|---|---|---|"]
        for r in rows:
            def rate(key):
                return str(Rate(r[key]["hits"], r[key]["n"])) if key in r else ""
            lines.append(f"| {r['step']} | {r['loss']:.4f} | {rate('direction_classifier')} | "
                         f"{r['relative_margin']:+.4f} | {rate('sampled_colour')} | {rate('sampled_direction')} |")
    else:
        lines = ["| step | loss | PSNR | hold | pixel blend | latent blend | VAE round trip |",
                 "|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['step']} | {r['loss']:.4f} | {r['psnr']:.2f} | {r['psnr_hold']:.2f} | "
                         f"{r['psnr_blend']:.2f} | {r['psnr_latent_blend']:.2f} | {r['psnr_vae']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--seconds", type=float, default=300, help="training time of each recipe")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--recipes", help="comma-separated names of RECIPES (default: all)")
    parser.add_argument("--recipe", nargs=3, action="append", metavar=("NAME", "STAGE", "JSON"),
                        help="a recipe of your own instead: its name, stage and MotionRecipe fields as JSON")
    parser.add_argument("--smoke", action="store_true", help="two recipes, two CPU steps, 2 held-out clips")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = Path(tempfile.mkdtemp(prefix="motion-sweep-"))
    if args.recipe:
        recipes = {name: (stage, json.loads(fields)) for name, stage, fields in args.recipe}
    else:
        names = args.recipes.split(",") if args.recipes else RECIPES
        recipes = SMOKE if args.smoke else {name: RECIPES[name] for name in names}
    threads = str(max(1, (os.cpu_count() or 1) // len(recipes)))  # CPU threads per process: no oversubscription
    device = "cpu" if args.smoke else args.device
    started, procs = time.time(), {}
    for name, (stage, fields) in recipes.items():
        command = [sys.executable, "-m", "lavie_model.tiny.tiny_lavie", "train", "--stage", stage, "--run",
                   str(runs / name), "--device", device, "--max-seconds", str(args.seconds),
                   "--set", *[f"{k}={json.dumps(v)}" for k, v in fields.items()]]
        command += ["--held-out-clips", "2" if args.smoke else "96", "--sample-every", "2" if args.smoke else "100000"]
        if args.smoke:
            command += ["--steps", "2", "--sampling-steps", "2"]
        (runs / name).mkdir(parents=True)
        log = open(runs / name / "log.txt", "w")
        env = os.environ | {"OMP_NUM_THREADS": threads}
        procs[name] = (subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env), log)
        print(f"started {name}: {stage} {fields}", flush=True)
    for name, (proc, log) in procs.items():
        proc.wait()
        log.close()
        print(f"{name}: exit {proc.returncode} after {time.time() - started:.0f} s", flush=True)

    results, best = {}, {}
    report = [f"# Motion sweep ({device}, {args.seconds:g} s of training per recipe, all at once)", ""]
    for name, (stage, fields) in recipes.items():
        curve_file = runs / name / "curve.jsonl"
        rows = [json.loads(line) for line in curve_file.read_text().splitlines()] if curve_file.exists() else []
        metrics_file = runs / name / "metrics.jsonl"
        metrics = [json.loads(line) for line in metrics_file.read_text().splitlines()] if metrics_file.exists() else []
        results[name] = {"stage": stage, "fields": fields, "exit": procs[name][0].returncode, "curve": rows,
                         "clips_per_s": metrics[-1]["samples_per_s"] if metrics else None}
        report += [f"## {name} ({stage}, {fields or 'defaults'}; exit {procs[name][0].returncode}; "
                   f"{results[name]['clips_per_s'] or 0:.0f} clips/s at the end)", ""]
        if rows:
            report += [table(rows, stage), ""]
            if (runs / name / "model").is_dir() and (stage not in best or score(stage, rows[-1]) > best[stage][1]):
                best[stage] = (name, score(stage, rows[-1]))
        else:
            report += ["no curve: " + (runs / name / "log.txt").read_text()[-2000:], ""]
    (out / "sweep.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "sweep.md").write_text("\n".join(report) + "\n")
    with tarfile.open(out / "logs.tar.gz", "w:gz") as tar:
        for name in recipes:
            for file in ("log.txt", "curve.jsonl", "metrics.jsonl", "recipe.json"):
                if (runs / name / file).exists():
                    tar.add(runs / name / file, f"{name}/{file}")
    import torch

    from lavie_model.model_folder import UNET, load_components
    from lavie_model.training.stages import load_unet

    for stage, (name, value) in best.items():
        unet = load_unet(runs / name / "model", stage) if stage == "base" else None
        if unet is None:  # the interpolation folder's own UNet (load_unet would start it from the base again)
            unet = load_components(runs / name / "model", [UNET[stage]], stage)[0][UNET[stage]]
        folder = runs / f"best_{stage}"
        unet.to(torch.float16).save_pretrained(folder)
        (folder / "run.json").write_text(json.dumps({"run": name, "score": value, **results[name]}, indent=2))
        with tarfile.open(out / f"best_{stage}.tar", "w") as tar:
            tar.add(folder, f"best_{stage}")
        print(f"best {stage}: {name} ({value:.3f})", flush=True)
    print((out / "sweep.md").read_text())


if __name__ == "__main__":
    main()
