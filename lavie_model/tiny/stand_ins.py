"""The pretrained stand-ins the project ships, and shipping new ones (`make pretrain`).

LaVie starts from Stable Diffusion 1.4 and the SD x4 upscaler. The tiny world has no such weights, so the
project pretrains its own (the `pretraining` assets) and ships them here, in the same diffusers layouts:

    lavie_model/pretrained/PRESET/stable-diffusion/  text-to-image stand-in (StableDiffusionPipeline layout)
    lavie_model/pretrained/PRESET/x4-upscaler/       x4 upscaler stand-in (StableDiffusionUpscalePipeline layout)
    lavie_model/pretrained/PRESET/MODEL_CARD.md      recipe, data, held-out scores beside their baselines,
                                                     learning curves, the command that rebuilds them
    lavie_model/pretrained/PRESET/card.json          the same figures as data
    lavie_model/pretrained/PRESET/curves.png         the learning curves
    lavie_model/pretrained/PRESET/lavie/             the tiny LaVie: base and interpolation UNets pretrained on
                                                     rendered clips (tiny_lavie.py beside this file, its MODEL_CARD.md)

Weights ship as fp16 safetensors (the loaders read them as fp32); the scores in the card are measured on the
shipped files.
"""

import json
import shutil
import tempfile
from pathlib import Path

SHIPPED = Path(__file__).parents[1] / "pretrained"  # lavie_model/pretrained: the data stays beside the code
FOLDERS = {"sd": "stable-diffusion", "upscaler": "x4-upscaler"}
WEIGHTS = ("text_encoder", "vae", "unet")  # the components with weights (fp16 when shipped)


def shipped(preset: str = "tiny") -> dict[str, Path]:
    """{"sd": folder, "upscaler": folder} of the stand-ins shipped for a preset; a clear error when absent."""
    root = SHIPPED / preset
    folders = {key: root / name for key, name in FOLDERS.items()}
    missing = [str(path) for path in folders.values() if not (path / "model_index.json").is_file()]
    if missing:
        raise FileNotFoundError(f"no shipped stand-ins for the {preset} preset ({', '.join(missing)} missing): "
                                "run `make pretrain` to build them")
    return folders


def shipped_lavie(preset: str = "tiny") -> dict[str, Path]:
    """{"base": folder, "interpolation": folder}: the shipped tiny LaVie's UNets; a clear error when absent."""
    folders = {stage: SHIPPED / preset / "lavie" / f"unet_{stage}" for stage in ("base", "interpolation")}
    missing = [str(f) for f in folders.values() if not (f / "config.json").is_file()]
    if missing:
        raise FileNotFoundError(f"no shipped tiny LaVie for the {preset} preset ({', '.join(missing)} missing): "
                                "python -m lavie_model.tiny.tiny_lavie train and ship build it")
    return folders


def shipped_cascade(output, preset: str = "tiny") -> Path:
    """A cascade model folder at `output`, as `lavie assemble` builds one from the released LaVie: the stand-ins'
    text encoder, VAE and x4 upscaler, the shipped tiny LaVie's base and interpolation UNets (read as fp32) and a
    super-resolution UNet inflated afresh from the upscaler stand-in (marked untrained)."""
    from ..model_folder import assemble

    folders, unets = shipped(preset), shipped_lavie(preset)
    return assemble(output, folders["sd"], folders["upscaler"], base=unets["base"],
                    interpolation=unets["interpolation"], inflate_missing=True, preset=preset)


def half_copy(source: Path, target: Path) -> None:
    """Copy a stand-in folder, its weighted components re-saved in fp16 safetensors."""
    import torch

    from ..model_folder import component_class

    shutil.copytree(source, target, ignore=shutil.ignore_patterns(*WEIGHTS))
    for name in WEIGHTS:
        component = component_class(name).from_pretrained(source / name, torch_dtype=torch.float32)
        component.to(torch.float16).save_pretrained(target / name)
        for extra in (source / name).glob("*.json"):  # training histories and the like
            if not (target / name / extra.name).exists():
                shutil.copy2(extra, target / name / extra.name)


def ship(sd, upscaler, preset: str = "tiny", destination=None) -> dict[str, Path]:
    """Replace the shipped stand-ins of `preset` with copies of the `sd` and `upscaler` folders (fp16 weights),
    atomically: the old ones stay until the new ones are complete. Returns the new folders."""
    root = Path(destination) if destination else SHIPPED / preset
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".stand-ins.", dir=root))
    try:
        for key, source in (("sd", sd), ("upscaler", upscaler)):
            half_copy(Path(source), staging / FOLDERS[key])
        for name in FOLDERS.values():
            old = root / f".{name}.previous"
            shutil.rmtree(old, ignore_errors=True)
            if (root / name).exists():
                (root / name).rename(old)
            (staging / name).rename(root / name)
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {key: root / name for key, name in FOLDERS.items()}


