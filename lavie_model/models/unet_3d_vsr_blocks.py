"""Temporal layers and blocks of the LaVie video super-resolution UNet (inflated from the SD x4 upscaler).

Frames interact in three kinds of layer, all new on top of the 2D upscaler:
- `resblock_temporal`: a residual block of (3, 1, 1) convolutions over time, in front of every spatial
  transformer;
- `attn_temporal` (with `norm_temporal`): temporal self-attention with rotary positions and a relative
  position bias, in every transformer block between cross-attention and the feed-forward;
- `TemporalModule` (`down_temporal_blocks`, `mid_temporal_block`, `up_temporal_blocks`), after every UNet
  block: a (5, 1, 1) temporal residual block and a 3x3 residual block, added to the block's output through
  a 1x1 convolution (`shift_conv`) that starts at zero.
Activations stay (batch * frames, channels, height, width) as in the base model. The GroupNorms of these
temporal layers pool the statistics of all frames of a video, as the official code does.
Tensor names follow the released `lavie_vsr.pt`.
"""

import torch.nn.functional as F
from torch import nn

from .attention import Attention, FeedForward, Transformer3DModel, attend_to_text
from .resnet import ResnetBlock3D
from .temporal_attention import TemporalAttention
from .unet_3d_blocks import CrossAttnDownBlock3D, CrossAttnUpBlock3D, UNetMidBlock3DCrossAttn, _Block

TEMPORAL_EPS = 1e-6  # GroupNorm epsilon of the official temporal layers (the 2D layers use norm_eps)


class TemporalConvBlock(nn.Module):
    """Residual block that convolves over time only, per spatial position.

    GroupNorm -> SiLU -> conv (k, 1, 1) [+ time embedding] -> GroupNorm -> SiLU -> conv (3, 1, 1), added
    to the input; `zero_init` zeroes the last convolution so that the block starts as the identity.
    """

    def __init__(self, channels: int, kernel_size: int = 3, temb_channels: int | None = None, groups: int = 32,
                 zero_init: bool = False):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, channels, eps=TEMPORAL_EPS)
        self.conv1 = nn.Conv3d(channels, channels, (kernel_size, 1, 1), padding=((kernel_size - 1) // 2, 0, 0))
        self.time_emb_proj = nn.Linear(temb_channels, channels) if temb_channels else None
        self.norm2 = nn.GroupNorm(groups, channels, eps=TEMPORAL_EPS)
        self.conv2 = nn.Conv3d(channels, channels, (3, 1, 1), padding=(1, 0, 0))
        if zero_init:
            nn.init.zeros_(self.conv2.weight)
            nn.init.zeros_(self.conv2.bias)

    def forward(self, x, num_frames: int, temb=None):
        """x: (b*t, c, h, w); temb: (b, temb_channels), needed when the block has a time projection."""
        bt, c, h, w = x.shape
        video = x.view(bt // num_frames, num_frames, c, h, w).transpose(1, 2)  # (b, c, t, h, w)
        y = self.conv1(F.silu(self.norm1(video)))  # GroupNorm over (c, t, h, w): statistics across frames
        if self.time_emb_proj is not None:
            y = y + self.time_emb_proj(F.silu(temb))[:, :, None, None, None]
        y = self.conv2(F.silu(self.norm2(y)))  # (b, c, t, h, w)
        return x + y.transpose(1, 2).reshape(bt, c, h, w)


class TemporalModule(_Block):
    """Runs after a UNet block: x + shift_conv(spatial_resnet(temporal_resnet(x))), with shift_conv zero at
    initialisation, so that a new module adds nothing."""

    def __init__(self, channels: int, temb_channels: int, groups: int = 32):
        super().__init__()
        self.resblocks_3d_t = TemporalConvBlock(channels, 5, temb_channels, groups)
        self.resblocks_3d_s = ResnetBlock3D(channels, channels, temb_channels, groups=groups, eps=TEMPORAL_EPS,
                                            group_norm_across_frames=True)
        self.shift_conv = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.shift_conv.weight)
        nn.init.zeros_(self.shift_conv.bias)

    def forward(self, x, temb, num_frames: int):
        """x: (b*t, c, h, w); temb: (b, temb_channels) -> (b*t, c, h, w)."""
        h = self.run(self.resblocks_3d_t, x, num_frames, temb)
        h = self.run(self.resblocks_3d_s, h, temb, num_frames, 0)
        return x + self.shift_conv(h)


class VSRTransformerBlock(nn.Module):
    """attn1 -> cross-attention -> temporal attention -> feed-forward, each with a pre-LayerNorm and a residual.

    attn1 is self-attention, or, where the upscaler has `only_cross_attention`, a second attention to the text.
    """

    def __init__(self, dim: int, heads: int, head_dim: int, context_dim: int, only_cross_attention: bool = False,
                 upcast_attention: bool = False):
        super().__init__()
        self.only_cross_attention = only_cross_attention
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads, head_dim, context_dim if only_cross_attention else None, upcast_attention)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, heads, head_dim, context_dim, upcast_attention)
        self.norm_temporal = nn.LayerNorm(dim)
        self.attn_temporal = TemporalAttention(dim, heads, head_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim)

    def forward(self, x, text, num_frames: int, num_image_frames: int = 0):
        """x: (b*t, n, c); text: (b, m, c_ctx), one per video -> (b*t, n, c). There are no image frames."""
        if self.only_cross_attention:
            x = attend_to_text(self.attn1, self.norm1(x), text, num_frames) + x
        else:
            x = self.attn1(self.norm1(x)) + x
        x = attend_to_text(self.attn2, self.norm2(x), text, num_frames) + x
        bt, n, c = x.shape
        video = x.view(bt // num_frames, num_frames, n, c)  # (b, t, n, c)
        x = (video + self.attn_temporal(self.norm_temporal(video))).reshape(bt, n, c)
        return self.ff(self.norm3(x)) + x


class VSRTransformer3DModel(Transformer3DModel):
    """The base spatial transformer with VSR blocks, behind a temporal convolution block (`resblock_temporal`);
    its residual is taken after that block, as in the official code."""

    block_class = VSRTransformerBlock

    def __init__(self, channels: int, heads: int, head_dim: int, context_dim: int, only_cross_attention: bool = False,
                 num_layers: int = 1, norm_num_groups: int = 32, use_linear_projection: bool = True,
                 upcast_attention: bool = False, temporal_norm_num_groups: int = 32):
        super().__init__(channels, heads, head_dim, context_dim, num_layers, norm_num_groups, use_linear_projection,
                         upcast_attention, only_cross_attention=only_cross_attention)
        # Zero-initialised here (the official code is not): a fresh inflation starts as the 2D upscaler.
        self.resblock_temporal = TemporalConvBlock(channels, 3, groups=temporal_norm_num_groups, zero_init=True)

    def forward(self, x, text, num_frames: int, num_image_frames: int = 0):
        """x: (b*t, c, h, w) -> (b*t, c, h, w); the VSR model has no still-image frames."""
        if num_image_frames:
            raise ValueError("the VSR transformer takes video frames only (num_image_frames must be 0)")
        return super().forward(self.resblock_temporal(x, num_frames), text, num_frames, 0)


class VSRCrossAttnDownBlock3D(CrossAttnDownBlock3D):
    transformer_class = VSRTransformer3DModel


class VSRUNetMidBlock3DCrossAttn(UNetMidBlock3DCrossAttn):
    transformer_class = VSRTransformer3DModel


class VSRCrossAttnUpBlock3D(CrossAttnUpBlock3D):
    transformer_class = VSRTransformer3DModel
