"""The tiny LaVie: the base and interpolation stages pretrained long on rendered shapes clips, scored on
combinations never trained on, and shipped beside the stand-ins.

    python -m lavie_model.tiny_lavie train --stage base --run runs/tiny-lavie/base [--steps N] [--device cuda]
        [--set NAME=VALUE ...] [--sample-every N]
    python -m lavie_model.tiny_lavie train --stage interpolation --run runs/tiny-lavie/interpolation \
        --model runs/tiny-lavie/base/model

`train` continues from the shipped stand-ins (the cascade inflated from them, `lavie assemble
--inflate-missing`) or `--model`; rerun, it resumes from the run folder's checkpoint. Every `eval_every` steps
it scores the EMA weights on clips and prompts of scenes.HELD_OUT (12 colour/shape/background combinations x 4
directions x 2 draws = 96, none of them ever rendered for training), each figure a Rate with its 95% interval:
    base           direction by the diffusion classifier (evaluation/direction_score.py, no sampling) and,
                   every `--sample-every` steps, sampled videos' colour and direction (evaluation/shapes.py)
    interpolation  PSNR of the filled-in frames of held-out clips beside holding the nearest keyframe, the pixel
                   blend, the blend of the keyframes' latents decoded, and the VAE round trip of the truth
At the end the run folder holds `model/`: the input folder with the stage's UNet replaced by its EMA weights.
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from .curation.demo_corpus import DIRECTIONS, Scene
from .stand_ins import shipped_cascade
from .training.scenes import HELD_OUT, ClipMotion, render_clips

HELD_OUT_CLIPS = 96  # each of the 12 held-out combinations moving each of 4 ways, twice


def held_out_scenes(count: int = HELD_OUT_CLIPS, seed: int = 1) -> list[Scene]:
    """`count` scenes of HELD_OUT combinations: every combination moving each way, as many times over as `count`
    needs (radius and offset drawn), or a seeded subset of them for fewer than 48."""
    rng = np.random.default_rng(seed)
    draws = max(1, -(-count // (len(HELD_OUT) * len(DIRECTIONS))))
    scenes = [Scene(shape, colour, background, direction, float(rng.uniform(0.12, 0.18)), float(rng.uniform(0.3, 0.7)))
              for colour, shape, background in HELD_OUT for direction in DIRECTIONS for _ in range(draws)]
    return [scenes[i] for i in sorted(rng.choice(len(scenes), count, replace=False))] if count < len(scenes) \
        else scenes


def held_out_clips(num_frames: int, stride: int, size: int, count: int = HELD_OUT_CLIPS,
                   seed: int = 1) -> tuple[torch.Tensor, list[str]]:
    """(count, num_frames, 3, size, size) clips in [0, 1] of held_out_scenes (windows drawn as in training, from
    the corpus's clip lengths) and their captions."""
    scenes = held_out_scenes(count, seed)
    along = ClipMotion().positions(np.random.default_rng(seed + 1), len(scenes), num_frames, stride)
    return render_clips(scenes, along, size=size), [s.caption() for s in scenes]


def base_probe(model_folder, preset: dict, device, sample_every: int = 0, sampling_steps: int = 25,
               guidance: float = 7.5, count: int = HELD_OUT_CLIPS):
    """probe(step, ema_unet) for train_motion: the diffusion classifier's direction on held-out clips, and
    every `sample_every` steps (0: never) colour and direction of sampled videos for the held-out prompts."""
    from .evaluation.direction_score import direction_scores
    from .evaluation.shapes import MIN_SHIFT, shapes_adherence
    from .evaluation.stats import Rate
    from .pipelines import LaVieBasePipeline
    from .training.stages import load_parts

    parts = load_parts(model_folder, "base").to(device, torch.float32)
    data, training = preset["data"], preset["training"]
    size = data["latent_size"][0] * parts.vae_scale
    clips, captions = held_out_clips(data["num_frames"], training["frame_stride"], size, count)
    pipe = LaVieBasePipeline.from_pretrained(model_folder).to(device)
    pipe.set_progress_bar_config(disable=True)

    def probe(step: int, unet: torch.nn.Module, final: bool = False) -> dict:
        unet = unet.to(device)
        scores = direction_scores(unet, parts, clips, captions)
        row = {"direction_classifier": scores["accuracy"].as_dict(), "relative_margin": scores["relative_margin"]}
        if sample_every and (step % sample_every == 0 or final):
            pipe.register_modules(unet_base=unet)
            generator = torch.Generator().manual_seed(0)
            videos = torch.cat([pipe(captions[i:i + 32], num_inference_steps=sampling_steps, guidance_scale=guidance,
                                     generator=generator).frames.float().cpu() for i in range(0, len(captions), 32)])
            adherence = shapes_adherence(videos, captions)
            per = adherence["per_sample"]
            row["sampled_colour"] = Rate(sum(s["colour_ok"] for s in per), len(per)).as_dict()
            row["sampled_direction"] = Rate(sum(s["direction_ok"] for s in per), len(per)).as_dict()
            moved = [s["displacement"] for s in per if s["displacement"] is not None]  # None: no shape found
            row["sampled_moving"] = Rate(sum(d >= MIN_SHIFT for d in moved), len(per)).as_dict()
            row["sampled_displacement"] = sum(moved) / len(moved) if moved else 0.0
        return row

    return probe


def interpolation_probe(model_folder, preset: dict, device, sampling_steps: int = 10, guidance: float = 4.0,
                        count: int = HELD_OUT_CLIPS):
    """probe(step, ema_unet) for train_motion: PSNR of the frames the interpolation UNet fills in between every
    4th frame of held-out clips, beside the four references."""
    from .evaluation.interpolation import interpolation_references
    from .evaluation.metrics import psnr
    from .pipelines import LaVieInterpolationPipeline

    pipe = LaVieInterpolationPipeline.from_pretrained(model_folder).to(device)
    pipe.set_progress_bar_config(disable=True)
    size = preset["data"]["latent_size"][0] * 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    frames = 4 * preset["training"]["interpolation"]["keyframes"] - 3
    clips, captions = held_out_clips(frames, 1, size, count)  # (n, 4K-3, 3, s, s)
    keyframes, between = clips[:, ::4], torch.arange(frames) % 4 != 0  # the given frames; the filled-in ones
    references = {name.split("/")[1]: value for name, value in interpolation_references(pipe.vae, clips).items()}

    def probe(step: int, unet: torch.nn.Module, final: bool = False) -> dict:
        pipe.register_modules(unet_interpolation=unet.to(device))
        generator = torch.Generator().manual_seed(0)
        out = torch.cat([pipe(keyframes[i:i + 32], captions[i:i + 32], num_inference_steps=sampling_steps,
                              guidance_scale=guidance, generator=generator).frames.float().cpu()
                         for i in range(0, len(captions), 32)])
        return {"psnr": psnr(out[:, between], clips[:, between]), **references}

    return probe


def start_model(preset: str) -> Path:
    """The cascade inflated from the shipped stand-ins (temporal layers new), in a temporary folder."""
    from .model_folder import assemble
    from .stand_ins import shipped

    folders = shipped(preset)
    return assemble(Path(tempfile.mkdtemp()) / "cascade", folders["sd"], folders["upscaler"], inflate_missing=True,
                    preset=preset)


def ship(base, interpolation, preset: str = "tiny", destination=None) -> dict[str, Path]:
    """Replace the shipped tiny LaVie's UNets (or those under `destination`) with those of the folders `base` and
    `interpolation` (UNet folders, or run folders holding model/), saved in fp16; the old ones stay until the
    new ones are complete."""
    import shutil

    from .models.unet_3d import UNet3DConditionModel
    from .stand_ins import SHIPPED

    root = Path(destination) if destination else SHIPPED / preset / "lavie"
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".lavie.", dir=root))
    try:
        for stage, source in (("base", Path(base)), ("interpolation", Path(interpolation))):
            if (source / "model" / f"unet_{stage}").is_dir():
                source = source / "model" / f"unet_{stage}"
            unet = UNet3DConditionModel.from_pretrained(source, torch_dtype=torch.float32)
            unet.to(torch.float16).save_pretrained(staging / f"unet_{stage}")
        for stage in ("base", "interpolation"):
            old = root / f".unet_{stage}.previous"
            shutil.rmtree(old, ignore_errors=True)
            if (root / f"unet_{stage}").exists():
                (root / f"unet_{stage}").rename(old)
            (staging / f"unet_{stage}").rename(root / f"unet_{stage}")
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {stage: root / f"unet_{stage}" for stage in ("base", "interpolation")}


