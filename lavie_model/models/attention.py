"""Spatial transformer of the LaVie base UNet: self-attention, cross-attention, temporal attention, FFN.

Hidden states live as (batch * frames, tokens, channels): every spatial layer treats a frame as an
image, so the 2D weights of Stable Diffusion apply unchanged. Only the temporal attention regroups
the frames of each video, and it skips the trailing still-image frames of a joint image-video batch.
"""

import torch
import torch.nn.functional as F
from torch import nn

from .temporal_attention import TemporalAttention


class Attention(nn.Module):
    """Multi-head attention through `scaled_dot_product_attention` (self- or cross-attention)."""

    def __init__(self, dim: int, heads: int, head_dim: int, context_dim: int | None = None, upcast: bool = False):
        super().__init__()
        self.heads = heads
        self.upcast = upcast
        inner = heads * head_dim
        context_dim = context_dim or dim
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim), nn.Dropout(0.0)])

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """x: (b, n, c); context: (b, m, c_ctx) or None for self-attention. Returns (b, n, c)."""
        context = x if context is None else context
        q = self.to_q(x).unflatten(-1, (self.heads, -1)).transpose(1, 2)  # (b, h, n, d)
        k = self.to_k(context).unflatten(-1, (self.heads, -1)).transpose(1, 2)  # (b, h, m, d)
        v = self.to_v(context).unflatten(-1, (self.heads, -1)).transpose(1, 2)
        if self.upcast:
            q, k = q.float(), k.float()
            v = v.float()
        out = F.scaled_dot_product_attention(q, k, v).to(x.dtype)  # (b, h, n, d)
        return self.to_out[0](out.transpose(1, 2).flatten(2))


class FeedForward(nn.Module):
    """GEGLU feed-forward, 4x expansion, as in Stable Diffusion."""

    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        inner = dim * mult
        self.net = nn.ModuleList([GEGLU(dim, inner), nn.Dropout(0.0), nn.Linear(inner, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)
        return x


class GEGLU(nn.Module):
    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class BasicTransformerBlock3D(nn.Module):
    """Self-attn (per frame) -> cross-attn (text) -> temporal attn (video frames) -> feed-forward."""

    def __init__(self, dim: int, heads: int, head_dim: int, context_dim: int, upcast_attention: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads, head_dim, upcast=upcast_attention)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, heads, head_dim, context_dim=context_dim, upcast=upcast_attention)
        self.norm_temp = nn.LayerNorm(dim)
        self.attn_temp = TemporalAttention(dim, heads, head_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim)

    def forward(self, x, text, num_frames: int, num_image_frames: int):
        """x: (b*t, n, c) with t = num_frames; text: (b, m, c_ctx) shared by all frames or (b*t, m, c_ctx)."""
        x = self.attn1(self.norm1(x)) + x
        x = self.cross_attention(self.norm2(x), text, num_frames) + x
        x = self.temporal_attention(x, num_frames, num_image_frames)
        return self.ff(self.norm3(x)) + x

    def cross_attention(self, x, text, num_frames):
        if text.shape[0] == x.shape[0]:  # one text per frame
            return self.attn2(x, text)
        # One text for the whole video: fold the frames into the query sequence instead of copying the
        # text per frame; every query still attends to the same keys, so the result is identical.
        bt, n, c = x.shape
        out = self.attn2(x.reshape(bt // num_frames, num_frames * n, c), text)  # (b, t*n, c)
        return out.reshape(bt, n, c)

    def temporal_attention(self, x, num_frames, num_image_frames):
        bt, n, c = x.shape
        video_frames = num_frames - num_image_frames
        if video_frames == 0:  # a batch of still images only
            return x
        x = x.view(bt // num_frames, num_frames, n, c)  # (b, t, n, c)
        if num_image_frames == 0:
            x = x + self.attn_temp(self.norm_temp(x))
        else:  # still images ride along untouched
            video = x[:, :video_frames]
            video = video + self.attn_temp(self.norm_temp(video))
            x = torch.cat([video, x[:, video_frames:]], dim=1)
        return x.reshape(bt, n, c)


class Transformer3DModel(nn.Module):
    """GroupNorm -> proj_in -> transformer blocks -> proj_out, with a residual; all per frame but temporal."""

    def __init__(
        self,
        channels: int,
        heads: int,
        head_dim: int,
        context_dim: int,
        num_layers: int = 1,
        norm_num_groups: int = 32,
        use_linear_projection: bool = False,
        upcast_attention: bool = False,
    ):
        super().__init__()
        inner = heads * head_dim
        self.use_linear_projection = use_linear_projection
        self.norm = nn.GroupNorm(norm_num_groups, channels, eps=1e-6)
        if use_linear_projection:
            self.proj_in, self.proj_out = nn.Linear(channels, inner), nn.Linear(inner, channels)
        else:
            self.proj_in, self.proj_out = nn.Conv2d(channels, inner, 1), nn.Conv2d(inner, channels, 1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock3D(inner, heads, head_dim, context_dim, upcast_attention) for _ in range(num_layers)
        )

    def forward(self, x, text, num_frames: int, num_image_frames: int):
        """x: (b*t, c, h, w) -> (b*t, c, h, w)."""
        bt, c, h, w = x.shape
        residual = x
        x = self.norm(x)
        if self.use_linear_projection:
            x = self.proj_in(x.permute(0, 2, 3, 1).reshape(bt, h * w, c))
        else:
            x = self.proj_in(x)
            x = x.permute(0, 2, 3, 1).reshape(bt, h * w, -1)  # (b*t, h*w, inner)
        for block in self.transformer_blocks:
            x = block(x, text, num_frames, num_image_frames)
        if self.use_linear_projection:
            x = self.proj_out(x).reshape(bt, h, w, c).permute(0, 3, 1, 2)
        else:
            x = self.proj_out(x.reshape(bt, h, w, -1).permute(0, 3, 1, 2))
        return x + residual
