"""The pretraining and training assets: Pipes around the trainer, in a real Dagster instance, on real
shards."""

import json
import os
import statistics
from pathlib import Path

import dagster as dg
import pandas as pd
import torch

from lavie_model.curation.shards import write_image_shards, write_shards
from lavie_model.report import write_report
from lavie_model.tiny.stand_ins import shipped
from lavie_model.training.report import current_shards, fingerprint
from lavie_model.video import write_video
from pipelines.pretraining import PRETRAINING_ASSETS, autoencoders, t2i_model
from pipelines.training import TRAINING_ASSETS, TrainingSettings, base_model, code_version
from tests.test_training import COLOURS, clean_env, moving_square, tensorboard_scalars


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


def test_pretraining_and_training_assets_train_the_cascade_and_record_metrics_and_shards(tmp_path, monkeypatch):
    """make pretrain's path on a tiny budget: the stand-ins trained from random weights (autoencoders, t2i, upscaler),
    the cascade assembled from them and fine-tuned stage by stage, every step recorded."""
    for name, value in clean_env().items():
        monkeypatch.setenv(name, value)
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    home = curated_home(tmp_path / "home")
    settings = TrainingSettings(lavie_home=str(home), pretrain=True,
                                max_steps={"autoencoders": 2, "t2i": 2, "upscaler": 1, "base": 2, "interpolation": 1,
                                           "vsr": 1},
                                overrides=["image_frames=1", "batch_size=1", "evaluate_every=0"], lora_rank={"vsr": 2})
    with dg.instance_for_test() as instance:
        result = dg.materialize([*PRETRAINING_ASSETS, *TRAINING_ASSETS], instance=instance,
                                resources={"training": settings, "pipes": dg.PipesSubprocessClient()})
        assert result.success
        events = {e.asset_key.path[-1]: e for e in result.get_asset_materialization_events()}
        assert set(events) == {"autoencoders", "t2i_model", "upscaler_model", "base_model", "interpolation_model",
                               "vsr_model"}
        autoencoders = events["autoencoders"].materialization.metadata
        assert autoencoders["trained"].value and autoencoders["heldout_psnr"].value is None  # no validation clip
        check = result.get_asset_check_evaluations()[0]  # no clip of the shapes grammar: nothing to measure
        assert check.check_name == "colours_survive_reconstruction" and check.passed
        assert check.metadata["shape_clips"].value == 0
        t2i = events["t2i_model"].materialization.metadata
        sd = Path(t2i["model_folder"].value)
        assert t2i["steps"].value == 2 and (sd / "unet" / "config.json").is_file()
        assert Path(t2i["started_from"].value) == Path(autoencoders["sd_folder"].value)
        assert "images-b1-000000.tar" in t2i["shards"].value  # stills from the image shards too
        base = events["base_model"].materialization.metadata
        assert base["steps"].value == 2 and base["final_loss"].value > 0
        assert "videos-b1-000000.tar" in base["shards"].value and "images-b1-000000.tar" in base["shards"].value
        videos, images = current_shards(home / "shards" / "videos"), current_shards(home / "shards" / "images")
        assert base["shard_fingerprint"].value == fingerprint(videos, images)
        assert videos["sha256"].iloc[0] in base["shards"].value
        assert base["loss_curve"].value.startswith("![loss](data:image/png;base64,")
        assert base["planned_memory_mb"].value > 0 and base["peak_memory_mb"].value > 0
        # as the instance stored them: each headline figure its own int or float entry (the UI plots them across
        # materializations), equal to what metrics.jsonl holds
        for stage in ("t2i", "base"):
            stored = instance.get_latest_materialization_event(dg.AssetKey(f"{stage}_model")).asset_materialization
            lines = [json.loads(line) for line in
                     (Path(stored.metadata["run_dir"].value) / "metrics.jsonl").read_text().splitlines() if line]
            figures = {"steps": (int, lines[-1]["step"]), "final_loss": (float, lines[-1]["loss"]),
                       "samples_per_s": (float, statistics.median(line["samples_per_s"] for line in lines)),
                       "peak_memory_mb": (float, max(line["memory_mb"] for line in lines)),
                       "skipped_clips": (int, sum(line["skipped_clips"] for line in lines))}
            for key, (kind, value) in figures.items():
                entry = stored.metadata[key]
                assert isinstance(entry, dg.IntMetadataValue if kind is int else dg.FloatMetadataValue), (stage, key)
                assert type(entry.value) is kind, (stage, key)
                assert abs(entry.value - value) <= 1e-9 * max(1.0, abs(value)), (stage, key)
        assert isinstance(base["planned_memory_mb"], dg.FloatMetadataValue)
        # the base stage started from the t2i stand-in inflated: its 2D weights are the stand-in's
        start = Path(base["started_from"].value)
        inflated = json.loads((start / "model_index.json").read_text())
        assert inflated["preset"] == "tiny" and {"unet_base", "unet_interpolation", "unet_vsr"} <= set(inflated)
        from safetensors.torch import load_file

        unet2d, unet3d = (load_file(next((folder).glob("*.safetensors")))
                          for folder in (sd / "unet", start / "unet_base"))
        assert all(torch.equal(unet2d[name], unet3d[name]) for name in unet2d)

        # each stage starts from the folder the previous one exported; the last holds all three
        vsr = events["vsr_model"].materialization.metadata
        final = Path(vsr["model_folder"].value)
        index = json.loads((final / "model_index.json").read_text())
        assert set(index["_training"]) == {"base", "interpolation", "vsr"}
        run = json.loads((Path(base["run_dir"].value) / "run.json").read_text())
        assert [s["sha256"] for s in run["videos"]] == videos["sha256"].tolist()
        # the lora_rank field trained an adapter of the vsr stage alone, and the others fully
        vsr_run = Path(vsr["run_dir"].value)
        assert json.loads((vsr_run / "run.json").read_text())["lora_rank"] == 2 and run["lora_rank"] == 0
        assert (vsr_run / "lora" / "adapter_model.safetensors").is_file()
        assert not (Path(base["run_dir"].value) / "lora").exists()
        runs = {stage: Path(events[f"{stage}_model"].materialization.metadata["run_dir"].value)
                for stage in ("base", "interpolation", "vsr")}
        page = write_report(tmp_path / "report", runs=runs).read_text()
        assert "| base | 2 |" in page and "| interpolation | 1 |" in page and "| vsr | 1 |" in page
        assert all((tmp_path / "report" / "files" / f"loss_{stage}.png").is_file() for stage in runs)


