"""Learning curve of the base stage on the demo's shapes corpus: prompt adherence against training steps.

    python benchmarks/shapes_learning.py [--sd FOLDER | --model FOLDER] [--videos SHARDS] [--images SHARDS]
        [--steps 600] [--evals 0,150,300,600] [--batch-size 8] [--set NAME=VALUE ...]
        [--guidance 4,7.5] [--samples-per-prompt 12] [--sampling-steps 25] [--preset tiny] [--device cpu]
        [--grid PNG] [--json FILE]

Fine-tunes the base UNet as the demo does, from the text-to-image model inflated to video (by default the
stand-in shipped in lavie_model/pretrained/tiny; `--sd` another Stable Diffusion-layout folder, `--model` a
cascade folder whose base UNet to continue), on the shards with the trainer's own loss, data stream,
optimizer and EMA, in one process without DeepSpeed. At each step count of `--evals` (0: before any step,
the image model's own colour adherence) it samples the fixed prompts of the evaluation
(`lavie_model/evaluation/evaluate.py`, none of them a combination the demo corpus shows) from the EMA
weights and scores them with `shapes_adherence`, each rate with its count and 95% Wilson interval (8 prompts x
12 samples = 96 per point by default). It answers how many steps a recipe needs before the samples
follow their prompts, which the demo itself (one evaluation, after all its steps) cannot; on a GPU
(`--device cuda`) a long curve takes minutes. Preset settings change with `--set` as in `lavie train`
(`--set learning_rate=1e-3 lr_2d_scale=0.1 frame_stride=3`).
"""

import argparse
import json
import tempfile
import time
from pathlib import Path


def main() -> None:
    from lavie_model.curation import store

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sd", help="Stable Diffusion-layout folder to inflate (default: the shipped stand-in)")
    parser.add_argument("--model", help="a cascade model folder whose base UNet to continue instead")
    parser.add_argument("--videos", help="video shards (default: LAVIE_HOME/shards/videos)")
    parser.add_argument("--images", help="image shards (default: LAVIE_HOME/shards/images; 'none' for none)")
    parser.add_argument("--preset", default="tiny", help="tiny or a preset YAML file; --model must be built for it")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--evals", default="0,150,300,600", help="step counts at which to measure adherence")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE", help="preset training settings")
    parser.add_argument("--guidance", default="4,7.5", help="guidance scales to sample with")
    parser.add_argument("--samples-per-prompt", type=int, default=12, help="8 prompts x 12 = 96 samples per point")
    parser.add_argument("--sampling-steps", type=int, default=25)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=1, help="data loader processes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grid", help="PNG of the samples at the last evaluation (last guidance scale)")
    parser.add_argument("--json", help="write the measurements here")
    args = parser.parse_args()

    import torch

    from lavie_model.curation.demo_corpus import PROMPTS
    from lavie_model.evaluation.shapes import shapes_adherence
    from lavie_model.evaluation.stats import Rate
    from lavie_model.model_folder import assemble
    from lavie_model.pipelines import LaVieBasePipeline
    from lavie_model.tiny.stand_ins import shipped
    from lavie_model.training.curve import CurveData, base_curve
    from lavie_model.training.data import expand_shards
    from lavie_model.training.stages import load_parts, load_unet
    from lavie_model.training.trainer import parse_set, preset_with_overrides
    from lavie_model.video import frames_grid

    home = store.lavie_home(None)
    if args.model:
        model = Path(args.model)
    else:
        model = assemble(Path(tempfile.mkdtemp()) / "cascade", args.sd or shipped(args.preset)["sd"],
                         inflate_missing=True, preset=args.preset)
    videos = expand_shards(args.videos or str(home / "shards" / "videos"), "video shards")
    images = None if args.images == "none" else expand_shards(args.images or str(home / "shards" / "images"),
                                                               "image shards")
    preset = preset_with_overrides(args.preset, parse_set(args.set) | {"batch_size": args.batch_size})
    training = preset["training"]
    evals = sorted({int(n) for n in args.evals.split(",")} | {args.steps})
    if min(evals) < 0:
        raise SystemExit("--evals takes step counts from 0")
    device = torch.device(args.device)

    parts = load_parts(model, "base").to(device, torch.float32)
    unet = load_unet(model, "base").to(device)
    pipe = LaVieBasePipeline.from_pretrained(model).to(device)  # its UNet samples with the EMA weights
    pipe.set_progress_bar_config(disable=True)
    prompts = [p for p in PROMPTS for _ in range(args.samples_per_prompt)]
    print(f"model {model}; {len(videos)} video shards; batch {args.batch_size}; "
          f"learning rate {training['learning_rate']}; {len(prompts)} samples per evaluation")
    print("| step | samples seen | guidance | colour | direction | loss (last 10) | s |")
    print("|---|---|---|---|---|---|---|")
    results, started = [], time.perf_counter()

    def probe(step, ema_unet, loss):
        pipe.register_modules(unet_base=ema_unet)
        for guidance in (float(g) for g in args.guidance.split(",")):
            generator = torch.Generator().manual_seed(args.seed)
            videos_out = torch.cat([pipe(prompts[i:i + 16], num_inference_steps=args.sampling_steps,
                                         guidance_scale=guidance, generator=generator).frames.float().cpu()
                                    for i in range(0, len(prompts), 16)])  # (n, f, 3, h, w)
            adherence = shapes_adherence(videos_out, prompts)
            row = {"step": step, "samples": step * args.batch_size, "guidance": guidance,
                   "colour": adherence["colour_accuracy"], "direction": adherence["direction_accuracy"],
                   "colour_rate": Rate(adherence["colour_hits"], adherence["n"]).as_dict(),
                   "direction_rate": Rate(adherence["direction_hits"], adherence["n"]).as_dict(),
                   "loss": 0.0 if step == 0 else loss, "seconds": time.perf_counter() - started}
            results.append(row)
            colour, moved = (Rate(adherence[k], adherence["n"]) for k in ("colour_hits", "direction_hits"))
            print(f"| {step} | {row['samples']} | {guidance:g} | {colour} | {moved} | "
                  f"{row['loss']:.4f} | {row['seconds']:.0f} |", flush=True)
        if args.grid and step == evals[-1]:
            frames_grid(videos_out, args.samples_per_prompt, Path(args.grid))

    base_curve(unet, parts, preset, CurveData(videos, images, workers=args.workers), evals, args.seed, probe, device)
    if args.json:
        Path(args.json).write_text(json.dumps({"model": str(model), "settings": vars(args), "training": training,
                                               "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
