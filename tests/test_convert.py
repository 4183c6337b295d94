"""Conversion of released LaVie checkpoints: parity with the official model, strictness, full-size layout."""

import contextlib
import io
import json
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import TEXT_DIM, randomize_temporal_layers
from official_weights import deterministic_state_dict

from lavie_model import UNet3DConditionModel
from lavie_model.cli import main
from lavie_model.config import base_unet_config, load_preset
from lavie_model.convert import CONVERTERS, CheckpointMismatchError, check_state_dict, convert_base, sd14_unet_config
from lavie_model.models import config_from_2d

FIXTURES = Path(__file__).parent / "fixtures"
MANIFESTS = FIXTURES / "manifests"  # copies of the tensor manifests of the released checkpoints


@pytest.mark.parametrize("stage", ["base", "interpolation"])
def test_matches_the_official_implementation(stage):
    """tests/fixtures/make_official_reference.py recorded the official model's output on these weights."""
    reference = torch.load(FIXTURES / f"official_{stage}_reference.pt", weights_only=True)
    state_dict = deterministic_state_dict(reference["shapes"], reference["seed"])
    model = CONVERTERS[stage](state_dict, reference["unet2d_config"])
    with torch.no_grad():
        output = model(reference["sample"], reference["timestep"], reference["encoder_hidden_states"]).sample
    assert (output - reference["output"]).abs().max() <= 1e-4
    # The official model normalises across frames; a per-frame model does not reproduce it.
    per_frame = UNet3DConditionModel(**dict(model.config, group_norm_across_frames=False)).eval()
    per_frame.load_state_dict(model.state_dict())
    with torch.no_grad():
        other = per_frame(reference["sample"], reference["timestep"], reference["encoder_hidden_states"]).sample
    assert (other - reference["output"]).abs().max() > 1e-2


def official_checkpoint(unet2d, path, wrap_in_ema):
    model = UNet3DConditionModel.from_pretrained_2d(unet2d, group_norm_across_frames=True)
    randomize_temporal_layers(model)
    state_dict = model.state_dict()
    torch.save({"ema": state_dict} if wrap_in_ema else state_dict, path)
    return model.eval()


def run_cli(*args):
    """The `lavie` command in this process (the console script itself is run in test_project.py)."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            returncode = main([str(arg) for arg in args])
        except SystemExit as exit:  # argparse usage errors
            returncode = exit.code
    return subprocess.CompletedProcess(args, returncode, stdout.getvalue(), stderr.getvalue())


def cli_convert(unet2d, checkpoint: Path, output: Path):
    """`lavie convert-checkpoint --stage base` of `checkpoint` into `output`, with unet2d's config."""
    config = checkpoint.with_name("config.json")
    config.write_text(json.dumps(dict(unet2d.config)))
    return run_cli("convert-checkpoint", "--stage", "base", "--input", checkpoint, "--output", output,
                   "--unet-config", config)


@pytest.mark.parametrize("wrap_in_ema", [True, False])
def test_cli_conversion_round_trip(unet2d, tmp_path, wrap_in_ema):
    original = official_checkpoint(unet2d, tmp_path / "lavie_base.pt", wrap_in_ema)
    result = cli_convert(unet2d, tmp_path / "lavie_base.pt", tmp_path / "converted")
    assert result.returncode == 0, result.stderr
    converted = UNet3DConditionModel.from_pretrained(tmp_path / "converted").eval()
    for name, tensor in original.state_dict().items():
        assert torch.equal(converted.state_dict()[name], tensor), name
    sample, text = torch.randn(1, 4, 5, 16, 16), torch.randn(1, 7, TEXT_DIM)
    with torch.no_grad():
        torch.testing.assert_close(converted(sample, 99, text).sample, original(sample, 99, text).sample,
                                   rtol=0, atol=1e-5)


def foreign_layout(state_dict: dict) -> dict:
    """The state dict as the official code saves it with rotary-embedding-torch 0.9.1 (one rotary `freqs`
    tensor shared by every block), with a transposed (non-contiguous) weight, in half precision."""
    foreign = {name: tensor.half() for name, tensor in state_dict.items()}
    shared = next(tensor for name, tensor in foreign.items() if name.endswith("rotary_emb.freqs"))
    foreign |= {name: shared for name in foreign if name.endswith("rotary_emb.freqs")}
    name = "conv_in.weight"
    foreign[name] = foreign[name].flatten(1).t().contiguous().t().unflatten(1, foreign[name].shape[1:])
    assert not foreign[name].is_contiguous()
    return foreign


@pytest.mark.parametrize("wrapping", ["bare", "module prefix beside optimizer state", "state_dict key"])
def test_foreign_checkpoints_with_shared_half_precision_and_wrapped_tensors_convert(unet2d, tmp_path, wrapping):
    """What torch.save keeps of a LaVie UNet saved by other code: tensors sharing storage (safetensors refuses to
    save those), non-contiguous and fp16 tensors, a training wrapper's `module.` prefix, optimizer state beside
    the weights. The converted model holds the checkpoint's values (in float32)."""
    original = official_checkpoint(unet2d, tmp_path / "unused.pt", wrap_in_ema=False)
    foreign = foreign_layout(original.state_dict())
    if wrapping == "module prefix beside optimizer state":
        checkpoint = {"module": {f"module.{k}": v for k, v in foreign.items()},
                      "optimizer": {"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": [{"lr": 1e-5}]},
                      "global_steps": 3}
    elif wrapping == "state_dict key":
        checkpoint = {"state_dict": foreign, "optimizer_states": [{"lr": 1e-5}], "epoch": 1}
    else:
        checkpoint = foreign
    torch.save(checkpoint, tmp_path / "foreign.pt")
    result = cli_convert(unet2d, tmp_path / "foreign.pt", tmp_path / "converted")
    assert result.returncode == 0, result.stderr
    converted = UNet3DConditionModel.from_pretrained(tmp_path / "converted").state_dict()
    for name, tensor in original.state_dict().items():
        assert converted[name].dtype == torch.float32
        assert torch.equal(converted[name], tensor.half().float()), name


