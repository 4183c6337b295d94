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
        return self.attend(q, k, v)

    def attend(self, q, k, v):
        """q: (b, h, n, d), k and v: (b, h, m, d) -> projected output (b, n, c)."""
        dtype = q.dtype
        if self.upcast:
            q, k, v = q.float(), k.float(), v.float()
        out = F.scaled_dot_product_attention(q, k, v).to(dtype)  # (b, h, n, d)
        return self.to_out[0](out.transpose(1, 2).flatten(2))


class SparseCausalAttention(Attention):
    """Spatial self-attention whose keys and values are the first frame's and the previous frame's tokens."""

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        """x: (b*t, n, c) -> (b*t, n, c)."""
        bt, n, c = x.shape
        previous = torch.arange(num_frames, device=x.device).sub(1).clamp(min=0)  # frame 0 sees itself twice
        q = self.to_q(x).unflatten(-1, (self.heads, -1)).transpose(1, 2)  # (b*t, h, n, d)

        def first_and_previous(t):  # (b*t, n, c') -> (b*t, h, 2n, d)
            t = t.view(bt // num_frames, num_frames, n, -1)
            t = torch.cat([t[:, :1].expand_as(t), t[:, previous]], dim=2)  # (b, t, 2n, c')
            return t.reshape(bt, 2 * n, self.heads, -1).transpose(1, 2)

        return self.attend(q, first_and_previous(self.to_k(x)), first_and_previous(self.to_v(x)))


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


def attend_to_text(attention: Attention, x, text, num_frames: int):
    """Cross-attention of frames to text. x: (b*t, n, c); text: (b*t, m, c_ctx), one per frame, or
    (b, m, c_ctx), one per video.

    With one text per video the frames fold into the query sequence instead of copying the text per
    frame; every query still attends to the same keys, so the result is that of per-frame attention.
    """
    if text.shape[0] == x.shape[0]:
        return attention(x, text)
    bt, n, c = x.shape
    return attention(x.reshape(bt // num_frames, num_frames * n, c), text).reshape(bt, n, c)


BLOCK_DESIGNS = ("base", "interpolation")


class BasicTransformerBlock3D(nn.Module):
    """One transformer block, in one of the two official designs:

    - `base`: self-attn (per frame) -> cross-attn (text) -> temporal attn (RoPE + relative bias) -> FFN;
    - `interpolation`: sparse-causal self-attn (keys from the first and previous frames) -> cross-attn
      -> FFN -> temporal attn without position information.
    """

    def __init__(self, dim: int, heads: int, head_dim: int, context_dim: int, upcast_attention: bool = False,
                 block_design: str = "base", temporal_positions: str = "rotary"):
        super().__init__()
        if block_design not in BLOCK_DESIGNS:
            raise ValueError(f"unknown block_design {block_design!r}; expected one of {BLOCK_DESIGNS}")
        self.sparse_causal = block_design == "interpolation"
        self.norm1 = nn.LayerNorm(dim)
        attn1_type = SparseCausalAttention if self.sparse_causal else Attention
        self.attn1 = attn1_type(dim, heads, head_dim, upcast=upcast_attention)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, heads, head_dim, context_dim=context_dim, upcast=upcast_attention)
        self.norm_temp = nn.LayerNorm(dim)
        # the interpolation design's temporal attention has no positions, whatever the base's
        positions = temporal_positions if block_design == "base" else "none"
        self.attn_temp = TemporalAttention(dim, heads, head_dim, positions=positions)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim)

    def forward(self, x, text, num_frames: int, num_image_frames: int):
        """x: (b*t, n, c) with t = num_frames; text: (b, m, c_ctx) shared by all frames or (b*t, m, c_ctx)."""
        if self.sparse_causal:
            x = self.attn1(self.norm1(x), num_frames) + x
            x = attend_to_text(self.attn2, self.norm2(x), text, num_frames) + x
            x = self.ff(self.norm3(x)) + x
            return self.temporal_attention(x, num_frames, num_image_frames)
        x = self.attn1(self.norm1(x)) + x
        x = attend_to_text(self.attn2, self.norm2(x), text, num_frames) + x
        x = self.temporal_attention(x, num_frames, num_image_frames)
        return self.ff(self.norm3(x)) + x

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

    block_class = BasicTransformerBlock3D  # the VSR model substitutes its own block

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
        **block_kwargs,
    ):
        """block_kwargs: settings of the transformer blocks beyond the shared ones (the base design's
        `block_design`, the VSR block's `only_cross_attention`)."""
        super().__init__()
        inner = heads * head_dim
        self.use_linear_projection = use_linear_projection
        self.norm = nn.GroupNorm(norm_num_groups, channels, eps=1e-6)
        if use_linear_projection:
            self.proj_in, self.proj_out = nn.Linear(channels, inner), nn.Linear(inner, channels)
        else:
            self.proj_in, self.proj_out = nn.Conv2d(channels, inner, 1), nn.Conv2d(inner, channels, 1)
        self.transformer_blocks = nn.ModuleList(
            self.block_class(inner, heads, head_dim, context_dim, upcast_attention=upcast_attention, **block_kwargs)
            for _ in range(num_layers)
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
