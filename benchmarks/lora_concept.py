"""Does a LoRA adapter of the base stage teach the shipped tiny LaVie the demo's new concept, as full fine-tuning does?

    python benchmarks/lora_concept.py --home LAVIE_HOME [--rank 8] [--learning-rate 2e-3] [--json out.json]

LAVIE_HOME is one `make demo` left (its curated shards, latents and base-stage run). The demo's corpus holds big
shapes ("a big red circle ..."), a word the shipped tiny LaVie never saw. This trains a rank-RANK adapter of the
base UNet (attention projections; the UNet frozen) from the same start folder, on the same shards and latents,
for the same steps and batch as the demo's full fine-tune (pipelines/demo.py: DEMO_STEPS, batch 8), then scores
three base models on the same prompts and seeds as the demo's evaluation (evaluate.py, DEMO_EVALUATION: 4 samples
per prompt, 20 denoising steps):
    start   the cascade the demo started from (the shipped tiny LaVie)
    full    the demo's full fine-tune (its base run)
    lora    the start model with the adapter
on the new concept (base/new_concept: the share of "a big ..." samples that show a big shape, the 8 prompts of
demo_corpus.CONCEPT_PROMPTS, none of them a caption of the shards) and colour and direction on demo_corpus.PROMPTS, each
a rate with its 95% Wilson interval. Beside them the training time of both runs (their loops, from metrics.jsonl)
and the adapter's size.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def demo_run(home: Path) -> Path:
    runs = sorted((home / "training" / "base").glob("*/run.json"), key=lambda p: p.stat().st_mtime)
    runs = [run.parent for run in runs if json.loads(run.read_text())["lora_rank"] == 0]
    if not runs:
        raise SystemExit(f"no full base-stage run under {home / 'training' / 'base'}: run `make demo` with "
                         "LAVIE_HOME set to it first")
    return runs[-1]


def loop_seconds(run: Path) -> float:
    """The training loop's seconds: the sum over steps of samples / (samples/s)."""
    run_json = json.loads((run / "run.json").read_text())
    samples = run_json["training"]["batch_size"] * run_json["training"]["gradient_accumulation"]
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return sum(samples / line["samples_per_s"] for line in lines)


def train_lora(full: Path, output: Path, rank: int, learning_rate: float) -> float:
    """The adapter run, as the demo's base run but for --lora; its wall seconds."""
    run = json.loads((full / "run.json").read_text())
    command = [sys.executable, "-m", "lavie_model.cli", "train", "--stage", "base", "--preset", run["preset"],
               "--model", run["model"], "--videos", ",".join(s["path"] for s in run["videos"]),
               "--output", str(output), "--max-steps", str(run["max_steps"]), "--lora", str(rank),
               "--seed", str(run["seed"])]
    if run["images"]:
        command += ["--images", ",".join(s["path"] for s in run["images"])]
    if run["latents"]:
        command += ["--latents", run["latents"]]
    overrides = run["overrides"] | {"learning_rate": learning_rate}
    for name, value in overrides.items():
        command += ["--set", f"{name}={value}"]
    started = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT)
    return time.perf_counter() - started


def score(model, lora: Path | None) -> dict:
    """New-concept, colour and direction rates of a model folder's base stage (with an adapter at scale 1)."""
    import torch

    from lavie_model.evaluation.evaluate import EvalSettings, prompt_adherence_base
    from lavie_model.curation.demo_corpus import CONCEPT_PROMPTS, PROMPTS
    from lavie_model.evaluation.shapes import shapes_adherence
    from lavie_model.evaluation.stats import Rate
    from lavie_model.pipelines import LaVieBasePipeline
    from pipelines.demo import DEMO_EVALUATION

    settings = EvalSettings(samples_per_prompt=DEMO_EVALUATION["samples_per_prompt"],
                            base_steps=DEMO_EVALUATION["base_steps"])
    pipe = LaVieBasePipeline.from_pretrained(model)
    if lora is not None:
        pipe.load_lora(lora)
    concept = shapes_adherence(*prompt_adherence_base(pipe, settings, CONCEPT_PROMPTS,
                                                      torch.Generator().manual_seed(settings.seed)))
    fixed = shapes_adherence(*prompt_adherence_base(pipe, settings, PROMPTS,
                                                    torch.Generator().manual_seed(settings.seed)))
    return {"new_concept": Rate(concept["big_hits"], concept["big"]).as_dict(),
            "colour": Rate(fixed["colour_hits"], fixed["n"]).as_dict(),
            "direction": Rate(fixed["direction_hits"], fixed["n"]).as_dict()}


def cell(rate: dict) -> str:
    return f"{rate['value']:.0%} ({rate['hits']}/{rate['n']}, {rate['low']:.0%}-{rate['high']:.0%})"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", required=True, help="the LAVIE_HOME a `make demo` run left")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=2e-3,
                        help="the adapter's (the demo's full run: 5e-4, its 2D weights at 0.3 of it)")
    parser.add_argument("--json", help="write the results here as JSON")
    args = parser.parse_args()
    home = Path(args.home)
    full = demo_run(home)
    output = home / "training" / "base-lora" / f"rank{args.rank}-lr{args.learning_rate:g}"
    wall = None
    if not (output / "lora").is_dir():
        wall = train_lora(full, output, args.rank, args.learning_rate)
    start = json.loads((full / "run.json").read_text())["model"]
    rows = {"start": score(start, None), "full": score(full / "model", None), "lora": score(start, output / "lora")}
    adapter = (output / "lora" / "adapter_model.safetensors").stat().st_size
    unet = sum(p.stat().st_size for p in (Path(start) / "unet_base").glob("*.safetensors"))
    results = {"rank": args.rank, "learning_rate": args.learning_rate, "rates": rows, "full_run": str(full),
               "lora_run": str(output), "loop_s": {"full": loop_seconds(full), "lora": loop_seconds(output)},
               "lora_wall_s": wall, "adapter_bytes": adapter, "unet_bytes": unet}
    print(f"base stage, {json.loads((full / 'run.json').read_text())['max_steps']} steps of batch 8 from the shipped "
          f"tiny LaVie; rank-{args.rank} adapter at learning rate {args.learning_rate:g}")
    print(f"{'model':6} {'new concept (big shapes)':>28} {'colour':>24} {'direction':>24}")
    for name, rates in rows.items():
        print(f"{name:6} {cell(rates['new_concept']):>28} {cell(rates['colour']):>24} {cell(rates['direction']):>24}")
    print(f"training loop: full {results['loop_s']['full']:.0f} s, LoRA {results['loop_s']['lora']:.0f} s; adapter "
          f"{adapter / 1024:.0f} kB against the UNet's {unet / 2**20:.1f} MB ({adapter / unet:.1%})")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
