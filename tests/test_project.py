"""The project as a user meets it: the Dagster code location, the instance, the `lavie` command, presets."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lavie_model.config import build_base_unet, load_preset

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture
def dagster_home(tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "dagster_home" / "dagster.yaml", home)
    return home


def test_the_code_location_validates(dagster_home):
    result = subprocess.run(
        [str(BIN / "dagster"), "definitions", "validate", "-w", "workspace.yaml"],
        cwd=ROOT, capture_output=True, text=True, env={**os.environ, "DAGSTER_HOME": str(dagster_home)}, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "All code locations passed validation" in result.stdout + result.stderr


def test_the_instance_uses_local_sqlite_and_no_telemetry(dagster_home, monkeypatch):
    from dagster import DagsterInstance

    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home))
    instance = DagsterInstance.get()
    assert type(instance.run_storage).__name__ == "SqliteRunStorage"
    assert not instance.telemetry_enabled
    assert (dagster_home / "history" / "runs.db").is_file()


def test_the_lavie_console_script_converts_a_checkpoint(unet2d, tmp_path):
    from lavie_model import UNet3DConditionModel

    model = UNet3DConditionModel.from_pretrained_2d(unet2d, group_norm_across_frames=True)
    torch.save({"ema": model.state_dict()}, tmp_path / "lavie base.pt")  # a space in the name
    (tmp_path / "unet config.json").write_text(json.dumps(dict(unet2d.config)))
    result = subprocess.run(
        [str(BIN / "lavie"), "convert-checkpoint", "--stage", "base", "--input", str(tmp_path / "lavie base.pt"),
         "--output", str(tmp_path / "out"), "--unet-config", str(tmp_path / "unet config.json")],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == ["config.json", "diffusion_pytorch_model.safetensors"]
    assert json.loads((tmp_path / "out" / "config.json").read_text())["group_norm_across_frames"] is True


def test_unwritable_output_is_reported(unet2d, tmp_path, capsys):
    from lavie_model import UNet3DConditionModel
    from lavie_model.cli import main

    torch.save(UNet3DConditionModel.from_pretrained_2d(unet2d).state_dict(), tmp_path / "ckpt.pt")
    (tmp_path / "config.json").write_text(json.dumps(dict(unet2d.config)))
    (tmp_path / "a_file").write_text("")
    code = main(["convert-checkpoint", "--stage", "base", "--input", str(tmp_path / "ckpt.pt"),
                 "--output", str(tmp_path / "a_file" / "out"), "--unet-config", str(tmp_path / "config.json")])
    assert code == 1 and "cannot create output folder" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["tiny", "paper"])
def test_presets_load(name):
    preset = load_preset(name)
    assert preset["name"] == name
    assert preset["sampling"]["base"] == {"scheduler": "ddpm", "steps": 50, "guidance_scale": 7.5}


def test_the_tiny_preset_runs_a_training_step():
    preset = load_preset("tiny")
    model = build_base_unet(preset).train()
    frames, (height, width) = preset["data"]["num_frames"], preset["data"]["latent_size"]
    assert frames == 8 and (height, width) == (16, 16)
    for block in model.down_blocks:
        for transformer in getattr(block, "attentions", []):
            for layer in transformer.transformer_blocks:
                assert layer.attn1.to_q.out_features // layer.attn1.heads >= 32
    text_dim = preset["model"]["unet_2d"]["cross_attention_dim"]
    sample = torch.randn(1, 4, frames, height, width)
    loss = model(sample, 500, torch.randn(1, 77, text_dim)).sample.square().mean()
    loss.backward()
    assert torch.isfinite(loss)


def test_bad_presets_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="unknown preset 'huge'"):
        load_preset("huge")
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: broken\nmodel: {unet_2d: {}}\ndata: {num_frames: 8, latent_size: [8, 8], fps: 8}\n"
                      "scheduler: {}\nsampling: {}\n")
    with pytest.raises(ValueError, match="section 'model' lacks group_norm_across_frames"):
        load_preset(str(broken))
    broken.write_text("- just\n- a list\n")
    with pytest.raises(ValueError, match="is not a mapping"):
        load_preset(str(broken))


def test_lavie_model_never_imports_dagster():
    """Every module of lavie_model imports without pulling in Dagster (it belongs to `pipelines` alone)."""
    script = (
        "import importlib, pkgutil, sys, lavie_model\n"
        "for m in pkgutil.walk_packages(lavie_model.__path__, 'lavie_model.'):\n"
        "    importlib.import_module(m.name)\n"
        "print(sorted(n for n in sys.modules if n.split('.')[0] == 'dagster'))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_a_runs_settings_come_back_whole_from_the_train_command_line():
    """The training assets pass a run's TrainSettings to its `lavie train` process as a command line
    (cli.train_arguments); the process reads back the same settings, every field at a non-default value."""
    from lavie_model.cli import build_parser, train_arguments, train_settings
    from lavie_model.training.trainer import TrainSettings

    settings = TrainSettings(
        stage="vsr", model="runs/a model", videos="v-{000..009}.tar", output="runs/out", preset="paper",
        images="images.tar", max_steps=7, resume=True, deepspeed_config="ds.json",
        overrides={"learning_rate": 5e-4, "vsr": {"num_frames": 4}, "note": "5e-4", "flag": False}, seed=3,
        train_2d=True, gradient_checkpointing=True, latents="data/latents", lora_rank=4, lora_alpha=8.0,
        lora_dropout=0.1, lora_targets="temporal", zero_stage=3, offload_optimizer=True, offload_params=True,
        tracking="none")
    assert train_settings(build_parser().parse_args(train_arguments(settings))) == settings
    plain = TrainSettings(stage="base", model="m", videos="v", output="o")
    assert train_arguments(plain) == ["train", "--stage", "base", "--model", "m", "--videos", "v", "--output", "o"]
    assert train_settings(build_parser().parse_args(train_arguments(plain))) == plain
