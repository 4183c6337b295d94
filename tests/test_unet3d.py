"""The inflated base UNet: identity at inflation, joint image-video frames, training paths, persistence."""

import pytest
import torch
from conftest import TEXT_DIM, randomize_temporal_layers

from lavie_model import UNet3DConditionModel


def inputs(batch=2, frames=4, size=16, seed=0):
    generator = torch.Generator().manual_seed(seed)
    sample = torch.randn(batch, 4, frames, size, size, generator=generator)
    text = torch.randn(batch, 7, TEXT_DIM, generator=generator)
    timestep = torch.tensor([17, 640][:batch])
    return sample, timestep, text


def frames_through_2d(unet2d, sample, timestep, text):
    """Run the 2D UNet on every frame as an image: (b, c, f, h, w) -> (b, c, f, h, w)."""
    b, c, f, h, w = sample.shape
    images = sample.transpose(1, 2).reshape(b * f, c, h, w)
    out = unet2d(images, timestep.repeat_interleave(f), text.repeat_interleave(f, dim=0)).sample
    return out.reshape(b, f, c, h, w).transpose(1, 2)


@pytest.mark.parametrize("frames", [1, 3, 8])
def test_fresh_inflation_reproduces_the_2d_unet_frame_by_frame(unet2d, frames):
    unet3d = UNet3DConditionModel.from_pretrained_2d(unet2d).eval()
    sample, timestep, text = inputs(frames=frames)
    with torch.no_grad():
        video = unet3d(sample, timestep, text).sample
        reference = frames_through_2d(unet2d, sample, timestep, text)
    assert video.shape == sample.shape
    assert (video - reference).abs().max() <= 1e-5


def test_inflation_from_a_diffusers_folder_with_subfolder(unet2d, tmp_path):
    unet2d.save_pretrained(tmp_path / "unet")
    unet3d = UNet3DConditionModel.from_pretrained_2d(str(tmp_path), subfolder="unet").eval()
    sample, timestep, text = inputs(frames=2)
    with torch.no_grad():
        assert torch.allclose(unet3d(sample, timestep, text).sample,
                              frames_through_2d(unet2d, sample, timestep, text), atol=1e-5)
    temporal = [k for k in unet3d.state_dict() if k not in unet2d.state_dict()]
    assert temporal and all(".attn_temp." in k or ".norm_temp." in k for k in temporal)


def test_inflation_rejects_what_it_cannot_inflate(unet2d):
    with pytest.raises(TypeError, match="UNet2DConditionModel"):
        UNet3DConditionModel.from_pretrained_2d(torch.nn.Linear(2, 2))
    from lavie_model.models import config_from_2d

    with pytest.raises(ValueError, match="time_embedding_type='fourier'"):
        config_from_2d(dict(unet2d.config, time_embedding_type="fourier"))
    with pytest.raises(ValueError, match="unsupported down_block_types"):
        config_from_2d(dict(unet2d.config, down_block_types=("SimpleCrossAttnDownBlock2D", "DownBlock2D")))


def test_temporal_attention_mixes_video_frames(unet2d, unet3d):
    sample, timestep, text = inputs(frames=4)
    with torch.no_grad():
        video = unet3d(sample, timestep, text).sample
        per_frame = frames_through_2d(unet2d, sample, timestep, text)
        perturbed = sample.clone()
        perturbed[:, :, 0] += 1.0
        moved = unet3d(perturbed, timestep, text).sample
    assert (video - per_frame).abs().max() > 1e-2  # the trained temporal layers now act
    assert (moved[:, :, 3] - video[:, :, 3]).abs().max() > 1e-3  # frame 0 reaches frame 3


