"""`make pretrain`: the tiny world's stand-ins for Stable Diffusion and the x4 upscaler, pretrained and shipped.

Curates the embedded corpus (as make demo does), materializes the pretraining assets with
TrainingSettings(pretrain=True) (both autoencoders, then t2i_model and upscaler_model through DeepSpeed, each
scored on held-out prompts or stills as it trains), then ships the results to lavie_model/pretrained/tiny/
(fp16 safetensors) and writes MODEL_CARD.md beside them with the scores of the shipped files. About 1.5 hours
on 2 CPU cores.

    python -m pipelines.pretrain [--steps NAME=N ...] [--no-ship]
"""

import argparse
import time
from pathlib import Path

import dagster as dg

from lavie_model.config import load_preset
from lavie_model.curation import store
from lavie_model.evaluation.stand_ins import score_stand_ins
from lavie_model.report import decibels, funnel, percent, table
from lavie_model.tiny import stand_ins
from lavie_model.training.report import current_shards

from .console import Console, training_progress
from .demo import curate_corpus
from .pretraining import PRETRAINING_ASSETS
from .training import TrainingSettings

COMMAND = "make pretrain"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", nargs="*", default=[], metavar="NAME=N",
                        help="steps of autoencoders, t2i or upscaler instead of the preset's (quick runs)")
    parser.add_argument("--no-ship", action="store_true", help="train and score, but leave the shipped ones")
    args = parser.parse_args(argv)
    steps = {name: int(value) for name, value in (item.split("=", 1) for item in args.steps)}
    start = time.time()
    home = store.lavie_home()
    console = Console(home / "logs" / "pretrain.log")
    console.print(f"make pretrain: the tiny stand-ins for Stable Diffusion and the x4 upscaler (full log: "
                  f"{console.log_path})")
    instance = dg.DagsterInstance.get()
    notes = []
    with console.step("build and curate the corpus"):
        batches = curate_corpus(instance, home, notes.append)
    for note in notes:
        console.print(f"        {note}")
    resources = {"training": TrainingSettings(pretrain=True, max_steps=steps), "pipes": dg.PipesSubprocessClient()}
    pretraining = load_preset("tiny")["pretraining"]
    metadata = {}
    for asset in PRETRAINING_ASSETS:
        name = asset.key.path[-1]
        stage = name.removesuffix("_model")
        total = steps.get(stage, pretraining[stage]["max_steps" if stage != "autoencoders" else "steps"])
        progress = None if stage == "autoencoders" else training_progress(home, stage, time.time())
        with console.step(f"pretrain {name}", total if progress else None, progress):
            result = dg.materialize([asset], instance=instance, resources=resources)
        metadata[name] = result.asset_materializations_for_node(asset.op.name)[0].metadata
    autoencoders = {key: Path(metadata["autoencoders"][f"{key}_folder"].value) for key in ("sd", "upscaler")}
    runs = {name: Path(metadata[f"{name}_model"]["run_dir"].value) for name in ("t2i", "upscaler")}
    trained = {"sd": Path(metadata["t2i_model"]["model_folder"].value),
               "upscaler": Path(metadata["upscaler_model"]["model_folder"].value)}
    videos = current_shards(home / "shards" / "videos")
    with console.step("ship and score the stand-ins" if not args.no_ship else "score the stand-ins"):
        folders = trained if args.no_ship else stand_ins.ship(trained["sd"], trained["upscaler"])
        scores = score_stand_ins(folders["sd"], folders["upscaler"], videos["path"].tolist())
        counts = [funnel(batch) for batch in batches]
        shards = ", ".join(f"{c['in_shards']} {c['kind']}" for c in counts)
        data = (f"Data: the curated embedded corpus ({shards} in shards; the held-out split and held-out "
                "combinations left out) and stills of the shapes grammar rendered on the fly "
                "(lavie_model/training/scenes.py), never of a held-out combination.")
        card = stand_ins.describe(runs, autoencoders, folders, scores, data, time.time() - start, COMMAND)
        written = stand_ins.write_card(Path(folders["sd"]).parent, card)
    t2i, up, vae = scores["t2i"], scores["upscaler"], scores["autoencoders"]
    console.print("")
    console.print(table([
        {"model": "t2i", "held-out metric": "colour adherence", "value": percent(t2i["colour"]),
         "baseline": "chance 17%", "target": ">= 90%"},
        {"model": "t2i", "held-out metric": "background adherence", "value": percent(t2i["background"]),
         "baseline": "chance 17%", "target": ">= 80%"},
        {"model": "upscaler", "held-out metric": "PSNR", "value": decibels(up["psnr"]),
         "baseline": f"bicubic {decibels(up['psnr_bicubic'])}", "target": "bicubic + 1 dB"},
        {"model": "autoencoder", "held-out metric": "PSNR, validation clips", "value": decibels(vae["vae_psnr"]),
         "baseline": "", "target": ""}]))
    console.print("")
    console.print(f"done in {time.time() - start:.0f} s; model card: {written}")


if __name__ == "__main__":
    main()
