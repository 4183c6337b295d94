"""The tiny LaVie: the base and interpolation stages pretrained long on rendered shapes clips, scored on
combinations never trained on, and shipped beside the stand-ins.

    python -m lavie_model.tiny.tiny_lavie train --stage base --run runs/tiny-lavie/base [--steps N] [--device cuda]
        [--set NAME=VALUE ...] [--sample-every N]
    python -m lavie_model.tiny.tiny_lavie train --stage interpolation --run runs/tiny-lavie/interpolation \
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

from ..curation.demo_corpus import DIRECTIONS, Scene
from ..training.scenes import HELD_OUT, ClipMotion, render_clips
from .stand_ins import shipped_cascade

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
    from ..evaluation.direction_score import direction_scores
    from ..evaluation.shapes import MIN_SHIFT, shapes_adherence
    from ..evaluation.stats import Rate
    from ..pipelines import LaVieBasePipeline
    from ..training.stages import load_parts

    parts = load_parts(model_folder, "base").to(device, torch.float32)
    data, training = preset["data"], preset["training"]
    size = data["latent_size"][0] * parts.vae_scale
    clips, captions = held_out_clips(data["num_frames"], training["frame_stride"], size, count)
    pipe = LaVieBasePipeline.from_pretrained(model_folder).to(device)
    pipe.set_progress_bar_config(disable=True)

    def probe(step: int, unet: torch.nn.Module, final: bool = False, text_encoder=None) -> dict:
        unet = unet.to(device)
        if text_encoder is not None:  # the recipe trains it (MotionRecipe.text_lr): its EMA weights
            parts.text_encoder = text_encoder.to(device)
            pipe.register_modules(text_encoder=parts.text_encoder)
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
    4th frame of held-out clips, beside the four references (their means, and under `per_clip` each clip's, to
    0.001 dB), and beside the latent blend clip by clip (stats.paired_comparison): `beats_latent_blend`, the clips
    it is ahead on (Rate.as_dict), and `latent_blend_difference`, the mean difference in dB with its 95% interval
    ({"mean", "low", "high"})."""
    from ..evaluation.interpolation import interpolation_references
    from ..evaluation.metrics import psnr_per_video
    from ..evaluation.stats import paired_comparison
    from ..pipelines import LaVieInterpolationPipeline

    pipe = LaVieInterpolationPipeline.from_pretrained(model_folder).to(device)
    pipe.set_progress_bar_config(disable=True)
    size = preset["data"]["latent_size"][0] * 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    frames = 4 * preset["training"]["interpolation"]["keyframes"] - 3
    clips, captions = held_out_clips(frames, 1, size, count)  # (n, 4K-3, 3, s, s)
    keyframes, between = clips[:, ::4], torch.arange(frames) % 4 != 0  # the given frames; the filled-in ones
    references = {name.split("/")[1]: psnrs  # {"psnr_hold": (n,), ...}
                  for name, psnrs in interpolation_references(pipe.vae, clips).items()}

    def probe(step: int, unet: torch.nn.Module, final: bool = False, text_encoder=None) -> dict:
        pipe.register_modules(unet_interpolation=unet.to(device))
        if text_encoder is not None:
            pipe.register_modules(text_encoder=text_encoder.to(device))
        generator = torch.Generator().manual_seed(0)
        out = torch.cat([pipe(keyframes[i:i + 32], captions[i:i + 32], num_inference_steps=sampling_steps,
                              guidance_scale=guidance, generator=generator).frames.float().cpu()
                         for i in range(0, len(captions), 32)])
        per_clip = {"psnr": psnr_per_video(out[:, between], clips[:, between])} | references  # (n,) each
        paired = paired_comparison(per_clip["psnr"], references["psnr_latent_blend"])
        return ({name: float(psnrs.mean()) for name, psnrs in per_clip.items()}
                | {"beats_latent_blend": paired["wins"], "latent_blend_difference": paired["difference"],
                   "per_clip": {name: [round(float(v), 3) for v in psnrs] for name, psnrs in per_clip.items()}})

    return probe


