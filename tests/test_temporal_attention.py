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
