"""The video super-resolution UNet: official parity, released layout, inflation, training paths, conversion."""

import json
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel
from official_weights import deterministic_state_dict
from test_convert import run_cli

from lavie_model import UNet3DVSRModel
from lavie_model.convert import CheckpointMismatchError, check_state_dict, convert_vsr, sd_x4_upscaler_unet_config
from lavie_model.models import vsr_config_from_2d
from lavie_model.models.unet_3d_vsr import is_temporal
from lavie_model.models.unet_3d_vsr_blocks import TemporalModule

FIXTURES = Path(__file__).parent / "fixtures"
REFERENCE = torch.load(FIXTURES / "official_vsr_reference.pt", weights_only=True)
TINY_X4_CONFIG = REFERENCE["unet2d_config"]  # x4-upscaler-shaped: 7 input channels, cross-only blocks, noise level
TEXT_DIM = TINY_X4_CONFIG["cross_attention_dim"]
# The layers that start at zero; training gives them weights.
ZERO_INITIALISED = (".attn_temporal.to_out.0.", ".resblock_temporal.conv2.", ".shift_conv.")


@pytest.fixture(scope="module")
def unet2d():
    torch.manual_seed(0)
    return UNet2DConditionModel(**TINY_X4_CONFIG).eval()


def trained(model: UNet3DVSRModel, seed: int = 0) -> UNet3DVSRModel:
    """Give the zero-initialised temporal layers weights, as training would."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if any(part in name for part in ZERO_INITIALISED):
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    return model


@pytest.fixture
def vsr(unet2d):
    return trained(UNet3DVSRModel.from_pretrained_2d(unet2d, group_norm_across_frames=True)).eval()


def inputs(batch=2, frames=4, height=8, width=12, seed=0):
    generator = torch.Generator().manual_seed(seed)
    sample = torch.randn(batch, 7, frames, height, width, generator=generator)  # latents + low-res RGB
    text = torch.randn(batch, 5, TEXT_DIM, generator=generator)
    return sample, torch.tensor([17, 640][:batch]), text, torch.tensor([20, 350][:batch])


def frames_through_2d(unet2d, sample, timestep, text, noise_level):
    """Run the 2D upscaler UNet on every frame as an image: (b, 7, f, h, w) -> (b, 4, f, h, w)."""
    b, c, f, h, w = sample.shape
    images = sample.transpose(1, 2).reshape(b * f, c, h, w)
    out = unet2d(images, timestep.repeat_interleave(f), text.repeat_interleave(f, dim=0),
                 class_labels=noise_level.repeat_interleave(f)).sample
    return out.reshape(b, f, -1, h, w).transpose(1, 2)


def test_matches_the_official_implementation():
    """tests/fixtures/make_official_vsr_reference.py recorded the official model's output on these weights."""
    state_dict = deterministic_state_dict(REFERENCE["shapes"], REFERENCE["seed"])
    model = convert_vsr(state_dict, TINY_X4_CONFIG)
    args = REFERENCE["sample"], REFERENCE["timestep"], REFERENCE["encoder_hidden_states"], REFERENCE["class_labels"]
    with torch.no_grad():
        output = model(*args).sample
    assert (output - REFERENCE["output"]).abs().max() <= 1e-4
    # The official model normalises its ResNets across frames; a per-frame model does not reproduce it.
    per_frame = UNet3DVSRModel(**dict(model.config, group_norm_across_frames=False)).eval()
    per_frame.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert (per_frame(*args).sample - REFERENCE["output"]).abs().max() > 1e-2


def test_full_size_layout_is_the_released_checkpoint_and_holds_the_x4_upscaler():
    manifest = json.loads((FIXTURES / "manifests" / "lavie_vsr_state_dict.json").read_text())
    with torch.device("meta"):  # shapes only, no memory
        model = UNet3DVSRModel(**vsr_config_from_2d(sd_x4_upscaler_unet_config(), group_norm_across_frames=True))
        upscaler = UNet2DConditionModel(**sd_x4_upscaler_unet_config())
    state_dict = model.state_dict()
    check_state_dict(state_dict, manifest["tensors"], "the reference manifest")
    assert len(state_dict) == manifest["num_tensors"] == 1158
    assert sum(t.numel() for t in state_dict.values()) == manifest["num_params"]
    # Every upscaler tensor has its place; everything else is temporal.
    weights_2d = upscaler.state_dict()
    assert all(state_dict[k].shape == v.shape for k, v in weights_2d.items())
    assert all(is_temporal(k) for k in state_dict.keys() - weights_2d.keys())