def start_model(preset: str) -> Path:
    """The cascade inflated from the shipped stand-ins (temporal layers new), in a temporary folder."""
    from ..model_folder import assemble
    from .stand_ins import shipped

    folders = shipped(preset)
    return assemble(Path(tempfile.mkdtemp()) / "cascade", folders["sd"], folders["upscaler"], inflate_missing=True,
                    preset=preset)


def ship(base=None, interpolation=None, preset: str = "tiny", destination=None) -> dict[str, Path]:
    """Replace the shipped tiny LaVie's UNets (or those under `destination`) with those of the folders `base` and
    `interpolation` (UNet folders, or run folders holding model/; either may be None: that one stays), saved in
    fp16; the old ones stay until the new ones are complete."""
    import shutil

    from ..models.unet_3d import UNet3DConditionModel
    from .stand_ins import SHIPPED

    root = Path(destination) if destination else SHIPPED / preset / "lavie"
    root.mkdir(parents=True, exist_ok=True)
    sources = {stage: Path(source) for stage, source in (("base", base), ("interpolation", interpolation)) if source}
    staging = Path(tempfile.mkdtemp(prefix=".lavie.", dir=root))
    try:
        for stage, source in sources.items():
            if (source / "model" / f"unet_{stage}").is_dir():
                source = source / "model" / f"unet_{stage}"
            unet = UNet3DConditionModel.from_pretrained(source, torch_dtype=torch.float32)
            unet.to(torch.float16).save_pretrained(staging / f"unet_{stage}")
        for stage in sources:
            old = root / f".unet_{stage}.previous"
            shutil.rmtree(old, ignore_errors=True)
            if (root / f"unet_{stage}").exists():
                (root / f"unet_{stage}").rename(old)
            (staging / f"unet_{stage}").rename(root / f"unet_{stage}")
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {stage: root / f"unet_{stage}" for stage in sources}


def score(model, preset_name: str, device, count: int = HELD_OUT_CLIPS, sampling_steps: int = 25) -> dict:
    """The held-out scores of a cascade folder's base and interpolation stages, as train's probes give them
    after the last step (the base with sampled videos)."""
    from ..model_folder import load_components
    from ..training.trainer import preset_with_overrides

    preset = preset_with_overrides(preset_name, {})
    unets = load_components(model, ["unet_base", "unet_interpolation"], "interpolation")[0]
    base = base_probe(model, preset, device, sample_every=1, sampling_steps=sampling_steps, count=count)
    return {"base": base(0, unets["unet_base"], final=True),
            "interpolation": interpolation_probe(model, preset, device, count=count)(0, unets["unet_interpolation"])}


def train(args) -> Path:
    from ..model_folder import UNET
    from ..training.export import replace_component
    from ..training.motion import MotionRecipe, train_motion
    from ..training.trainer import parse_set, preset_with_overrides

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
    deadline = time.time() + args.max_seconds if args.max_seconds is not None else None

    def log(message):
        print(f"[{args.stage} {Path(args.run).name}] {message}", flush=True)

    start = json.loads(Path(args.start_scores).read_text()) if args.start_scores else None

    def logged_probe(step, unet, text_encoder=None):
        if step == 0 and start is not None:  # the start weights' scores, measured before
            return {k: v for k, v in start.items() if k not in ("step", "samples", "loss")}
        final = step == recipe.steps or (deadline is not None and time.time() > deadline)
        row = probe(step, unet, final=final, text_encoder=text_encoder)
        log(f"step {step}: " + json.dumps({k: v for k, v in row.items() if k != "per_clip"}))
        return row

    ema_unet, steps, text_encoder = train_motion(model, args.run, recipe, preset, device, probe=logged_probe, log=log,
                                                 deadline=deadline, compile=args.compile, autocast=args.bf16)
    info = {"stage": args.stage, "recipe": "lavie_model.tiny.tiny_lavie", "steps": steps}
    output = replace_component(model, Path(args.run) / "model", UNET[args.stage], ema_unet, info)
    if text_encoder is not None:  # trained too (MotionRecipe.text_lr)
        replace_component(output, output, "text_encoder", text_encoder, info)
    return output


# ---------------------------------------------------------------------------------------------- continuations

