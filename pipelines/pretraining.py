"""Pretraining assets (group `pretraining`): the 2D models the cascade starts from, as LaVie starts from Stable
Diffusion 1.4 and the SD x4 upscaler.

    autoencoders    the autoencoders of both; blocking check: held-out shape clips keep their colour
    t2i_model       the text-to-image model (Stable Diffusion, or its tiny stand-in)
    upscaler_model  the x4 upscaler (or its tiny stand-in)

Where the weights come from (the `training` resource, TrainingSettings): by default the `sd` and `upscaler`
folders pass through unchanged: the real ones at paper scale, and for `tiny` the stand-ins shipped in
lavie_model/pretrained/tiny/, so that make demo starts from pretrained weights as the paper does. With
`pretrain` (tiny; `make pretrain`) they are trained here from random weights: the autoencoders in process, the
two UNets with `lavie train --stage t2i|upscaler` through Pipes (pipelines/training.py: train_stage), each scored on
held-out prompts or stills every `evaluate_every` steps (the learning curve is in the metadata).
"""

from pathlib import Path

import dagster as dg

from lavie_model.tiny.stand_ins import FOLDERS

from . import automation
from .curation import image_shards, video_shards
from .training import TRAINING, TrainingSettings, train_stage, trained_shards

# a fresh deployment makes them once its first batch is curated (pipelines/automation.py)
PRETRAINING = TRAINING | {"group_name": "pretraining", "automation_condition": automation.once_shards_exist()}
COLOUR_CHECK = "colours_survive_reconstruction"


def card_scores(folder: Path) -> dict:
    """The held-out scores recorded beside shipped stand-ins (card.json), flattened for metadata."""
    card = folder.parent / "card.json"
    if not card.is_file():
        return {}
    import json

    scores = json.loads(card.read_text())["scores"]
    return {f"card_{model}_{name}": value for model, values in scores.items() for name, value in values.items()
            if isinstance(value, (int, float))}


@dg.asset(deps=[video_shards, image_shards], **PRETRAINING,
          check_specs=[dg.AssetCheckSpec(COLOUR_CHECK, asset="autoencoders", blocking=True,
                                         description="held-out shape clips keep their colour through the vae")])