@pytest.mark.parametrize("frames", [1, 3, 6])
def test_fresh_inflation_reproduces_the_2d_upscaler_frame_by_frame(unet2d, frames):
    model = UNet3DVSRModel.from_pretrained_2d(unet2d).eval()
    sample, timestep, text, noise_level = inputs(frames=frames)
    with torch.no_grad():
        video = model(sample, timestep, text, noise_level).sample
        reference = frames_through_2d(unet2d, sample, timestep, text, noise_level)
    assert video.shape == (2, 4, frames, 8, 12)
    assert (video - reference).abs().max() <= 1e-5


def test_inflation_from_a_folder_and_its_strictness(unet2d, tmp_path):
    unet2d.save_pretrained(tmp_path / "unet")
    model = UNet3DVSRModel.from_pretrained_2d(str(tmp_path), subfolder="unet")
    for name, tensor in unet2d.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name
    new = model.state_dict().keys() - unet2d.state_dict().keys()
    assert {name.split(".")[0] for name in new} == {
        "down_blocks", "mid_block", "up_blocks", "down_temporal_blocks", "mid_temporal_block", "up_temporal_blocks",
        "temporal_rotary_emb"}
    assert all(is_temporal(name) for name in new)

    with pytest.raises(TypeError, match="UNet2DConditionModel"):
        UNet3DVSRModel.from_pretrained_2d(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="class_embed_type='timestep'"):
        vsr_config_from_2d(dict(unet2d.config, class_embed_type="timestep"))
    odd = UNet2DConditionModel(**TINY_X4_CONFIG)
    odd.register_buffer("extra_table", torch.zeros(3))
    with pytest.raises(ValueError, match=r"no 3D place \['extra_table'\]"):
        UNet3DVSRModel.from_pretrained_2d(odd)


def test_temporal_layers_mix_frames_and_the_noise_level_matters(unet2d, vsr):
    sample, timestep, text, noise_level = inputs(frames=5)
    with torch.no_grad():
        video = vsr(sample, timestep, text, noise_level).sample
        perturbed = sample.clone()
        perturbed[:, :, 0] += 1.0
        moved = vsr(perturbed, timestep, text, noise_level).sample
        other_level = vsr(sample, timestep, text, 100).sample
    assert (video - frames_through_2d(unet2d, sample, timestep, text, noise_level)).abs().max() > 1e-2
    assert (moved[:, :, 4] - video[:, :, 4]).abs().max() > 1e-3  # frame 0 reaches frame 4
    assert (other_level - video).abs().max() > 1e-3


def test_bad_inputs_are_named(vsr):
    sample, timestep, text, noise_level = inputs(frames=2)
    with pytest.raises(ValueError, match=r"\(batch, 7, frames, height, width\)"):
        vsr(sample[:, :4], timestep, text, noise_level)
    with pytest.raises(ValueError, match="pass class_labels"):
        vsr(sample, timestep, text)
    with pytest.raises(ValueError, match=r"noise levels in 0\.\.999"):
        vsr(sample, timestep, text, torch.tensor([20, 1000]))
    with pytest.raises(ValueError, match="encoder_hidden_states"):
        vsr(sample, timestep, text[:1], noise_level)


def test_gradient_checkpointing_gives_the_same_gradients(vsr):
    sample, timestep, text, noise_level = inputs(frames=3)
    vsr.train()

    def grads():
        vsr.zero_grad()
        vsr(sample, timestep, text, noise_level).sample.square().mean().backward()
        return {n: p.grad.clone() for n, p in vsr.named_parameters() if p.grad is not None}

    plain = grads()
    vsr.enable_gradient_checkpointing()
    assert all(m.gradient_checkpointing for m in vsr.modules() if isinstance(m, TemporalModule))
    checkpointed = grads()
    vsr.disable_gradient_checkpointing()
    assert plain.keys() == checkpointed.keys()
    for layer in (".attn_temporal.to_q.", ".resblock_temporal.conv1.", ".resblocks_3d_t.", ".resblocks_3d_s."):
        assert any(layer in name for name in plain), layer  # every kind of temporal layer trains
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-4, atol=1e-6, msg=name)