CARD = "card.json"  # beside MODEL_CARD.md: the leading recipes, the shipped weights' scores, every continuation
CARD_BEGIN, CARD_END = "<!-- continuations: written by tiny_lavie from card.json -->", "<!-- /continuations -->"
SAMPLE_AT_ENDS = 10**9  # base: sample_every that samples videos at a run's first and last probes only
FOREVER = 10**6  # a continuation's step count: it stops at its deadline


def lavie_root(preset: str = "tiny") -> Path:
    from .stand_ins import SHIPPED

    return SHIPPED / preset / "lavie"


def cascade_of(root: Path, output: Path, preset: str = "tiny") -> Path:
    """shipped_cascade, with the base and interpolation UNets of the tiny LaVie folder `root`."""
    from ..model_folder import assemble
    from .stand_ins import shipped

    folders = shipped(preset)
    return assemble(output, folders["sd"], folders["upscaler"], base=root / "unet_base",
                    interpolation=root / "unet_interpolation", inflate_missing=True, preset=preset)


def weights_identity(unet_folder: Path) -> str:
    """The first 12 hex digits of the sha256 of a UNet folder's weights: which shipped file a run continues."""
    import hashlib

    return hashlib.sha256((Path(unet_folder) / "diffusion_pytorch_model.safetensors").read_bytes()).hexdigest()[:12]


def moved_up(stage: str, first: dict, last: dict) -> bool:
    """Whether a continuation's last probe is ahead of its first (the shipped weights, the same probe). Base: the
    classifier's or the sampled direction's interval moved up (its lower end and its value), the other's value
    still within the first's interval or above it. Interpolation: ahead of the latent blend on more held-out clips."""
    if stage == "base":
        def up(key):
            return key in first and key in last and last[key]["low"] > first[key]["low"] \
                and last[key]["value"] > first[key]["value"]

        def held(key):
            return key not in first or key not in last or last[key]["value"] >= first[key]["low"]

        return (up("direction_classifier") and held("sampled_direction")) or \
            (up("sampled_direction") and held("direction_classifier"))
    return last["beats_latent_blend"]["hits"] > first["beats_latent_blend"]["hits"]


def device_name(device: str) -> str:
    import os
    import platform

    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU, {os.cpu_count()} cores ({platform.machine()}, {torch.get_num_threads()} threads)"


def commit() -> str:
    """The checkout's commit, as the card and benchmarks/device_check.py record it."""
    import subprocess

    def git(*args):
        return subprocess.run(["git", *args], cwd=Path(__file__).parent, capture_output=True, text=True,
                              check=True).stdout.strip()

    try:
        head, changed = git("rev-parse", "--short", "HEAD"), git("status", "--porcelain")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (no git checkout)"
    return head + (" with uncommitted changes" if changed else "")


def continue_run(args) -> dict:
    """One stretch of the never-ending motion run: continue the shipped `args.stage` UNet with the card's leading
    recipe (a fresh optimizer) until `args.max_seconds` have passed, resuming this run folder's checkpoint when
    the shipped weights are still those it started from; then record the stretch in the card and, when the last
    probe moved up from the first (`moved_up`), ship the EMA weights. Returns the card's entry for the run."""
    import socket
    from datetime import datetime, timezone

    root = Path(args.shipped) if args.shipped else lavie_root(args.preset)
    card = json.loads((root / CARD).read_text())
    stage = args.stage
    identity = weights_identity(root / f"unet_{stage}")
    run = Path(args.runs) / f"{stage}-{identity}"
    start = run / "start"
    if not (start / "model_index.json").is_file():
        cascade_of(root, start, args.preset)
    recipe = card["leading_recipe"][stage] | {"init_unet": str(start / f"unet_{stage}"), "steps": FOREVER}
    started, began = datetime.now(timezone.utc), time.time()
    train(argparse.Namespace(
        stage=stage, run=str(run / "train"), model=str(start), preset=args.preset, steps=None, device=args.device,
        held_out_clips=args.held_out_clips, max_seconds=args.max_seconds, sampling_steps=args.sampling_steps,
        compile=args.compile, bf16=args.bf16, start_scores=None,
        sample_every=SAMPLE_AT_ENDS if stage == "base" else 0,
        set=[f"{name}={json.dumps(value)}" for name, value in recipe.items()] + list(args.set)))
    stretch = {"device": device_name(args.device), "host": socket.gethostname(), "commit": commit(),
               "started": started.isoformat(timespec="seconds"), "seconds": round(time.time() - began)}
    return record_stretch(root, run.name, stage, identity, run / "train", stretch, args.ship)