def score(model, preset_name: str, device, count: int = HELD_OUT_CLIPS, sampling_steps: int = 25) -> dict:
    """The held-out scores of a cascade folder's base and interpolation stages, as train's probes give them
    after the last step (the base with sampled videos)."""
    from .model_folder import load_components
    from .training.trainer import preset_with_overrides

    preset = preset_with_overrides(preset_name, {})
    unets = load_components(model, ["unet_base", "unet_interpolation"], "interpolation")[0]
    base = base_probe(model, preset, device, sample_every=1, sampling_steps=sampling_steps, count=count)
    return {"base": base(0, unets["unet_base"], final=True),
            "interpolation": interpolation_probe(model, preset, device, count=count)(0, unets["unet_interpolation"])}


def train(args) -> Path:
    from .training.export import replace_component
    from .training.motion import MotionRecipe, train_motion
    from .training.stages import UNET
    from .training.trainer import parse_set, preset_with_overrides

    preset = preset_with_overrides(args.preset, {})
    overrides = parse_set(args.set) | {"stage": args.stage}
    if args.steps:
        overrides["steps"] = args.steps
    if "clip_frames" in overrides:
        overrides["clip_frames"] = tuple(overrides["clip_frames"])
    recipe = MotionRecipe(**overrides)
    model = Path(args.model) if args.model else start_model(args.preset)
    device = torch.device(args.device)
    if args.stage == "base":
        probe = base_probe(model, preset, device, args.sample_every, args.sampling_steps, count=args.held_out_clips)
    else:
        probe = interpolation_probe(model, preset, device, count=args.held_out_clips)
    deadline = time.time() + args.max_seconds if args.max_seconds else None

    def log(message):
        print(f"[{args.stage} {Path(args.run).name}] {message}", flush=True)

    def logged_probe(step, unet):
        row = probe(step, unet, final=step == recipe.steps or (deadline is not None and time.time() > deadline))
        log(f"step {step}: " + json.dumps(row))
        return row

    ema_unet, steps = train_motion(model, args.run, recipe, preset, device, probe=logged_probe, log=log,
                                   deadline=deadline)
    info = {"stage": args.stage, "recipe": "lavie_model.tiny_lavie", "steps": steps}
    return replace_component(model, Path(args.run) / "model", UNET[args.stage], ema_unet, info)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("train", help="pretrain the base or interpolation stage on rendered clips")
    run.add_argument("--stage", choices=("base", "interpolation"), required=True)
    run.add_argument("--run", required=True, help="run folder (resumed when it holds a checkpoint)")
    run.add_argument("--model", help="cascade folder to start from (default: inflated from the shipped stand-ins)")
    run.add_argument("--preset", default="tiny")
    run.add_argument("--steps", type=int, help="training steps (default: the recipe's)")
    run.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    run.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE", help="MotionRecipe fields")
    run.add_argument("--sample-every", type=int, default=0,
                     help="base: sample the held-out prompts every N steps (and after the last)")
    run.add_argument("--held-out-clips", type=int, default=HELD_OUT_CLIPS,
                     help="held-out clips and prompts scored (96: each combination moving each way twice)")
    run.add_argument("--max-seconds", type=float, help="stop (checkpointed and scored) after this long")
    run.add_argument("--sampling-steps", type=int, default=25, help="base: DDPM steps of the sampled videos")
    cascade = commands.add_parser("cascade", help="write the shipped tiny LaVie as a cascade model folder")
    cascade.add_argument("output")
    cascade.add_argument("--preset", default="tiny")
    scored = commands.add_parser("score", help="held-out scores of a cascade folder's base and interpolation")
    scored.add_argument("--model", help="cascade folder (default: the shipped tiny LaVie)")
    scored.add_argument("--preset", default="tiny")
    scored.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    scored.add_argument("--held-out-clips", type=int, default=HELD_OUT_CLIPS)
    scored.add_argument("--sampling-steps", type=int, default=25, help="base: DDPM steps of the sampled videos")
    scored.add_argument("--json", help="write the scores here")
    shipping = commands.add_parser("ship", help="replace the shipped tiny LaVie's UNets (fp16)")
    shipping.add_argument("--base", required=True, help="base UNet folder, or a base run folder")
    shipping.add_argument("--interpolation", required=True, help="interpolation UNet folder, or a run folder")
    shipping.add_argument("--preset", default="tiny")
    args = parser.parse_args(argv)
    if args.command == "train":
        print(train(args))
    elif args.command == "cascade":
        print(shipped_cascade(args.output, args.preset))
    elif args.command == "ship":
        print(ship(args.base, args.interpolation, args.preset))
    else:
        model = Path(args.model) if args.model else shipped_cascade(Path(tempfile.mkdtemp()) / "cascade", args.preset)
        scores = score(model, args.preset, torch.device(args.device), args.held_out_clips, args.sampling_steps)
        text = json.dumps(scores, indent=2)
        if args.json:
            Path(args.json).write_text(text + "\n")
        print(text)


if __name__ == "__main__":
    main()
