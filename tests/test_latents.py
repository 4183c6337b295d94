"""Precomputed latents: latent shards mirror the curated shards, give the trainer the batches the pixels give to
within fp16 rounding, and are read only when made by the trainer's own VAE and text encoder."""

import io
import json
import shutil
import tarfile
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
import torch

from lavie_model.config import load_preset
from lavie_model.curation.lineage import lineage
from lavie_model.training.data import TrainingStream, collate, expand_shards
from lavie_model.training.latents import Encoders, encode_shards, find_latents, weights_id
from lavie_model.training.stages import (
    embed,
    load_parts,
    load_unet,
    low_resolution,
    pixels,
    posterior,
    sample_generators,
    stage_data,
    training_loss,
)
from lavie_model.training.trainer import shard_list
from tests.test_training import clean_env, metrics, run_lavie, train_args


def encode_all(folder, shards, root: Path, vae_nudge: float = 0.0) -> Path:
    """Latent shards of the demo shards under root/FAMILY/(videos|images); `vae_nudge` first shifts a weight of
    each VAE (latents made by another VAE)."""
    preset = load_preset("tiny")
    for family in ("base", "vsr"):
        encoders = Encoders.load(folder, family, preset)
        if vae_nudge:
            with torch.no_grad():
                encoders.vae.encoder.conv_in.bias += vae_nudge
        encode_shards(expand_shards(shards["videos"]), root / family / "videos", encoders, "video")
        if family == "base":
            encode_shards(expand_shards(shards["images"]), root / family / "images", encoders, "image")
    return root


@pytest.fixture(scope="module")
def latents(tiny_folder, demo_shards, tmp_path_factory) -> Path:
    return encode_all(tiny_folder, demo_shards, tmp_path_factory.mktemp("latents"))


