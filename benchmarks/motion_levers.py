"""Levers of the tiny LaVie's base stage ranked per clip seen: each a continuation of the shipped base UNet with one
change to the recipe, scored by the diffusion classifier on the 96 held-out clips (with 95% intervals) every
`--eval-every` steps and with sampled videos at the first and last probe.

    python benchmarks/motion_levers.py --runs runs/levers [--steps 500] [--parallel 2] [--levers a,b] [--device cpu]
    python benchmarks/motion_levers.py --runs runs/levers --report      # the table of what has run so far

Each lever runs `python -m lavie_model.tiny.tiny_lavie train` in a run folder of its own under --runs, so a rerun
resumes every lever where it stopped (a session's end, a kill) and skips the finished ones. `--parallel N` runs N
levers at once with the CPU's threads shared out (on a 2-core CPU two one-thread runs keep both cores busy).
RUNS/levers.md and levers.json hold the curves: classifier direction against clips seen, the start (the shipped
weights) first; `--card` also writes them into the shipped tiny LaVie's MODEL_CARD.md (Levers) and card.json.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
LEVERS_BEGIN, LEVERS_END = "<!-- levers: written by benchmarks/motion_levers.py --card -->", "<!-- /levers -->"
COMMON = {"lr_2d_scale": 0.3, "warmup_steps": 10, "log_every": 25, "checkpoint_every": 50}  # the shipped base's
LEVERS = {  # name -> MotionRecipe fields over COMMON; what each asks
    "batch-16": {"batch_size": 16},  # the control: many updates per clip
    "batch-32": {"batch_size": 32},  # half the updates per clip
    "text-encoder-1e-4": {"batch_size": 16, "text_lr": 1e-4},  # the frozen random CLIP learns, slowly
    "high-noise-0.5": {"batch_size": 16, "high_noise_fraction": 0.5},  # timesteps where the caption decides motion
    "lr-3e-4": {"batch_size": 16, "learning_rate": 3e-4},  # every rate / 3.3: batch 16's noisier gradients
}


def report(runs: Path, levers: dict) -> str:
    from lavie_model.tiny.tiny_lavie import rate

    results, lines = {}, ["# Levers of the base stage, per clip seen", "",
                          f"From the shipped base UNet ({(runs / 'start.json').read_text().strip()}); classifier "
                          "direction on the 96 held-out clips; sampled direction and colour at the first and last "
                          "probe (DDPM, 25 steps, guidance 7.5). Chance is 25%.", ""]
    for name, fields in levers.items():
        curve_file, metrics_file = runs / name / "curve.jsonl", runs / name / "metrics.jsonl"
        curve = [json.loads(line) for line in curve_file.read_text().splitlines()] if curve_file.exists() else []
        metrics = [json.loads(line) for line in metrics_file.read_text().splitlines()] if metrics_file.exists() else []
        speed = sorted(m["samples_per_s"] for m in metrics)[len(metrics) // 2] if metrics else None
        results[name] = {"fields": COMMON | fields, "curve": curve, "median_clips_per_s": speed}
        lines += [f"## {name}: {json.dumps(fields)}" + (f" ({speed:.1f} clips/s, median)" if speed else ""), ""]
        lines += ["| step | clips | loss | classifier direction | margin | sampled direction | sampled colour |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['step']} | {r['samples']:,} | {r['loss']:.4f} | {rate(r, 'direction_classifier')} | "
                  f"{r['relative_margin']:+.4f} | {rate(r, 'sampled_direction')} | {rate(r, 'sampled_colour')} |"
                  for r in curve] or ["| (not run yet) | | | | | | |"]
        lines.append("")
    (runs / "levers.json").write_text(json.dumps(results, indent=2) + "\n")
    (runs / "levers.md").write_text("\n".join(lines))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", required=True, help="one run folder per lever (resumed on a rerun)")
    parser.add_argument("--levers", help=f"comma-separated names (default: all of {', '.join(LEVERS)})")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--parallel", type=int, default=2, help="levers run at once")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--held-out-clips", type=int, default=96)
    parser.add_argument("--sampling-steps", type=int, default=25)
    parser.add_argument("--report", action="store_true", help="only write the table of what has run")
    parser.add_argument("--card", action="store_true", help="also write the table into the shipped tiny LaVie's "
                        "MODEL_CARD.md (its Levers section) and the curves into its card.json")
    args = parser.parse_args()
    runs = Path(args.runs)
    levers = {name: LEVERS[name] for name in args.levers.split(",")} if args.levers else LEVERS
    start = runs / "start"
    if not args.report:
        runs.mkdir(parents=True, exist_ok=True)
        if not (start / "model_index.json").is_file():
            from lavie_model.tiny.tiny_lavie import cascade_of, lavie_root, weights_identity

            cascade_of(lavie_root(), start)
            (runs / "start.json").write_text(json.dumps({"base": weights_identity(start / "unet_base")}) + "\n")
        threads = str(max(1, (os.cpu_count() or 1) // args.parallel))
        first = runs / "start_scores.json"  # the start weights' step-0 probe: measured once, by the first lever
        waiting, running = list(levers), {}
        while waiting or running:
            for curve in (runs / name / "curve.jsonl" for name in LEVERS):
                if not first.exists() and curve.exists() and curve.read_text().strip():
                    first.write_text(curve.read_text().splitlines()[0] + "\n")
            while waiting and len(running) < (args.parallel if first.exists() else 1):
                name = waiting.pop(0)
                fields = COMMON | levers[name] | {"eval_every": args.eval_every,
                                                  "init_unet": str(start / "unet_base")}
                command = [sys.executable, "-m", "lavie_model.tiny.tiny_lavie", "train", "--stage", "base", "--run",
                           str(runs / name), "--model", str(start), "--device", args.device, "--steps", str(args.steps),
                           "--held-out-clips", str(args.held_out_clips), "--sample-every", str(args.steps),
                           "--sampling-steps", str(args.sampling_steps),
                           "--set", *[f"{k}={json.dumps(v)}" for k, v in fields.items()]]
                if first.exists():
                    command += ["--start-scores", str(first)]
                (runs / name).mkdir(exist_ok=True)
                log = open(runs / name / "log.txt", "a")
                running[name] = (subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                                  env=os.environ | {"OMP_NUM_THREADS": threads}), log, time.time())
                print(f"started {name}", flush=True)
            time.sleep(1)  # a lever that ends, or writes its first probe, is seen within a second
            for name, (proc, log, began) in list(running.items()):
                if proc.poll() is not None:
                    log.close()
                    del running[name]
                    print(f"{name}: exit {proc.returncode} after {time.time() - began:.0f} s", flush=True)
    text = report(runs, levers)
    print(text)
    if args.card:
        write_card(runs, text)


def write_card(runs: Path, text: str) -> None:
    """The levers' table as the card's Levers section (between LEVERS_BEGIN and LEVERS_END), their curves (without
    each clip's scores) in card.json under "levers"."""
    from lavie_model.tiny.tiny_lavie import CARD, lavie_root

    root = lavie_root()
    card = json.loads((root / CARD).read_text())
    results = json.loads((runs / "levers.json").read_text())
    card["levers"] = {name: result | {"curve": [{k: v for k, v in row.items() if k != "per_clip"}
                                               for row in result["curve"]]} for name, result in results.items()}
    (root / CARD).write_text(json.dumps(card, indent=2) + "\n")
    card_md = (root / "MODEL_CARD.md").read_text()
    head, _, rest = card_md.partition(LEVERS_BEGIN)
    _, _, tail = rest.partition(LEVERS_END)
    body = text.split("\n", 2)[2]  # without the table's own heading
    (root / "MODEL_CARD.md").write_text(f"{head}{LEVERS_BEGIN}\n{body}\n{LEVERS_END}{tail}")


if __name__ == "__main__":
    main()
