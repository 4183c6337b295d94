"""Rotary positions and the relative position bias of the temporal attention."""

import torch

from lavie_model.models.temporal_attention import RelativePositionBias, RotaryEmbedding, TemporalAttention


def test_rotary_scores_depend_only_on_the_frame_distance():
    rope = RotaryEmbedding()
    q = torch.randn(64)
    k = torch.randn(64)
    frames = 12
    cos, sin = rope.cos_sin(frames, "cpu", torch.float32)
    q_rot = rope.rotate(q.expand(frames, 64), cos, sin)  # the same query at every frame
    k_rot = rope.rotate(k.expand(frames, 64), cos, sin)
    scores = q_rot @ k_rot.T  # (f, f)
    for offset in (-5, 0, 3):
        diagonal = torch.diagonal(scores, offset)
        assert torch.allclose(diagonal, diagonal[0].expand_as(diagonal), atol=1e-4)
    assert not torch.allclose(torch.diagonal(scores, 0)[0], torch.diagonal(scores, 3)[0])
    # channels past the first 32 are left as they are, and rotation keeps norms
    assert torch.equal(q_rot[:, 32:], q.expand(frames, 64)[:, 32:])
    assert torch.allclose(q_rot.norm(dim=-1), q.norm().expand(frames))


def test_relative_buckets_split_past_and_future_and_grow_logarithmically():
    buckets = RelativePositionBias(heads=2).buckets(40, "cpu")  # (query, key)
    past = buckets[39, :].flip(0)  # distance 0, 1, 2, ... into the past
    future = buckets[0, :]  # distance 0, 1, 2, ... into the future
    assert past[:8].tolist() == list(range(8))  # one bucket per frame up to 8 frames apart
    assert future[1:8].tolist() == list(range(17, 24))  # the future uses the upper half
    assert past[8:].unique().numel() < 32 - 8 and past.max() == 15 and future.max() == 31
    assert (past[1:] >= past[:-1]).all()


def test_temporal_attention_output_starts_at_zero_and_keeps_its_layout():
    attention = TemporalAttention(dim=64, heads=2, head_dim=32)
    x = torch.randn(3, 5, 7, 64)  # (b, f, n, c)
    assert torch.equal(attention(x), torch.zeros_like(x))
    torch.nn.init.normal_(attention.to_out[0].weight)
    out = attention(x)
    assert out.shape == x.shape
    # each spatial position attends over its own frames only
    moved = x.clone()
    moved[:, :, 3] += 1
    changed = (attention(moved) - out).abs().amax(dim=(0, 1, 3))
    assert changed[3] > 1e-3 and changed[[0, 1, 2, 4, 5, 6]].max() <= 1e-6


def test_temporal_position_variants_see_frame_order_except_none():
    """The ablation's temporal modules: without positions, attention over frames is blind to their order (permuting
    the frames permutes the output); rotary, sinusoidal and learned positions are not; each starts at zero."""
    import pytest

    from lavie_model.models.temporal_attention import POSITIONS

    torch.manual_seed(0)
    x = torch.randn(2, 8, 5, 64)  # (b, f, n, c)
    order = torch.randperm(8)
    for positions in POSITIONS:
        attention = TemporalAttention(64, heads=2, head_dim=32, positions=positions)
        assert attention(x).abs().max() == 0  # a fresh temporal layer adds nothing
        torch.nn.init.normal_(attention.to_out[0].weight, std=0.2)
        blind = torch.allclose(attention(x[:, order]), attention(x)[:, order], atol=1e-5)
        assert blind == (positions == "none"), positions
    with pytest.raises(ValueError, match="unknown temporal positions 'alibi'"):
        TemporalAttention(64, heads=2, head_dim=32, positions="alibi")
    with pytest.raises(ValueError, match="at most 64"):
        TemporalAttention(64, heads=2, head_dim=32, positions="learned")(torch.randn(1, 65, 1, 64))


def test_inflated_unet_of_every_variant_is_the_image_model_and_saves_its_positions(unet2d, tmp_path):
    """Each ablation variant inflates to a model that reproduces the 2D UNet frame by frame, and its positions
    survive save_pretrained / from_pretrained (the learned table as weights, the others rebuilt from the config)."""
    from lavie_model import UNet3DConditionModel
    from lavie_model.models.temporal_attention import POSITIONS
    from tests.conftest import TEXT_DIM

    torch.manual_seed(0)
    frames = torch.randn(1, 4, 3, 16, 16)
    text = torch.randn(1, 7, TEXT_DIM)
    with torch.no_grad():
        expected = torch.stack([unet2d(frames[:, :, i], 10, text).sample for i in range(3)], dim=2)
    for positions in POSITIONS:
        model = UNet3DConditionModel.from_pretrained_2d(unet2d, temporal_positions=positions).eval()
        with torch.no_grad():
            assert torch.allclose(model(frames, 10, text).sample, expected, atol=1e-5), positions
            for name, param in model.named_parameters():
                if ".attn_temp." in name:
                    param.add_(torch.randn_like(param) * 0.1)
            trained = model(frames, 10, text).sample
        model.save_pretrained(tmp_path / positions)
        loaded = UNet3DConditionModel.from_pretrained(tmp_path / positions).eval()
        assert loaded.config.temporal_positions == positions
        with torch.no_grad():
            difference = (loaded(frames, 10, text).sample - trained).abs().max()
            assert difference < 1e-5, (positions, difference)