def members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def test_latent_shards_mirror_the_curated_shards_and_record_their_encoders(tiny_folder, demo_shards, latents):
    preset = load_preset("tiny")
    for family, kind, channels in (("base", "videos", 4), ("vsr", "videos", 4), ("base", "images", 4)):
        sources = expand_shards(demo_shards[kind])
        made = sorted((latents / family / kind).glob("*.tar"))
        assert [p.name for p in made] == [p.name for p in sources]  # one latent shard per curated shard
        assert not list((latents / family / kind).glob(".*"))  # no partial file left
        encoders = Encoders.load(tiny_folder, family, preset)
        for source, path in zip(sources, made):
            manifest = json.loads(path.with_suffix(".json").read_text())
            curated = json.loads(source.with_suffix(".json").read_text())
            assert manifest["keys"] == curated["keys"] and manifest["samples"] == curated["samples"]
            assert manifest["source"] == {"name": source.name, "sha256": curated["sha256"]}
            assert manifest["vae"] == weights_id(encoders.vae)
            assert manifest["text_encoder"] == weights_id(encoders.text_encoder)
            assert manifest["family"] == family and manifest["size"] == list(encoders.size)
            files = members(path)
            key = curated["keys"][0]
            mean = np.load(io.BytesIO(files[f"{key}.mean.npy"]), allow_pickle=False)
            record = json.loads(files[f"{key}.json"])
            frames = 1 if kind == "images" else record["frame_count"]
            height, width = (n // (2 if family == "base" else 4) for n in encoders.size)
            assert mean.dtype == np.float16 and mean.shape == (frames, channels, height, width)
            assert np.load(io.BytesIO(files[f"{key}.text.npy"])).shape == (77, 64)
            assert (f"{key}.low_res.npy" in files) == (family == "vsr")
            # lineage: the curated record, and the shard the sample was encoded from
            assert record["latent_of"] == {"shard": source.name, "sha256": curated["sha256"]}
            if kind == "videos":
                assert record["clip_id"] == key and record["source_sha256"]
    # encoding again with the same encoders keeps the shards as they are
    before = {p: p.stat().st_mtime_ns for p in latents.rglob("*.tar")}
    again = encode_shards(expand_shards(demo_shards["videos"]), latents / "base" / "videos",
                          Encoders.load(tiny_folder, "base", preset), "video")
    assert all(m["reused"] for m in again)
    assert {p: p.stat().st_mtime_ns for p in latents.rglob("*.tar")} == before


@pytest.mark.parametrize("stage", ["base", "interpolation", "vsr"])
def test_latents_give_the_same_batches_as_pixels_to_within_fp16_rounding(stage, tiny_folder, demo_shards, latents):
    """Same seed: the same samples, frame offsets, images and dropped captions; posteriors, low-resolution
    frames, caption embeddings and the loss equal to within fp16 rounding."""
    preset = load_preset("tiny")
    preset["training"]["text_drop"] = 0.4  # some captions dropped on both paths
    parts = load_parts(tiny_folder, stage)
    data = stage_data(stage, preset, parts.vae_scale)
    family = "vsr" if stage == "vsr" else "base"
    images = stage == "base"
    settings = dict(seed=3, batch_size=6, validation_percent=5, shuffle_buffer=20)
    pixel_stream = TrainingStream(expand_shards(demo_shards["videos"]), data, **settings,
                                  images=expand_shards(demo_shards["images"]) if images else None)
    latent_stream = TrainingStream(expand_shards(str(latents / family / "videos")), data, **settings,
                                   images=expand_shards(str(latents / family / "images")) if images else None,
                                   latents=True)
    a = collate([example for example, _ in zip(pixel_stream, range(6))])
    b = collate([example for example, _ in zip(latent_stream, range(6))])
    assert a["key"] == b["key"] and a["caption"] == b["caption"] and a["skipped"] == b["skipped"]
    assert "" in a["caption"] + sum(a.get("image_captions", []), [])
    if images:
        assert a["image_keys"] == b["image_keys"] and a["image_captions"] == b["image_captions"]
        assert b["image_mean"].shape[1] == data.image_frames
    assert "frames" not in b and b["mean"].shape[1] == data.num_frames

    mean_a, std_a = posterior(parts, a)
    mean_b, std_b = posterior(parts, b)
    for x, y in ((mean_a, mean_b), (std_a, std_b)):
        torch.testing.assert_close(y, x, rtol=1e-3, atol=1e-3 * float(x.abs().max()))
    assert float((mean_a - mean_b).abs().max()) > 0  # they are the stored fp16 values, not a re-encoding
    text_a = embed(parts, a["caption"])
    text_b = embed(parts, b["caption"], b["text"])
    torch.testing.assert_close(text_b, text_a, rtol=1e-3, atol=2e-3)
    if stage == "vsr":
        low = low_resolution(pixels(a).flatten(0, 1)).unflatten(0, a["frames"].shape[:2])
        torch.testing.assert_close(b["low_res"], low, rtol=1e-3, atol=2e-3)
    unet = load_unet(tiny_folder, stage)
    losses = [training_loss(unet, parts, batch, sample_generators(3, 0, 0, 6), snr_gamma=5.0).item() for batch in (a, b)]
    assert losses[1] == pytest.approx(losses[0], rel=2e-3)


def test_find_latents_says_why_latents_cannot_stand_for_the_shards(tiny_folder, demo_shards, latents, tmp_path):
    preset = load_preset("tiny")
    encoders = Encoders.load(tiny_folder, "base", preset)
    identity = encoders.identity()
    videos = shard_list(demo_shards["videos"])
    found, why = find_latents(videos, latents, "base", encoders.size, identity)
    assert found == [latents / "base" / "videos" / s["name"] for s in videos] and "latent shards under" in why
    found, why = find_latents(videos, latents, "base", (64, 64), identity)
    assert found is None and "size [32, 32] (not [64, 64])" in why
    found, why = find_latents(videos, latents, "base", encoders.size, identity | {"vae": "0" * 64})
    assert found is None and "made with another vae" in why
    found, why = find_latents(videos, tmp_path, "base", encoders.size, identity)
    assert found is None and f"{len(videos)} of {len(videos)} shards have no base latents" in why
    changed = [videos[0] | {"sha256": "f" * 64}] + videos[1:]  # a shard re-curated since its latents were made
    found, why = find_latents(changed, latents, "base", encoders.size, identity)
    assert found is None and f"1 of {len(videos)} shards" in why and videos[0]["name"] in why


def test_the_trainer_reads_matching_latents_and_falls_back_to_pixels_saying_why(tiny_folder, demo_shards, latents,
                                                                                 tmp_path):
    """The same run twice: on latents made by its own encoders, and beside latents made by another VAE (so on
    pixels); each says which in its log and run.json, and their losses agree to within fp16 rounding."""
    other = encode_all(tiny_folder, demo_shards, tmp_path / "other", vae_nudge=0.01)
    runs = {}
    for name, folder in (("latents", latents), ("pixels", other)):
        runs[name] = tmp_path / name
        done = run_lavie(train_args("base", tiny_folder, demo_shards["videos"], runs[name], 2, "--images",
                                    demo_shards["images"], "--latents", str(folder)))
        run = json.loads((runs[name] / "run.json").read_text())
        assert run["inputs"] == name
        assert f"training inputs: {name}" in done.stdout
    assert "made with another vae" in json.loads((runs["pixels"] / "run.json").read_text())["why"]
    for a, b in zip(metrics(runs["latents"]), metrics(runs["pixels"])):
        assert a["loss"] == pytest.approx(b["loss"], rel=5e-3)


def test_latent_assets_feed_the_base_stage_and_join_the_lineage(demo_shards, tmp_path, monkeypatch):
    """In a real Dagster instance: the shipped stand-ins, the latent assets of each batch, then base_model reads
    latents; a latent sample's lineage leads to its clip and source."""
    from pipelines.latents import IMAGE_LATENT_ASSETS, VIDEO_LATENT_ASSETS
    from pipelines.pretraining import PRETRAINING_ASSETS
    from pipelines.training import TrainingSettings, base_model

    for name, value in clean_env().items():
        monkeypatch.setenv(name, value)
    home = tmp_path / "home"
    demo_home = Path(demo_shards["videos"]).parent.parent
    shutil.copytree(demo_home, home, symlinks=True)
    settings = TrainingSettings(lavie_home=str(home), max_steps={"base": 1}, overrides=["batch_size=2"])
    resources = {"training": settings, "pipes": dg.PipesSubprocessClient()}
    with dg.instance_for_test() as instance:
        assert dg.materialize(PRETRAINING_ASSETS, instance=instance, resources=resources).success
        for assets, partitions, kind in ((VIDEO_LATENT_ASSETS, "video_batches", "videos"),
                                         (IMAGE_LATENT_ASSETS, "image_batches", "images")):
            for batch in sorted(p.name for p in (home / "shards" / kind).iterdir()):
                instance.add_dynamic_partitions(partitions, [batch])
                result = dg.materialize(assets, partition_key=batch, instance=instance, resources=resources)
                for event in result.get_asset_materialization_events():
                    metadata = event.materialization.metadata
                    curated = sum(json.loads(m.read_text())["samples"]
                                  for m in (home / "shards" / kind / batch).glob("*.json"))
                    assert metadata["dagster/row_count"].value == curated  # every curated sample encoded
                    assert metadata["kb_per_sample"].value > 0 and metadata["seconds"].value > 0
        result = dg.materialize([base_model], instance=instance, resources=resources)
        metadata = result.asset_materializations_for_node("base_model")[0].metadata
        assert metadata["inputs"].value.startswith("latents: ")
    key = json.loads(next((home / "shards" / "videos").glob("*/*.json")).read_text())["keys"][0]
    record = lineage(key, home)
    assert {item["family"] for item in record["latents"]} == {"base", "vsr"}
    assert record["source_sha256"] and record["time_range"]