def autoencoders(context: dg.AssetExecutionContext, training: TrainingSettings) -> dg.MaterializeResult:
    """The autoencoders of the text-to-image model and of the upscaler. Passed through, or (`pretrain`) trained
    here from random weights on frames of the shards and rendered stills. The blocking check: a base UNet cannot
    draw colours its decoder loses, so the text-to-image model's `vae` must give held-out clips of the shapes
    grammar back in their colour (`vae_min_colour`; passes with nothing to measure: no such clips, or a preset
    whose data is not the shapes grammar)."""
    import torch
    from diffusers import AutoencoderKL

    from lavie_model.config import load_preset
    from lavie_model.evaluation.stand_ins import colour_fidelity
    from lavie_model.training.vae import train_vae

    home = training.home()
    videos, images = trained_shards(home, "t2i")
    video_list, image_list = ",".join(videos["path"]), ",".join(images["path"]) or None
    preset = load_preset(training.preset)
    if training.pretrain:
        from lavie_model.model_folder import init_stand_ins

        settings = preset.get("pretraining", {}).get("autoencoders")
        if settings is None:
            raise dg.Failure(f"the {training.preset} preset has nothing to pretrain (no pretraining section): it "
                             "starts from the Stable Diffusion and x4 upscaler folders, TrainingSettings.sd/.upscaler",
                             allow_retries=False)
        root = home / "models" / f"pretraining-{context.run.run_id}"
        start = init_stand_ins(root / "init", training.preset)
        steps = training.max_steps.get("autoencoders", settings["steps"])
        folders = {}
        # the upscaler's autoencoder keeps the x4 upscaler's fixed latent scale (the preset's vsr.vae)
        for key, size, factor in (("sd", None, None), ("upscaler", tuple(preset["training"]["vsr"]["size"]),
                                                       preset["model"]["vsr"]["vae"]["scaling_factor"])):
            context.log.info(f"training the {FOLDERS[key]} autoencoder, {steps} steps")
            folders[key] = train_vae(start[key], video_list, root / "autoencoders" / FOLDERS[key], "vae",
                                     images=image_list, steps=steps, batch_size=settings["batch_size"],
                                     learning_rate=settings["learning_rate"], preset=training.preset, size=size,
                                     rendered=settings["batch_size"] // 4, scaling_factor=factor,
                                     fidelity=colour_fidelity, log=context.log.info)
    else:
        folders = training.pretrained()
    metadata = {f"{key}_folder": dg.MetadataValue.path(str(path)) for key, path in folders.items()}
    fidelity = {"n": 0, "colour_accuracy": None, "psnr": None}
    if "pretraining" in preset:  # the tiny world: its data is the shapes grammar the check reads
        vae = AutoencoderKL.from_pretrained(folders["sd"] / "vae", torch_dtype=torch.float32).eval()
        size = tuple(n * 2 ** (len(vae.config.block_out_channels) - 1) for n in preset["data"]["latent_size"])
        fidelity = colour_fidelity(vae, videos["path"].tolist(), preset["training"]["validation_percent"],
                                   preset["data"]["num_frames"], size)
    colour = fidelity["colour_accuracy"]
    return dg.MaterializeResult(
        metadata={**metadata, "trained": training.pretrain, "heldout_psnr": fidelity["psnr"],
                  "heldout_shape_clips": fidelity["n"], "heldout_colour_kept": colour},
        check_results=[dg.AssetCheckResult(
            check_name=COLOUR_CHECK, passed=colour is None or colour >= training.vae_min_colour,
            metadata={"shape_clips": fidelity["n"], "colour_accuracy": colour, "required": training.vae_min_colour,
                      "heldout_psnr": fidelity["psnr"]})])


def pretrained_stage(context, training: TrainingSettings, pipes, stage: str, key: str) -> dg.MaterializeResult:
    start = Path(previous_folder(context, key))
    if not training.pretrain:
        return dg.MaterializeResult(metadata={"model_folder": dg.MetadataValue.path(str(start)), "trained": False,
                                              **card_scores(start)})
    return train_stage(context, training, pipes, stage, start)


def previous_folder(context, key: str) -> str:
    """The `sd` or `upscaler` folder of the latest autoencoders materialization."""
    event = context.instance.get_latest_materialization_event(dg.AssetKey("autoencoders"))
    if event is None:
        raise dg.Failure("autoencoders has not been materialized", allow_retries=False)
    return event.asset_materialization.metadata[f"{key}_folder"].value


@dg.asset(deps=[autoencoders, video_shards, image_shards], **PRETRAINING)
def t2i_model(context: dg.AssetExecutionContext, training: TrainingSettings,
              pipes: dg.PipesSubprocessClient) -> dg.MaterializeResult:
    """The text-to-image model the base stage is inflated from: Stable Diffusion, or its tiny stand-in (a diffusers
    UNet2DConditionModel of the preset's `model.unet_2d`, trained on stills: frames of the clips, the images and
    scenes rendered on the fly)."""
    return pretrained_stage(context, training, pipes, "t2i", "sd")


@dg.asset(deps=[autoencoders, video_shards, image_shards], **PRETRAINING)
def upscaler_model(context: dg.AssetExecutionContext, training: TrainingSettings,
                   pipes: dg.PipesSubprocessClient) -> dg.MaterializeResult:
    """The x4 upscaler the super-resolution stage is inflated from, or its tiny stand-in (trained on stills with
    the low-resolution noise augmentation of the x4 upscaler)."""
    return pretrained_stage(context, training, pipes, "upscaler", "upscaler")


PRETRAINING_ASSETS = [autoencoders, t2i_model, upscaler_model]
