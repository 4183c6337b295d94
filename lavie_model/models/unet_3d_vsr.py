"""The LaVie video super-resolution UNet: the Stable Diffusion x4 upscaler's UNet inflated to video.

Input: the noisy latents of the high-resolution video concatenated with the noise-augmented low-resolution
RGB frames (4 + 3 = 7 channels); the noise level of that augmentation is a class label (a learned embedding
added to the timestep embedding). Every 2D layer of the upscaler runs per frame; the temporal layers of
`unet_3d_vsr_blocks.py` mix the frames.
"""


import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from torch import nn

from .resnet import frame_group_norm
from .temporal_attention import RotaryEmbedding
from .unet_3d import UNet3DConditionOutput, config_from_2d, copy_2d_weights, embed_time, load_unet2d
from .unet_3d_blocks import build_blocks
from .unet_3d_vsr_blocks import (
    TemporalModule,
    VSRCrossAttnDownBlock3D,
    VSRCrossAttnUpBlock3D,
    VSRUNetMidBlock3DCrossAttn,
)

# Modules that the 2D upscaler does not have: new at inflation, the only ones trained when the 2D weights are frozen.
TEMPORAL_MODULES = frozenset({
    "resblock_temporal", "norm_temporal", "attn_temporal",
    "down_temporal_blocks", "mid_temporal_block", "up_temporal_blocks", "temporal_rotary_emb",
})


def is_temporal(name: str) -> bool:
    """Whether a parameter or buffer name belongs to a temporal layer (not to the 2D upscaler)."""
    return not TEMPORAL_MODULES.isdisjoint(name.split("."))