def record_stretch(root: Path, name: str, stage: str, identity: str, train_dir: Path, stretch: dict,
                   ship_it: bool) -> dict:
    """Record a stretch of the motion run (`stretch`: device, host, commit, started, seconds) under the card's
    entry `name` (its run folder `train_dir`, started from the shipped weights `identity`), and ship its EMA
    weights (train_dir/model) when `ship_it` and its last probe moved up from its first. Returns the entry."""
    card = json.loads((root / CARD).read_text())
    curve = [{k: v for k, v in json.loads(line).items() if k != "per_clip"}  # the card keeps the figures, the run
             for line in (train_dir / "curve.jsonl").read_text().splitlines()]  # folder each clip's PSNR
    recipe = json.loads((train_dir / "recipe.json").read_text())
    entry = next((c for c in card["continuations"] if c["run"] == name), None)
    if entry is None:
        entry = {"run": name, "stage": stage, "from": identity, "stretches": []}
        card["continuations"].append(entry)
    entry["stretches"].append(stretch | {"to_step": curve[-1]["step"]})
    entry |= {"recipe": {k: v for k, v in recipe.items() if k not in ("init_unet", "steps", "stage")},
              "steps": curve[-1]["step"], "batch_size": recipe["batch_size"],
              "clips": curve[-1]["step"] * recipe["batch_size"], "curve": curve}
    entry["shipped"] = bool(ship_it) and len(curve) > 1 and moved_up(stage, curve[0], curve[-1])
    if entry["shipped"]:
        ship(**{stage: train_dir / "model" / f"unet_{stage}"}, destination=root)
        before = card["shipped"][stage]
        card["shipped"][stage] = {"steps": before["steps"] + entry["steps"], "clips": before["clips"] + entry["clips"],
                                  "from_run": name, "scores": curve[-1]}
    write_card(root, card)
    return entry


def rate(row: dict, key: str) -> str:
    from ..evaluation.stats import Rate

    return str(Rate(row[key]["hits"], row[key]["n"])) if key in row else ""


def status(card: dict) -> list[str]:
    """The shipped weights' held-out scores in two lines, as the README's status and the card's top give them."""
    base, interpolation = card["shipped"]["base"]["scores"], card["shipped"]["interpolation"]["scores"]
    start = card["start_model"]
    return [f"- **Base.** Diffusion classifier {rate(base, 'direction_classifier')} on the held-out clips "
            f"(start model {rate(start, 'direction_classifier')}, chance 25%); sampled direction "
            f"{rate(base, 'sampled_direction')} (start model {rate(start, 'sampled_direction')}), sampled colour "
            f"{rate(base, 'sampled_colour')}. Goal: sampled direction >= 60%.",
            f"- **Interpolation.** {interpolation['psnr']:.2f} dB against the latent blend's "
            f"{interpolation['psnr_latent_blend']:.2f} dB; ahead of it on {rate(interpolation, 'beats_latent_blend')}"
            f" of the held-out clips. Goal: ahead on most clips, the interval above one half."]