def test_by_default_the_pretraining_assets_pass_the_shipped_or_given_folders_through(tmp_path, stand_ins):
    """Nothing is trained: the tiny preset takes the stand-ins shipped with the project, the paper preset the
    Stable Diffusion and x4 upscaler folders it is given (here folders of the same layout)."""
    home = curated_home(tmp_path / "home")
    for settings, expected in (
            (TrainingSettings(lavie_home=str(home)), shipped("tiny")),
            (TrainingSettings(lavie_home=str(home), preset="paper", sd=str(stand_ins["sd"]),
                              upscaler=str(stand_ins["upscaler"])), stand_ins)):
        with dg.instance_for_test() as instance:
            result = dg.materialize(PRETRAINING_ASSETS, instance=instance,
                                    resources={"training": settings, "pipes": dg.PipesSubprocessClient()})
            assert result.success
            events = {e.asset_key.path[-1]: e.materialization.metadata for e in result.get_asset_materialization_events()}
            assert Path(events["t2i_model"]["model_folder"].value) == expected["sd"]
            assert Path(events["upscaler_model"]["model_folder"].value) == expected["upscaler"]
            assert not events["t2i_model"]["trained"].value and not events["autoencoders"]["trained"].value
            assert not (home / "training").exists()
    with dg.instance_for_test() as instance:
        result = dg.materialize(PRETRAINING_ASSETS, instance=instance, raise_on_error=False, resources={
            "training": TrainingSettings(lavie_home=str(home), preset="paper"), "pipes": dg.PipesSubprocessClient()})
        assert not result.success
        assert "no shipped stand-ins for the paper preset" in str(result.get_step_failure_events()[0].event_specific_data.error.message)