def folder_size_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file()) / 1e6


def write_card(root: Path, card: dict) -> Path:
    """card.json and MODEL_CARD.md (and curves.png when the card has learning curves) under `root`."""
    from ..report import table as markdown_table
    from ..training.report import curves_png

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / "card.json").write_text(json.dumps(card, indent=2, default=str) + "\n")
    curves = {name: run["curve"] for name, run in card["runs"].items() if run.get("curve")}
    if curves:
        (root / "curves.png").write_bytes(curves_png(curves))
    scores = card["scores"]
    t2i, up, vae = scores["t2i"], scores["upscaler"], scores["autoencoders"]
    lines = [
        f"# Pretrained stand-ins for the `{card['preset']}` preset",
        "",
        "LaVie starts from Stable Diffusion 1.4 and the Stable Diffusion x4 upscaler. The tiny world has no such",
        "weights, so these stand-ins are pretrained by the project's own `pretraining` assets and shipped here, in",
        "the same diffusers layouts (`StableDiffusionPipeline.from_pretrained(\"stable-diffusion\")` and",
        "`StableDiffusionUpscalePipeline.from_pretrained(\"x4-upscaler\")` load them). `make demo` starts its",
        "cascade from them as the paper starts from Stable Diffusion: the base UNet is inflated from",
        "`stable-diffusion/unet`, the super-resolution UNet from `x4-upscaler/unet`.",
        "",
        "## Rebuild",
        "",
        "```bash",
        card["command"],
        "```",
        "",
        f"Built on {card['machine']} in {card['seconds'] / 60:.0f} minutes (commit `{card['commit']}`). The same",
        "command rebuilds and reships them (the `pretraining` assets in the Dagster UI, with",
        "`TrainingSettings(pretrain=True)`, train them without shipping).",
        "",
        "## What they are",
        "",
        markdown_table([{"folder": name, "components": ", ".join(info["components"]),
                         "parameters": f"{info['parameters'] / 1e6:.2f} M", "MB": f"{info['mb']:.1f}"}
                        for name, info in card["folders"].items()]),
        "",
        "Weights are fp16 safetensors (read back as fp32). Both folders share one frozen, randomly initialised",
        "CLIP text encoder (the tokenizer is CLIP's own BPE vocabulary): the stand-in for CLIP ViT-L/14.",
        "",
        "## Recipe",
        "",
        markdown_table([{"model": name, **run["recipe"]} for name, run in card["runs"].items()]),
        "",
        card["data"],
        "",
        "## Scores on what they never trained on",
        "",
        f"Held-out prompts: the {t2i['prompts']} colour/shape/background combinations of "
        "`lavie_model/training/scenes.py` (HELD_OUT), never rendered for training and skipped in the shards.",
        "",
        markdown_table([
            {"model": "t2i", "metric": "colour adherence", "value": f"{t2i['colour']:.1%}",
             "baseline": f"{1 / 6:.1%} (chance, 6 colours)", "target": ">= 90%", "n": t2i["n"]},
            {"model": "t2i", "metric": "background adherence", "value": f"{t2i['background']:.1%}",
             "baseline": f"{1 / 6:.1%} (chance, 6 backgrounds)", "target": ">= 80%", "n": t2i["n"]},
            {"model": "upscaler", "metric": "PSNR, held-out stills", "value": f"{up['psnr']:.2f} dB",
             "baseline": f"{up['psnr_bicubic']:.2f} dB (bicubic)", "target": ">= bicubic + 1 dB", "n": up["n"]},
            {"model": "upscaler", "metric": "PSNR, validation clip frames", "value": f"{up['clips_psnr']:.2f} dB",
             "baseline": f"{up['clips_psnr_bicubic']:.2f} dB (bicubic)", "target": "", "n": up["clips_n"]},
            {"model": "autoencoder (2x)", "metric": "PSNR, validation clips", "value": f"{vae['vae_psnr']:.2f} dB",
             "baseline": "", "target": "", "n": vae["clips"]},
            {"model": "autoencoder (2x)", "metric": "shape colour kept, validation clips",
             "value": "n/a" if vae["vae_colour"] is None else f"{vae['vae_colour']:.1%}", "baseline": "",
             "target": ">= 80% (blocking check)", "n": vae["shape_clips"]},
            {"model": "autoencoder (x4)", "metric": "PSNR, validation clips",
             "value": f"{vae['upscaler_vae_psnr']:.2f} dB", "baseline": "", "target": "", "n": vae["clips"]},
        ]),
        "",
        "Sampling: t2i DDIM, {steps} steps, guidance {t2i_guidance}, {per} samples per prompt; upscaler DDIM, {steps} "
        "steps, guidance {up_guidance}, noise level {noise}, from antialiased x4 smaller copies.".format(
            steps=t2i["steps"], t2i_guidance=t2i["guidance"], per=t2i["samples_per_prompt"],
            up_guidance=up["guidance"], noise=up["noise_level"]),
        "",
        "## Learning curves",
        "",
        "Every `evaluate_every` steps the trainer scores the EMA weights on the held-out prompts (t2i: 4 samples",
        "each) or stills (upscaler). ![learning curves](curves.png)",
        "",
    ]
    for name, curve in curves.items():
        lines += [f"### {name}", "", markdown_table(curve), ""]
    (root / "MODEL_CARD.md").write_text("\n".join(lines))
    return root / "MODEL_CARD.md"