@pytest.mark.parametrize("across_frames", [False, True])
def test_image_frames_depend_only_on_themselves_and_their_text(unet2d, across_frames):
    unet3d = UNet3DConditionModel.from_pretrained_2d(unet2d, group_norm_across_frames=across_frames).eval()
    randomize_temporal_layers(unet3d)
    videos, images = 4, 2
    sample, timestep, _ = inputs(frames=videos + images)
    texts = torch.randn(2, videos + images, 7, TEXT_DIM)  # a caption per frame: each image has its own
    with torch.no_grad():
        out = unet3d(sample, timestep, texts, num_image_frames=images).sample
        perturbed = sample.clone()
        perturbed[:, :, :videos] = torch.randn_like(perturbed[:, :, :videos])
        other_text = texts.clone()
        other_text[:, :videos] = torch.randn_like(other_text[:, :videos])
        moved = unet3d(perturbed, timestep, other_text, num_image_frames=images).sample
        # An image frame alone, as a one-frame "video" of images, gives the same output.
        image, text = sample[:, :, videos:videos + 1], texts[:, videos:videos + 1]
        alone = unet3d(image, timestep, text, num_image_frames=1).sample
    assert (moved[:, :, videos:] - out[:, :, videos:]).abs().max() <= 1e-5
    assert (moved[:, :, :videos] - out[:, :, :videos]).abs().max() > 1e-2
    assert (alone[:, :, 0] - out[:, :, videos]).abs().max() <= 1e-5


def test_one_text_for_all_frames_equals_the_same_text_per_frame(unet3d):
    sample, timestep, text = inputs(frames=3)
    with torch.no_grad():
        shared = unet3d(sample, timestep, text).sample
        repeated = unet3d(sample, timestep, text[:, None].expand(-1, 3, -1, -1)).sample
    assert (shared - repeated).abs().max() <= 1e-5


def test_bad_inputs_are_named(unet3d):
    sample, timestep, text = inputs(frames=3)
    with pytest.raises(ValueError, match="num_image_frames=4"):
        unet3d(sample, timestep, text, num_image_frames=4)
    with pytest.raises(ValueError, match="per-frame encoder_hidden_states"):
        unet3d(sample, timestep, torch.randn(2, 2, 7, TEXT_DIM))
    with pytest.raises(ValueError, match="batch, channels, frames, height, width"):
        unet3d(sample[:, :, 0], timestep, text)
    with pytest.raises(ValueError, match="no class embedding"):
        unet3d(sample, timestep, text, class_labels=torch.tensor([1, 2]))


def test_gradient_checkpointing_gives_the_same_gradients(unet3d):
    sample, timestep, text = inputs(frames=3)
    unet3d.train()

    def grads():
        unet3d.zero_grad()
        unet3d(sample, timestep, text, num_image_frames=1).sample.square().mean().backward()
        return {n: p.grad.clone() for n, p in unet3d.named_parameters() if p.grad is not None}

    plain = grads()
    unet3d.enable_gradient_checkpointing()
    checkpointed = grads()
    unet3d.disable_gradient_checkpointing()
    assert plain.keys() == checkpointed.keys()
    assert any(".attn_temp.to_q." in name for name in plain)  # temporal layers train
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-4, atol=1e-6, msg=name)


def test_bf16_forward_and_backward(unet3d):
    freqs = {n: b.clone() for n, b in unet3d.named_buffers() if n.endswith("rotary_emb.freqs")}
    model = unet3d.to(torch.bfloat16).train()
    for name, buffer in model.named_buffers():  # rotary frequencies keep full precision
        if name in freqs:
            assert buffer.dtype == torch.float32 and torch.equal(buffer, freqs[name])
    sample, timestep, text = inputs(frames=3)
    out = model(sample.bfloat16(), timestep, text.bfloat16(), num_image_frames=1).sample
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    out.float().square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_save_and_load_round_trip(unet3d, tmp_path):
    unet3d.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    loaded = UNet3DConditionModel.from_pretrained(tmp_path).eval()
    def public(config):  # diffusers' own bookkeeping (_name_or_path, _use_default_values) left out
        return {k: v for k, v in config.items() if not k.startswith("_")}

    assert public(loaded.config) == public(unet3d.config)
    sample, timestep, text = inputs(frames=3)
    with torch.no_grad():
        assert torch.equal(loaded(sample, timestep, text).sample, unet3d(sample, timestep, text).sample)
    half = UNet3DConditionModel.from_pretrained(tmp_path, torch_dtype=torch.bfloat16)
    buffers = dict(half.named_buffers())
    assert half.conv_in.weight.dtype == torch.bfloat16
    assert all(buffers[n].dtype == torch.float32 for n in buffers if n.endswith("rotary_emb.freqs"))