def continuations_md(card: dict) -> str:
    lines = [CARD_BEGIN, "", *status(card)]
    if card["continuations"]:
        lines += ["", "| run | stage | stretches (device, seconds) | batch | steps | clips | shipped |",
                  "|---|---|---|---|---|---|---|"]
    for c in card["continuations"]:
        stretches = "; ".join(f"{s['device']}, {s['seconds']} s to step {s['to_step']}" for s in c["stretches"])
        lines.append(f"| {c['run']} | {c['stage']} | {stretches} | {c['batch_size']} | {c['steps']} | {c['clips']:,} "
                     f"| {'yes' if c['shipped'] else 'no'} |")
    from dataclasses import asdict

    from ..training.motion import MotionRecipe

    defaults = asdict(MotionRecipe())
    for c in card["continuations"]:
        changed = ", ".join(f"{k} {v}" for k, v in c["recipe"].items() if v != defaults.get(k) and "every" not in k)
        lines += ["", f"**{c['run']}** ({changed}):", ""]
        if c["stage"] == "base":
            lines += ["| step | clips | loss | classifier direction | margin | sampled colour | sampled direction |",
                      "|---|---|---|---|---|---|---|"]
            lines += [f"| {r['step']} | {r['samples']:,} | {r['loss']:.4f} | {rate(r, 'direction_classifier')} | "
                      f"{r['relative_margin']:+.4f} | {rate(r, 'sampled_colour')} | {rate(r, 'sampled_direction')} |"
                      for r in c["curve"]]
        else:
            lines += ["| step | clips | loss | PSNR | latent blend | ahead of the latent blend |", "|---|---|---|---|---|---|"]
            lines += [f"| {r['step']} | {r['samples']:,} | {r['loss']:.4f} | {r['psnr']:.2f} | "
                      f"{r['psnr_latent_blend']:.2f} | {rate(r, 'beats_latent_blend')} |" for r in c["curve"]]
    return "\n".join(lines + ["", CARD_END])


def write_card(root: Path, card: dict) -> None:
    """card.json, and MODEL_CARD.md's continuations section (between CARD_BEGIN and CARD_END) written from it."""
    (root / CARD).write_text(json.dumps(card, indent=2) + "\n")
    text = (root / "MODEL_CARD.md").read_text()
    head, _, rest = text.partition(CARD_BEGIN)
    _, _, tail = rest.partition(CARD_END)
    (root / "MODEL_CARD.md").write_text(head + continuations_md(card) + tail)


def add_speed_options(parser) -> None:
    """train_motion's speed options, which leave the recipe (and so the resumed checkpoint) unchanged."""
    parser.add_argument("--compile", metavar="MODE", help="torch.compile the UNet's training step: default, "
                        "reduce-overhead (CUDA graphs), max-autotune (benchmarks/motion_speed.py measures them)")
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                        help="bf16 autocast of the training step (default: on a GPU only)")


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
    add_speed_options(run)
    run.add_argument("--start-scores", help="a JSON file of the start weights' probe row (a curve.jsonl row of the "
                     "same probe): used instead of probing at step 0")
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
    more = commands.add_parser("continue", help="one stretch of the motion run: continue the shipped UNet for a "
                               "while, record it in the card, ship it when it moved up (make motion)")
    more.add_argument("--stage", choices=("base", "interpolation"), default="base")
    more.add_argument("--max-seconds", type=float, required=True, help="stop (checkpointed and scored) after this long")
    more.add_argument("--runs", default="runs/motion", help="run folders, one per shipped file continued")
    more.add_argument("--preset", default="tiny")
    more.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    more.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE",
                      help="MotionRecipe fields over the card's leading recipe")
    more.add_argument("--held-out-clips", type=int, default=HELD_OUT_CLIPS)
    more.add_argument("--sampling-steps", type=int, default=25, help="base: DDPM steps of the sampled videos")
    more.add_argument("--shipped", help="the tiny LaVie folder continued, recorded and shipped to (default: "
                                        "lavie_model/pretrained/PRESET/lavie)")
    add_speed_options(more)
    more.add_argument("--no-ship", dest="ship", action="store_false", help="record the stretch, ship nothing")
    shipping = commands.add_parser("ship", help="replace the shipped tiny LaVie's UNets (fp16)")
    shipping.add_argument("--base", help="base UNet folder, or a base run folder (default: keep the shipped one)")
    shipping.add_argument("--interpolation", help="interpolation UNet folder, or a run folder (default: keep it)")
    shipping.add_argument("--preset", default="tiny")
    args = parser.parse_args(argv)
    if args.command == "train":
        print(train(args))
    elif args.command == "cascade":
        print(shipped_cascade(args.output, args.preset))
    elif args.command == "continue":
        entry = continue_run(args)
        print(f"{entry['run']}: step {entry['steps']}, {entry['clips']:,} clips, "
              f"{'shipped' if entry['shipped'] else 'not shipped (did not move up)'}")
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