def test_freezing_the_2d_weights_trains_only_the_temporal_layers(unet2d, vsr):
    trainable = vsr.freeze_2d_weights()
    assert set(trainable) == {n for n, _ in vsr.named_parameters()} - unet2d.state_dict().keys()
    assert all(is_temporal(name) for name in trainable)
    sample, timestep, text, noise_level = inputs(frames=3)
    vsr.train()(sample, timestep, text, noise_level).sample.square().mean().backward()
    for name, param in vsr.named_parameters():
        assert param.requires_grad == (name in trainable), name
        if name not in trainable:
            assert param.grad is None, name
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in vsr.parameters())


def test_bf16_forward_and_backward(vsr):
    model = vsr.to(torch.bfloat16).train()
    freqs = {n: b for n, b in model.named_buffers() if n.endswith("rotary_emb.freqs")}
    assert freqs and all(b.dtype == torch.float32 for b in freqs.values())  # positions keep full precision
    # 5 frames, the temporal convolutions' kernel: with fewer, torch 2.14's CPU bf16 conv3d returns NaN weight
    # gradients for a (5, 1, 1) kernel padded by 2 (a oneDNN fault; fp32 is exact, and training uses bf16 on CUDA only)
    sample, timestep, text, noise_level = inputs(frames=5)
    out = model(sample.bfloat16(), timestep, text.bfloat16(), noise_level).sample
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    out.float().square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_save_and_load_round_trip(vsr, tmp_path):
    vsr.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    loaded = UNet3DVSRModel.from_pretrained(tmp_path).eval()
    def settings(model):
        return {k: v for k, v in model.config.items() if not k.startswith("_")}

    assert settings(loaded) == settings(vsr)
    args = inputs(frames=3)
    with torch.no_grad():
        assert torch.equal(loaded(*args).sample, vsr(*args).sample)
    half = UNet3DVSRModel.from_pretrained(tmp_path, torch_dtype=torch.bfloat16)
    assert half.conv_in.weight.dtype == torch.bfloat16
    assert all(b.dtype == torch.float32 for n, b in half.named_buffers() if n.endswith("rotary_emb.freqs"))


def test_cli_conversion_round_trip(vsr, tmp_path):
    torch.save({"ema": vsr.state_dict()}, tmp_path / "lavie_vsr.pt")
    (tmp_path / "config.json").write_text(json.dumps(TINY_X4_CONFIG))
    result = run_cli("convert-checkpoint", "--stage", "vsr", "--input", tmp_path / "lavie_vsr.pt",
                     "--output", tmp_path / "converted", "--unet-config", tmp_path / "config.json")
    assert result.returncode == 0, result.stderr
    converted = UNet3DVSRModel.from_pretrained(tmp_path / "converted").eval()
    assert converted.config.group_norm_across_frames
    args = inputs(frames=3)
    with torch.no_grad():
        torch.testing.assert_close(converted(*args).sample, vsr(*args).sample, rtol=0, atol=1e-5)


def test_strictness_names_the_offending_keys(vsr, tmp_path):
    damaged = dict(vsr.state_dict())
    del damaged["mid_temporal_block.shift_conv.weight"]
    damaged["mid_temporal_block.attentions.0.norm.weight"] = torch.zeros(64)
    damaged["conv_in.weight"] = torch.zeros(32, 8, 3, 3)
    with pytest.raises(CheckpointMismatchError) as error:
        convert_vsr(damaged, TINY_X4_CONFIG)
    message = str(error.value)
    assert "missing" in message and "mid_temporal_block.shift_conv.weight" in message
    assert "does not have" in message and "mid_temporal_block.attentions.0.norm.weight" in message
    assert "conv_in.weight: checkpoint (32, 8, 3, 3) vs model (32, 7, 3, 3)" in message

    torch.save({"ema": damaged}, tmp_path / "damaged.pt")
    (tmp_path / "config.json").write_text(json.dumps(TINY_X4_CONFIG))
    result = run_cli("convert-checkpoint", "--stage", "vsr", "--input", tmp_path / "damaged.pt",
                     "--output", tmp_path / "out", "--unet-config", tmp_path / "config.json")
    assert result.returncode == 1 and "mid_temporal_block.attentions.0.norm.weight" in result.stderr
    assert not (tmp_path / "out").exists()
    # Without --unet-config the checkpoint is read as the full-size x4 upscaler's: a tiny one does not fit.
    torch.save(vsr.state_dict(), tmp_path / "tiny.pt")
    result = run_cli("convert-checkpoint", "--stage", "vsr", "--input", tmp_path / "tiny.pt",
                     "--output", tmp_path / "o")
    assert result.returncode == 1 and "shape mismatches" in result.stderr