class UNet3DVSRModel(ModelMixin, ConfigMixin):
    """Video super-resolution UNet. `sample` is (batch, 7, frames, height, width); the output has 4 channels.

    Defaults are the SD x4 upscaler's sizes (`lavie_vsr.pt`). Spatial GroupNorms pool all frames of a video
    when `group_norm_across_frames` (the official model, needed to reproduce its outputs); an inflated
    upscaler normalises per frame, so that it starts out as the image model.
    """

    _supports_gradient_checkpointing = True
    _keep_in_fp32_modules = ["rotary_emb", "temporal_rotary_emb"]  # loading in bf16 keeps rotary frequencies exact

    @register_to_config
    def __init__(
        self,
        sample_size: int | None = None,
        in_channels: int = 7,
        out_channels: int = 4,
        center_input_sample: bool = False,
        flip_sin_to_cos: bool = True,
        freq_shift: int = 0,
        down_block_types: tuple = ("DownBlock3D",) + ("CrossAttnDownBlock3D",) * 3,
        mid_block_type: str = "UNetMidBlock3DCrossAttn",
        up_block_types: tuple = ("CrossAttnUpBlock3D",) * 3 + ("UpBlock3D",),
        only_cross_attention: bool | tuple = (True, True, True, False),
        block_out_channels: tuple = (256, 512, 512, 1024),
        layers_per_block: int = 2,
        downsample_padding: int = 1,
        mid_block_scale_factor: float = 1.0,
        norm_num_groups: int = 32,
        norm_eps: float = 1e-5,
        cross_attention_dim: int = 1024,
        attention_head_dim: int | tuple = 8,
        num_attention_heads: int | tuple | None = None,
        use_linear_projection: bool = True,
        upcast_attention: bool = False,
        num_class_embeds: int | None = 1000,
        transformer_layers_per_block: int = 1,
        group_norm_across_frames: bool = False,
        temporal_norm_num_groups: int = 32,
    ):
        super().__init__()
        n = len(block_out_channels)
        if mid_block_type != "UNetMidBlock3DCrossAttn":
            raise ValueError(f"unsupported mid_block_type {mid_block_type!r}")
        # As in diffusers, `only_cross_attention[i]` belongs to down block i and, reversed, to up block n-1-i;
        # the mid block always has self-attention.
        cross_only = only_cross_attention
        cross_only = (cross_only,) * n if isinstance(cross_only, bool) else tuple(cross_only)
        heads = num_attention_heads or attention_head_dim  # SD's `attention_head_dim` is the number of heads
        heads = (heads,) * n if isinstance(heads, int) else tuple(heads)
        if len(cross_only) != n or len(heads) != n:
            raise ValueError(f"only_cross_attention and the heads need {n} entries, one per block")
        time_dim = block_out_channels[0] * 4
        resnet_kwargs = dict(groups=norm_num_groups, eps=norm_eps, group_norm_across_frames=group_norm_across_frames)

        def attention_kwargs(i, part):
            only_cross = cross_only[i] and part != "mid"
            channels = block_out_channels[i]
            if channels % heads[i]:
                raise ValueError(f"block {i}: {channels} channels do not split into {heads[i]} heads")
            return dict(heads=heads[i], head_dim=channels // heads[i], context_dim=cross_attention_dim,
                        only_cross_attention=only_cross, num_layers=transformer_layers_per_block,
                        norm_num_groups=norm_num_groups, use_linear_projection=use_linear_projection,
                        upcast_attention=upcast_attention, temporal_norm_num_groups=temporal_norm_num_groups)

        self.conv_in = nn.Conv2d(in_channels, block_out_channels[0], 3, padding=1)
        self.time_proj = Timesteps(block_out_channels[0], flip_sin_to_cos, freq_shift)
        self.time_embedding = TimestepEmbedding(block_out_channels[0], time_dim)
        self.class_embedding = nn.Embedding(num_class_embeds, time_dim) if num_class_embeds else None
        # The official model shares one rotary module between all temporal attentions and registers it here
        # too, so the checkpoint holds its frequencies at this name as well; each block uses its own copy.
        self.temporal_rotary_emb = RotaryEmbedding()

        self.down_blocks, self.mid_block, self.up_blocks = build_blocks(
            block_out_channels, down_block_types, up_block_types, layers_per_block, time_dim, resnet_kwargs,
            attention_kwargs, downsample_padding, mid_block_scale_factor,
            (VSRCrossAttnDownBlock3D, VSRUNetMidBlock3DCrossAttn, VSRCrossAttnUpBlock3D))
        # A temporal module after every block: channels of the block's output.
        self.down_temporal_blocks = nn.ModuleList(
            TemporalModule(channels, time_dim, temporal_norm_num_groups) for channels in block_out_channels)
        self.mid_temporal_block = TemporalModule(block_out_channels[-1], time_dim, temporal_norm_num_groups)
        self.up_temporal_blocks = nn.ModuleList(
            TemporalModule(channels, time_dim, temporal_norm_num_groups) for channels in reversed(block_out_channels))

        self.conv_norm_out = nn.GroupNorm(norm_num_groups, block_out_channels[0], eps=norm_eps)
        self.conv_out = nn.Conv2d(block_out_channels[0], out_channels, 3, padding=1)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        class_labels: torch.Tensor | int | None = None,
        return_dict: bool = True,
    ):
        """sample: (b, 7, t, h, w), the noisy latents (4 channels) concatenated with the noise-augmented
        low-resolution RGB frames (3); encoder_hidden_states: (b, tokens, dim), one text per video;
        class_labels: the noise level of the low-resolution frames, (b,) or one for all. Returns `.sample`
        (b, 4, t, h, w)."""
        if sample.ndim != 5 or sample.shape[1] != self.config.in_channels:
            raise ValueError(f"sample must be (batch, {self.config.in_channels}, frames, height, width): latents and "
                             f"low-resolution frames concatenated; got {tuple(sample.shape)}")
        b, c, t, h, w = sample.shape
        text = encoder_hidden_states
        if text.ndim != 3 or text.shape[0] != b:
            raise ValueError(f"encoder_hidden_states must be ({b}, tokens, dim), got {tuple(text.shape)}")

        emb = embed_time(self, timestep, class_labels, b, sample.device, sample.dtype)  # (b, time_dim)

        x = sample.transpose(1, 2).reshape(b * t, c, h, w)  # frames fold into the batch
        if self.config.center_input_sample:
            x = 2 * x - 1.0
        x = self.conv_in(x)
        skips = (x,)
        for block, temporal in zip(self.down_blocks, self.down_temporal_blocks):
            x, block_skips = block(x, emb, text, t, 0)
            skips += block_skips  # taken before the temporal module, as in the official model
            x = temporal(x, emb, t)
        x = self.mid_temporal_block(self.mid_block(x, emb, text, t, 0), emb, t)
        for block, temporal in zip(self.up_blocks, self.up_temporal_blocks):
            block_skips, skips = skips[-len(block.resnets):], skips[: -len(block.resnets)]
            # Odd latent sizes: upsample to the size of the next skip connection instead of doubling.
            size = skips[-1].shape[-2:] if skips and block.upsamplers is not None else None
            x = temporal(block(x, block_skips, emb, text, t, 0, upsample_size=size), emb, t)
        x = frame_group_norm(self.conv_norm_out, x, t, 0, self.config.group_norm_across_frames)
        x = self.conv_out(F.silu(x))
        x = x.reshape(b, t, -1, h, w).transpose(1, 2).contiguous()  # (b, c_out, t, h, w)
        return UNet3DConditionOutput(sample=x) if return_dict else (x,)

    def freeze_2d_weights(self) -> list[str]:
        """Train only the temporal layers: every weight inherited from the 2D upscaler gets requires_grad=False,
        every temporal one requires_grad=True. Returns the names of the trainable parameters."""
        trainable = []
        for name, param in self.named_parameters():
            param.requires_grad_(is_temporal(name))
            if param.requires_grad:
                trainable.append(name)
        return trainable

    @classmethod
    def from_pretrained_2d(cls, unet2d, subfolder: str | None = None, group_norm_across_frames: bool = False):
        """Inflate the SD x4 upscaler's UNet (a `UNet2DConditionModel` or a path to one).

        Every 2D weight is copied strictly; the temporal layers are new and start as the identity, so the
        result reproduces the 2D upscaler frame by frame (exactly so with the default per-frame GroupNorm).
        """
        unet2d = load_unet2d(unet2d, subfolder)
        model = cls(**vsr_config_from_2d(dict(unet2d.config), group_norm_across_frames=group_norm_across_frames))
        return copy_2d_weights(model, unet2d.state_dict(), unet2d.dtype, is_temporal)


def vsr_config_from_2d(config2d: dict, group_norm_across_frames: bool = False) -> dict:
    """The `UNet3DVSRModel` config for a diffusers x4-upscaler `UNet2DConditionModel` config."""
    only_cross_attention = config2d.get("only_cross_attention", False)
    config = config_from_2d({k: v for k, v in config2d.items() if k != "only_cross_attention"},
                            group_norm_across_frames=group_norm_across_frames)
    config["only_cross_attention"] = (only_cross_attention if isinstance(only_cross_attention, bool)
                                      else list(only_cross_attention))
    return config