def parameters(folder: Path) -> int:
    """Values in the safetensors files under a folder."""
    import math

    from safetensors import safe_open

    total = 0
    for path in Path(folder).rglob("*.safetensors"):
        with safe_open(path, "pt") as weights:
            total += sum(math.prod(weights.get_slice(name).get_shape()) for name in weights.keys())
    return total


def vae_curve(folder: Path, every: int = 250) -> list[dict]:
    """PSNR of the training batches of an autoencoder against its step, from its training history."""
    import math

    history = json.loads((Path(folder) / "vae" / "training_history.json").read_text())["history"]
    return [{"step": row["step"], "training_psnr": 10 * math.log10(4 / row["mse"])}  # frames in [-1, 1]
            for row in history if row["step"] % every == 0 or row["step"] == len(history)]


def run_recipe(run_dir: Path) -> dict:
    """What a `lavie train` run of a stand-in did, from its run.json, summary.json and metrics.jsonl."""
    from ..training.report import read_metrics

    run = json.loads((Path(run_dir) / "run.json").read_text())
    training, metrics = run["training"], read_metrics(run_dir)
    stills = 1 + training["image_frames"] + training["rendered_frames"]
    per_step = training["batch_size"] * training["gradient_accumulation"] * run["world_size"]
    seconds = float((per_step / metrics["samples_per_s"]).sum())
    return {"steps": int(metrics["step"].max()), "stills per step": per_step * stills,
            "mix per example": f"1 clip frame, {training['image_frames']} image(s), "
                               f"{training['rendered_frames']} rendered",
            "learning rate": training["learning_rate"], "EMA decay": training["ema_decay"],
            "loss": f"velocity, Min-SNR-{training['snr_gamma']:g}" if training["snr_gamma"] else "unweighted",
            "final loss": round(float(metrics["loss"].tail(50).mean()), 4), "minutes": round(seconds / 60, 1)}


def describe(runs: dict[str, Path], autoencoders: dict[str, Path], shipped_folders: dict[str, Path], scores: dict,
             data: str, seconds: float, command: str, preset: str = "tiny") -> dict:
    """The model card's figures: folders, recipes, data, scores and learning curves of a pretraining."""
    import os
    import platform
    import subprocess

    import torch

    from ..config import load_preset
    from ..training.report import probe_curve, read_metrics

    settings = load_preset(preset)["pretraining"]["autoencoders"]
    history = json.loads((Path(autoencoders["sd"]) / "vae" / "training_history.json").read_text())["info"]
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip() or "unknown"
    recipes = {"autoencoders": {"recipe": {
        "steps": history["steps"], "stills per step": settings["batch_size"] * 3 // 2,
        "mix per example": "clip frames, images (1/4), rendered (1/4)", "learning rate": settings["learning_rate"],
        "EMA decay": "none", "loss": "saturation-weighted MSE + 1e-6 KL", "final loss": round(history["final_mse"], 5),
        "minutes": ""}, "curve": vae_curve(autoencoders["sd"])}}
    for name, run in runs.items():
        recipes[name] = {"recipe": run_recipe(run), "curve": probe_curve(read_metrics(run))}
    folders = {}
    for key, folder in shipped_folders.items():
        components = sorted(p.name for p in Path(folder).iterdir() if p.is_dir())
        folders[FOLDERS[key]] = {"components": components, "parameters": parameters(folder),
                                      "mb": folder_size_mb(folder)}
    return {"preset": preset, "command": command, "commit": commit, "seconds": seconds,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, "
                       + (torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"), "folders": folders,
            "runs": recipes, "data": data, "scores": scores}