def test_a_checkpoint_without_recognisable_weights_says_what_to_do(unet2d, tmp_path):
    weights = UNet3DConditionModel.from_pretrained_2d(unet2d).state_dict()
    torch.save(weights | {"optimizer": {"lr": 1e-5}, "step": 3}, tmp_path / "mixed.pt")
    result = run_cli("convert-checkpoint", "--stage", "base", "--input", tmp_path / "mixed.pt", "--output", tmp_path)
    assert result.returncode == 1
    assert "optimizer, step" in result.stderr and "'ema', 'state_dict', 'module' or 'model'" in result.stderr


def test_strictness_names_the_offending_keys(unet2d, tmp_path):
    good = UNet3DConditionModel.from_pretrained_2d(unet2d).state_dict()
    config = dict(unet2d.config)
    damaged = dict(good)
    del damaged["down_blocks.0.attentions.0.transformer_blocks.0.attn_temp.to_q.weight"]
    damaged["down_blocks.0.attentions.0.transformer_blocks.0.attn_fcross.to_q.weight"] = torch.zeros(3)
    damaged["conv_in.weight"] = torch.zeros(32, 8, 3, 3)
    with pytest.raises(CheckpointMismatchError) as error:
        convert_base(damaged, config)
    message = str(error.value)
    assert "missing" in message and "attn_temp.to_q.weight" in message
    assert "does not have" in message and "attn_fcross.to_q.weight" in message
    assert "conv_in.weight: checkpoint (32, 8, 3, 3) vs model (32, 4, 3, 3)" in message

    torch.save({"ema": damaged}, tmp_path / "damaged.pt")
    result = cli_convert(unet2d, tmp_path / "damaged.pt", tmp_path / "out")
    assert result.returncode == 1 and "attn_fcross.to_q.weight" in result.stderr
    assert not (tmp_path / "out").exists()


def test_cli_errors_on_bad_files(tmp_path):
    result = run_cli("convert-checkpoint", "--stage", "base", "--input", tmp_path / "none.pt", "--output", tmp_path)
    assert result.returncode == 1 and "checkpoint not found" in result.stderr
    (tmp_path / "list.pt").write_bytes(b"")
    torch.save([1, 2], tmp_path / "list.pt")
    result = run_cli("convert-checkpoint", "--stage", "base", "--input", tmp_path / "list.pt", "--output", tmp_path)
    assert result.returncode == 1 and "not a state dict" in result.stderr
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    result = run_cli("convert-checkpoint", "--stage", "base", "--input", tmp_path / "junk.pt", "--output", tmp_path)
    assert result.returncode == 1 and "cannot read checkpoint" in result.stderr
    result = run_cli("convert-checkpoint", "--stage", "upscale", "--input", "x", "--output", tmp_path)
    assert result.returncode == 1 and "unknown stage 'upscale'; supported: base, interpolation" in result.stderr
    result = run_cli("convert-checkpoint", "--stage", "base")
    assert result.returncode == 2 and "--input" in result.stderr


def test_pickled_code_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("executed",))

    torch.save({"ema": {"conv_in.weight": Payload()}}, tmp_path / "evil.pt")
    result = run_cli("convert-checkpoint", "--stage", "base", "--input", tmp_path / "evil.pt", "--output", tmp_path)
    assert result.returncode == 1 and "cannot read checkpoint" in result.stderr
    assert "executed" not in result.stdout


def full_size_model(config):
    with torch.device("meta"):  # shapes only, no memory
        return UNet3DConditionModel(**config)


@pytest.mark.parametrize("stage, settings", [("base", {}), ("interpolation", {"block_design": "interpolation",
                                                                                "in_channels": 8})])
def test_full_size_layout_matches_the_released_checkpoint(stage, settings):
    manifest = json.loads((MANIFESTS / f"lavie_{stage}_state_dict.json").read_text())
    config = config_from_2d(sd14_unet_config(), group_norm_across_frames=True) | settings
    state_dict = full_size_model(config).state_dict()
    check_state_dict(state_dict, manifest["tensors"], "the reference manifest")
    assert len(state_dict) == manifest["num_tensors"]
    assert sum(t.numel() for t in state_dict.values()) == manifest["num_params"]


def test_the_paper_preset_is_the_released_model():
    paper = full_size_model(base_unet_config(load_preset("paper")))
    released = full_size_model(config_from_2d(sd14_unet_config(), group_norm_across_frames=True))
    def settings(model):
        return {k: v for k, v in model.config.items() if not k.startswith("_")}

    assert settings(paper) == settings(released)
    manifest = json.loads((MANIFESTS / "lavie_base_state_dict.json").read_text())
    check_state_dict(paper.state_dict(), manifest["tensors"], "the reference manifest")
