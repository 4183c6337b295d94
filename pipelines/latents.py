"""Latent assets (group `latents`): each batch's curated shards encoded once by the frozen VAE and text encoder
the cascade fine-tunes with, so that training reads latents instead of decoding and encoding pixels every step
(lavie_model/training/latents.py).

    base_latent_shards   video batches, the `base` family (base and interpolation stages): the text-to-image
                         model's vae and text_encoder at the base size
    vsr_latent_shards    video batches, the `vsr` family: the x4 upscaler's vae and text_encoder at the VSR size
    image_latent_shards  image batches, the `base` family: the base stage's joint images

They write LAVIE_HOME/latents/FAMILY/BATCH/, one latent shard per curated shard of the same name, each
recording the curated shard's SHA-256 and the encoders' identity; the training assets pass that folder to the
trainer (TrainingSettings.latents), which uses it only where it matches and says so in its log.
Their automation condition (pipelines/automation.py) encodes a batch as soon as its shards are curated.
"""

from pathlib import Path

import dagster as dg
import pandas as pd

from lavie_model.training.trainer import parse_set, preset_with_overrides

from . import automation
from .curation import image_batches, image_shards, video_batches, video_shards
from .metadata import markdown_table
from .training import TrainingSettings, previous_model

# the 2D models whose frozen parts each family uses when the cascade is assembled from them
ENCODED_BY = {"base": "t2i_model", "vsr": "upscaler_model"}
LATENTS = {"group_name": "latents", "pool": "gpu", "kinds": {"pytorch", "webdataset"},
           "automation_condition": automation.latents()}


def encoders_for(context, settings: TrainingSettings, family: str, device: str) -> tuple:
    """The family's encoders as the cascade will hold them: from TrainingSettings.initial_model when set, else
    from the text-to-image or x4 upscaler model the cascade is assembled from: (Encoders, their folder)."""
    from lavie_model.training.latents import COMPONENTS, Encoders

    preset = preset_with_overrides(settings.preset, parse_set(settings.overrides))
    if settings.initial_model:
        folder, names = Path(settings.initial_model), COMPONENTS[family]
    else:
        folder, names = previous_model(context, ENCODED_BY[family]), ("vae", "text_encoder", "tokenizer")
    return Encoders.load(folder, family, preset, names, device), folder


def encode_batch(context, settings: TrainingSettings, family: str, kind: str) -> dg.MaterializeResult:
    import torch

    from lavie_model.training.latents import encode_shards

    home, key = settings.home(), context.partition_key
    source = home / "shards" / f"{kind}s" / key
    shards = sorted(source.glob("*.tar"))
    if not shards:
        raise dg.Failure(f"no {kind} shards under {source}: materialize {kind}_shards for batch {key} first")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    encoders, folder = encoders_for(context, settings, family, device)
    out_dir = home / "latents" / family / key
    context.log.info(f"encoding {len(shards)} {kind} shard(s) of {key} with the {family} encoders of {folder} "
                     f"at {encoders.size[0]} x {encoders.size[1]} on {device}")
    done = [0]

    def progress(n):
        done[0] += n
        if done[0] % 100 == 0:
            context.log.info(f"{done[0]} samples encoded")

    manifests = encode_shards(shards, out_dir, encoders, kind, progress)
    samples = sum(m["samples"] for m in manifests)
    size = sum(m["bytes"] for m in manifests)
    built = [m for m in manifests if not m.get("reused")]
    seconds = sum(m["seconds"] for m in built)
    table = pd.DataFrame([{name: m[name] for name in ("name", "samples", "frames", "bytes", "seconds", "sha256")}
                          | {"source_sha256": m["source"]["sha256"], "reused": bool(m.get("reused"))}
                          for m in manifests])
    return dg.MaterializeResult(metadata={
        "dagster/row_count": samples, "shards": len(manifests), "path": dg.MetadataValue.path(str(out_dir)),
        "encoders_from": dg.MetadataValue.path(str(folder)), "size": f"{encoders.size[0]} x {encoders.size[1]}",
        "vae": manifests[0]["vae"], "text_encoder": manifests[0]["text_encoder"], "device": device,
        "bytes": size, "kb_per_sample": round(size / max(1, samples) / 1024, 1),
        "encoded": sum(m["samples"] for m in built), "seconds": round(seconds, 2),
        "seconds_per_sample": round(seconds / max(1, sum(m["samples"] for m in built)), 4),
        "shard_list": markdown_table(table),
    })


@dg.asset(partitions_def=video_batches, deps=[video_shards, ENCODED_BY["base"]], **LATENTS)
def base_latent_shards(context: dg.AssetExecutionContext, training: TrainingSettings) -> dg.MaterializeResult:
    """A video batch's clips as base-family latents (VAE posterior of every frame, caption embedding) for the
    base and interpolation stages."""
    return encode_batch(context, training, "base", "video")


@dg.asset(partitions_def=video_batches, deps=[video_shards, ENCODED_BY["vsr"]], **LATENTS)
def vsr_latent_shards(context: dg.AssetExecutionContext, training: TrainingSettings) -> dg.MaterializeResult:
    """A video batch's clips as vsr-family latents (the x4 upscaler's VAE posterior and low-resolution frames,
    caption embedding) for the super-resolution stage."""
    return encode_batch(context, training, "vsr", "video")


@dg.asset(partitions_def=image_batches, deps=[image_shards, ENCODED_BY["base"]], **LATENTS)
def image_latent_shards(context: dg.AssetExecutionContext, training: TrainingSettings) -> dg.MaterializeResult:
    """An image batch as base-family latents, the base stage's joint images."""
    return encode_batch(context, training, "base", "image")


VIDEO_LATENT_ASSETS = [base_latent_shards, vsr_latent_shards]
IMAGE_LATENT_ASSETS = [image_latent_shards]
LATENT_ASSETS = VIDEO_LATENT_ASSETS + IMAGE_LATENT_ASSETS
encode_video_latents = dg.define_asset_job("encode_video_latents", selection=VIDEO_LATENT_ASSETS)
encode_image_latents = dg.define_asset_job("encode_image_latents", selection=IMAGE_LATENT_ASSETS)
