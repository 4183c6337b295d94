"""Temporal self-attention of the LaVie base model: rotary positions plus a learned relative bias.

Each spatial position of a video attends over the video's frames. Queries and keys carry rotary
position embeddings (RoPE) on the first 32 channels of every head, and the attention logits get a
T5-style relative position bias per head. For the paper's ablation of the temporal module the positions
can also be absent, or absolute (sinusoidal or learned, added to the attention's input, as AnimateDiff does):
see POSITIONS. The tensor names (`to_q`, `to_k`, `to_v`, `to_out.0`,
`rotary_emb.freqs`, `time_rel_pos_bias.relative_attention_bias.weight`) are those of the released
LaVie checkpoints, so their weights load as they are.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

ROTARY_DIM = 32  # channels per head that carry rotary positions, as in the official model
# How the temporal attention knows the order of frames: "rotary" (LaVie: RoPE plus the relative bias), "none",
# "sinusoidal" or "learned" absolute positions added to its input.
POSITIONS = ("rotary", "none", "sinusoidal", "learned")
MAX_FRAMES = 64  # frames the absolute positions cover


class RotaryEmbedding(nn.Module):
    """Rotary position embedding over the first `dim` channels, rotating interleaved channel pairs."""

    def __init__(self, dim: int = ROTARY_DIM, theta: float = 10000.0):
        super().__init__()
        self.dim = dim
        # Saved with the model (the released checkpoints hold it in every block).
        self.register_buffer("freqs", 1.0 / theta ** (torch.arange(0, dim, 2).float() / dim))  # (dim/2,)

    def _apply(self, fn, recurse=True):
        # Casting the model to bf16/fp16 would round the frequencies and skew the positions of later
        # frames, so they stay float32 and only follow device moves.
        freqs = self.freqs
        super()._apply(fn, recurse)
        if not freqs.is_meta:
            self.freqs = freqs.to(self.freqs.device)
        return self

    def cos_sin(self, length: int, device, dtype):
        positions = torch.arange(length, device=device, dtype=self.freqs.dtype)
        angles = positions[:, None] * self.freqs[None, :]  # (f, dim/2)
        angles = angles.repeat_interleave(2, dim=-1)  # (f, dim): pairs (2i, 2i+1) share an angle
        return angles.cos().to(dtype), angles.sin().to(dtype)

    def rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x: (..., f, head_dim); rotates x[..., :dim] by the per-frame angles."""
        head_dim = x.shape[-1]
        if head_dim < self.dim:
            raise ValueError(f"rotary embedding needs at least {self.dim} channels per head, got {head_dim}")
        rot, rest = x[..., : self.dim], x[..., self.dim :]
        pairs = rot.unflatten(-1, (-1, 2))  # (..., f, dim/2, 2)
        rotated_half = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)  # (..., f, dim)
        rot = rot * cos + rotated_half * sin
        return torch.cat((rot, rest), dim=-1) if rest.shape[-1] else rot


class RelativePositionBias(nn.Module):
    """Learned bias per head for each bucket of relative frame distance (T5 bucketing)."""

    def __init__(self, heads: int, num_buckets: int = 32, max_distance: int = 32):
        super().__init__()
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.relative_attention_bias = nn.Embedding(num_buckets, heads)

    def buckets(self, length: int, device) -> torch.Tensor:
        """(f, f) bucket index of the distance query i -> key j; past and future get separate halves."""
        positions = torch.arange(length, device=device)
        distance = positions[:, None] - positions[None, :]  # i - j: positive when the key is in the past
        half = self.num_buckets // 2
        bucket = (distance < 0).long() * half
        distance = distance.abs()
        max_exact = half // 2
        # Distances beyond max_exact share logarithmically wider buckets up to max_distance.
        log_ratio = torch.log(distance.float().clamp(min=1) / max_exact) / math.log(self.max_distance / max_exact)
        far = (max_exact + (log_ratio * (half - max_exact)).long()).clamp(max=half - 1)
        return bucket + torch.where(distance < max_exact, distance, far)

    def forward(self, length: int, device) -> torch.Tensor:
        bias = self.relative_attention_bias(self.buckets(length, device))  # (f, f, heads)
        return bias.permute(2, 0, 1)  # (heads, f, f)


def sinusoidal_positions(length: int, dim: int) -> torch.Tensor:
    """(length, dim) sine and cosine features of each position (Transformer's absolute encoding)."""
    positions = torch.arange(length, dtype=torch.float32)[:, None]  # (f, 1)
    rates = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))  # (dim/2,)
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(positions * rates)
    table[:, 1::2] = torch.cos(positions * rates)
    return table


class TemporalAttention(nn.Module):
    """Self-attention over frames, at every spatial position; positions as `positions` (see POSITIONS)."""

    def __init__(self, dim: int, heads: int, head_dim: int, positions: str = "rotary"):
        super().__init__()
        if positions not in POSITIONS:
            raise ValueError(f"unknown temporal positions {positions!r}; expected one of {POSITIONS}")
        self.heads, self.positions = heads, positions
        inner = heads * head_dim
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(dim, inner, bias=False)
        self.to_v = nn.Linear(dim, inner, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim), nn.Dropout(0.0)])
        self.rotary_emb = RotaryEmbedding() if positions == "rotary" else None
        self.time_rel_pos_bias = RelativePositionBias(heads) if positions == "rotary" else None
        if positions == "sinusoidal":
            self.register_buffer("pos_table", sinusoidal_positions(MAX_FRAMES, dim), persistent=False)
        elif positions == "learned":
            self.pos_embedding = nn.Parameter(torch.randn(MAX_FRAMES, dim) * 0.02)  # (max frames, dim)
        # A fresh temporal layer adds nothing: the inflated model starts as the image model.
        nn.init.zeros_(self.to_out[0].weight)
        nn.init.zeros_(self.to_out[0].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (b, f, n, c), n spatial positions; returns the attention output in the same layout."""
        b, f, n, _ = x.shape
        h = self.heads
        if self.positions in ("sinusoidal", "learned"):
            if f > MAX_FRAMES:
                raise ValueError(f"{f} frames: absolute temporal positions cover at most {MAX_FRAMES}")
            table = self.pos_table if self.positions == "sinusoidal" else self.pos_embedding
            x = x + table[:f, None].to(x.dtype)  # (f, 1, c) over (b, f, n, c)

        def heads_over_frames(t):  # (b, f, n, h*d) -> (b*n, h, f, d)
            return t.unflatten(-1, (h, -1)).permute(0, 2, 3, 1, 4).reshape(b * n, h, f, -1)

        q = heads_over_frames(self.to_q(x))
        k = heads_over_frames(self.to_k(x))
        v = heads_over_frames(self.to_v(x))
        if self.rotary_emb is not None:
            cos, sin = self.rotary_emb.cos_sin(f, x.device, q.dtype)  # (f, 32)
            q = self.rotary_emb.rotate(q, cos, sin)
            k = self.rotary_emb.rotate(k, cos, sin)
        bias = None
        if self.time_rel_pos_bias is not None:
            bias = self.time_rel_pos_bias(f, x.device).to(q.dtype)  # (h, f, f), broadcast over b*n
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # (b*n, h, f, d)
        out = out.transpose(1, 2).reshape(b, n, f, -1)  # (b, n, f, h*d)
        out = self.to_out[0](out)  # (b, n, f, c)
        return out.transpose(1, 2)  # (b, f, n, c)