def test_the_tiny_cascade_starts_from_the_shipped_tiny_lavie_unless_told_to_inflate(tmp_path, monkeypatch):
    """As a user fine-tunes the released LaVie: the base stage starts from the shipped tiny LaVie's base and
    interpolation UNets (only super-resolution inflated, marked untrained); `inflate`, `pretrain` or given 2D
    models inflate every video UNet as the paper starts from Stable Diffusion."""
    from safetensors.torch import load_file

    from lavie_model.model_folder import untrained_unets
    from lavie_model.tiny.stand_ins import shipped_lavie

    assert TrainingSettings().video_unets() == shipped_lavie("tiny")
    assert all(TrainingSettings(**given).video_unets() == {} for given in (
        {"inflate": True}, {"pretrain": True}, {"sd": "sd", "upscaler": "x4"}, {"preset": "paper"}))
    for name, value in clean_env().items():
        monkeypatch.setenv(name, value)
    home = curated_home(tmp_path / "home")
    settings = TrainingSettings(lavie_home=str(home), max_steps={"base": 1},
                                overrides=["image_frames=1", "batch_size=1", "evaluate_every=0"])
    with dg.instance_for_test() as instance:
        result = dg.materialize([*PRETRAINING_ASSETS, base_model], instance=instance,
                                resources={"training": settings, "pipes": dg.PipesSubprocessClient()})
        assert result.success
    base = result.asset_materializations_for_node("base_model")[0].metadata
    # the materialization links the run's TensorBoard folder, which holds its one step
    assert Path(base["tensorboard"].value) == Path(base["run_dir"].value) / "tensorboard"
    assert [step for step, _ in tensorboard_scalars(Path(base["run_dir"].value))["train/loss"]] == [1]
    start = Path(base["started_from"].value)
    assert untrained_unets(start) == ["unet_vsr"]
    for stage, folder in shipped_lavie("tiny").items():
        shipped_weights, started = (load_file(next(f.glob("*.safetensors"))) for f in (folder, start / f"unet_{stage}"))
        assert all(torch.equal(shipped_weights[name].float(), started[name]) for name in shipped_weights), stage
    assert untrained_unets(Path(base["model_folder"].value)) == ["unet_vsr"]


def test_training_assets_share_one_pool_and_go_stale_with_the_code():
    assert [asset.op.pool for asset in [*PRETRAINING_ASSETS, *TRAINING_ASSETS]] == ["gpu"] * 6
    assert {asset.group_names_by_key[asset.key] for asset in PRETRAINING_ASSETS} == {"pretraining"}
    assert base_model.code_versions_by_key[base_model.key] == code_version()
    assert t2i_model.code_versions_by_key[t2i_model.key] == code_version()
    assert len(code_version()) == 16


def test_training_fails_clearly_without_shards(tmp_path):
    settings = TrainingSettings(lavie_home=str(tmp_path))
    with dg.instance_for_test() as instance:
        result = dg.materialize([autoencoders], instance=instance, raise_on_error=False,
                                resources={"training": settings, "pipes": dg.PipesSubprocessClient()})
    assert not result.success
    failure = result.get_step_failure_events()[0].event_specific_data.error
    assert "no video shards under" in str(failure.message)
    assert os.path.isdir(tmp_path)


def test_a_run_that_cannot_fit_is_refused_before_anything_launches(tmp_path):
    """lavie plan runs first: at half a GiB per rank (less than the process itself) the base stage is refused,
    naming the settings to change, and no run directory is made."""
    home = curated_home(tmp_path / "home")
    settings = TrainingSettings(lavie_home=str(home), initial_model=str(shipped("tiny")["sd"]), memory_limit_gb=0.5)
    with dg.instance_for_test() as instance:
        result = dg.materialize([base_model], instance=instance, raise_on_error=False,
                                resources={"training": settings, "pipes": dg.PipesSubprocessClient()})
    assert not result.success
    message = str(result.get_step_failure_events()[0].event_specific_data.error.message)
    assert "would not fit, so nothing was launched" in message and "does NOT fit" in message
    assert "set gradient_checkpointing" in message and "lora_rank" in message
    assert not (home / "training").exists()


def test_an_autoencoder_that_loses_the_shape_colours_blocks_the_unets(tmp_path):
    """Held-out clips of the shapes grammar go through the freshly trained vae; one training step leaves it
    far from their colours, so the blocking check fails and t2i_model is not trained on it."""
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
    settings = TrainingSettings(lavie_home=str(home), pretrain=True, max_steps={"autoencoders": 1})
    with dg.instance_for_test() as instance:
        result = dg.materialize([autoencoders, t2i_model], instance=instance, raise_on_error=False,
                                resources={"training": settings, "pipes": dg.PipesSubprocessClient()})
        check = {c.check_name: c for c in result.get_asset_check_evaluations()}["colours_survive_reconstruction"]
        assert not check.passed and check.metadata["shape_clips"].value == 3
        assert check.metadata["colour_accuracy"].value < settings.vae_min_colour
        materialized = {e.asset_key.path[-1] for e in result.get_asset_materialization_events()}
        assert materialized == {"autoencoders"}  # t2i_model did not run on it
