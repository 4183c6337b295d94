"""The training assets: Pipes around the deepspeed launcher, in a real Dagster instance, on real shards."""

import json
import os
from pathlib import Path

import dagster as dg
import pandas as pd
import torch

from lavie_model.curation.shards import write_image_shards, write_shards
from lavie_model.report import write_report
from lavie_model.training.report import current_shards, fingerprint
from pipelines.training import (
    TRAINING_ASSETS, TrainingSettings, autoencoders, base_model, code_version, retrain_request, vsr_model,
)
from tests.test_training import COLOURS, clean_env, moving_square
from lavie_model.video import write_video


def curated_home(home: Path) -> Path:
    """LAVIE_HOME with one batch of video shards and one of image shards, as the curation assets leave them."""
    (home / "clips").mkdir(parents=True)
    rows = []
    for i, (name, colour) in enumerate(COLOURS.items()):
        path = write_video(moving_square(colour, 1), home / "clips" / f"c{i}.mp4", fps=8)
        rows.append({"clip_id": f"c{i}", "path": str(path), "frame_count": 16, "caption": f"a {name} square"})
    write_shards(pd.DataFrame(rows), home / "shards" / "videos" / "videos-b1", "videos-b1")
    from PIL import Image

    image = home / "clips" / "red.png"
    Image.new("RGB", (64, 64), (255, 0, 0)).save(image)
    write_image_shards(pd.DataFrame([{"key": "red", "path": str(image), "caption": "red"}]),
                       home / "shards" / "images" / "images-b1", "images-b1")
    return home


def test_training_assets_train_the_cascade_and_record_metrics_and_shards(tmp_path, tiny_folder, monkeypatch):
    for name, value in clean_env().items():
        monkeypatch.setenv(name, value)
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    home = curated_home(tmp_path / "home")
    settings = TrainingSettings(lavie_home=str(home), initial_model=str(tiny_folder),
                                max_steps={"base": 2, "interpolation": 1, "vsr": 1},
                                overrides=["image_frames=1", "batch_size=1"], vae_steps=2)
    with dg.instance_for_test() as instance:
        result = dg.materialize(TRAINING_ASSETS, instance=instance,
                                resources={"training": settings, "pipes": dg.PipesSubprocessClient()})
        assert result.success
        events = {e.asset_key.path[-1]: e for e in result.get_asset_materialization_events()}
        assert set(events) == {"autoencoders", "base_model", "interpolation_model", "vsr_model"}
        autoencoders = events["autoencoders"].materialization.metadata
        assert autoencoders["trained"].value and autoencoders["vae_scaling_factor"].value > 0
        check = result.get_asset_check_evaluations()[0]  # no clip of the shapes grammar: nothing to measure
        assert check.check_name == "colours_survive_reconstruction" and check.passed
        assert check.metadata["shape_clips"].value == 0
        base = events["base_model"].materialization.metadata
        assert base["steps"].value == 2 and base["final_loss"].value > 0
        assert "videos-b1-000000.tar" in base["shards"].value and "images-b1-000000.tar" in base["shards"].value
        videos, images = current_shards(home / "shards" / "videos"), current_shards(home / "shards" / "images")
        assert base["shard_fingerprint"].value == fingerprint(videos, images)
        assert videos["sha256"].iloc[0] in base["shards"].value
        assert base["loss_curve"].value.startswith("![loss](data:image/png;base64,")

        # each stage starts from the folder the previous one exported; the last holds all three
        vsr = events["vsr_model"].materialization.metadata
        final = Path(vsr["model_folder"].value)
        index = json.loads((final / "model_index.json").read_text())
        assert set(index["_training"]) == {"vae", "vsr_vae", "base", "interpolation", "vsr"}
        run = json.loads((Path(base["run_dir"].value) / "run.json").read_text())
        assert [s["sha256"] for s in run["videos"]] == videos["sha256"].tolist()
        runs = {stage: Path(events[f"{stage}_model"].materialization.metadata["run_dir"].value)
                for stage in ("base", "interpolation", "vsr")}
        page = write_report(tmp_path / "report", runs=runs, model=final).read_text()
        assert "| vae | 2 |" in page and "| vsr_vae | 2 |" in page  # the autoencoders' steps
        assert "held-out shape colours kept" in page
        assert "| base | 2 |" in page and "| interpolation | 1 |" in page and "| vsr | 1 |" in page
        assert all((tmp_path / "report" / "files" / f"loss_{stage}.png").is_file() for stage in runs)

        # the schedule skips while the shards are those trained on, and asks for a run once new ones land
        assert isinstance(retrain_request(instance, home), dg.SkipReason)
        more = pd.DataFrame([{"clip_id": "c9", "path": str(home / "clips" / "c0.mp4"), "caption": "again"}])
        write_shards(more, home / "shards" / "videos" / "videos-b2", "videos-b2")
        assert isinstance(retrain_request(instance, home), dg.RunRequest)


def test_training_assets_share_one_pool_and_go_stale_with_the_code():
    assert [asset.op.pool for asset in TRAINING_ASSETS] == ["gpu"] * 4
    assert base_model.code_versions_by_key[base_model.key] == code_version()
    assert vsr_model.code_versions_by_key[vsr_model.key] == code_version()
    assert len(code_version()) == 16


def test_training_fails_clearly_without_shards(tmp_path, tiny_folder):
    settings = TrainingSettings(lavie_home=str(tmp_path), initial_model=str(tiny_folder))
    with dg.instance_for_test() as instance:
        result = dg.materialize([autoencoders], instance=instance, raise_on_error=False,
                                resources={"training": settings, "pipes": dg.PipesSubprocessClient()})
    assert not result.success
    failure = result.get_step_failure_events()[0].event_specific_data.error
    assert "no video shards under" in str(failure.message)
    assert os.path.isdir(tmp_path)


def test_an_autoencoder_that_loses_the_shape_colours_blocks_the_unets(tmp_path, tiny_folder):
    """Held-out clips of the shapes grammar go through the freshly trained vae; one training step leaves it
    far from their colours, so the blocking check fails and base_model is not trained on it."""
    from lavie_model.curation.demo_corpus import Scene, render
    from lavie_model.training.data import is_validation

    home = tmp_path / "home"
    (home / "clips").mkdir(parents=True)
    held_out = [f"v{i}" for i in range(400) if is_validation(f"v{i}", 5)][:3]
    rows = []
    for key, colour in zip(held_out + ["t0", "t1"], ["red", "blue", "yellow", "green", "purple"]):
        scene = Scene("circle", colour, "gray", "right", radius=0.2, offset=0.5)
        frames = torch.from_numpy(render(scene, 16)).permute(0, 3, 1, 2).float() / 255  # (16, 3, 128, 128)
        path = write_video(frames, home / "clips" / f"{key}.mp4", fps=8)
        rows.append({"clip_id": key, "path": str(path), "frame_count": 16, "caption": scene.caption()})
    write_shards(pd.DataFrame(rows), home / "shards" / "videos" / "videos-b1", "videos-b1")
    settings = TrainingSettings(lavie_home=str(home), initial_model=str(tiny_folder), vae_steps=1)
    with dg.instance_for_test() as instance:
        result = dg.materialize([autoencoders, base_model], instance=instance, raise_on_error=False,
                                resources={"training": settings, "pipes": dg.PipesSubprocessClient()})
        check = {c.check_name: c for c in result.get_asset_check_evaluations()}["colours_survive_reconstruction"]
        assert not check.passed and check.metadata["shape_clips"].value == 3
        assert check.metadata["colour_accuracy"].value < settings.vae_min_colour
        materialized = {e.asset_key.path[-1] for e in result.get_asset_materialization_events()}
        assert materialized == {"autoencoders"}  # base_model did not run on it
