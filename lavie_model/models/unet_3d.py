"""The LaVie base text-to-video UNet: Stable Diffusion's UNet inflated with temporal attention."""

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.utils import BaseOutput
from torch import nn

from .resnet import frame_group_norm
from .unet_3d_blocks import build_blocks

BLOCKS_2D_TO_3D = {
    "CrossAttnDownBlock2D": "CrossAttnDownBlock3D",
    "DownBlock2D": "DownBlock3D",
    "CrossAttnUpBlock2D": "CrossAttnUpBlock3D",
    "UpBlock2D": "UpBlock3D",
    "UNetMidBlock2DCrossAttn": "UNetMidBlock3DCrossAttn",
}
# 2D config entries carried over unchanged.
COPIED_2D_KEYS = (
    "sample_size", "in_channels", "out_channels", "center_input_sample", "flip_sin_to_cos", "freq_shift",
    "block_out_channels", "layers_per_block", "downsample_padding", "mid_block_scale_factor", "norm_num_groups",
    "norm_eps", "cross_attention_dim", "attention_head_dim", "num_attention_heads", "use_linear_projection",
    "upcast_attention", "num_class_embeds", "transformer_layers_per_block",
)
# 2D features this model does not implement, with the only value it accepts.
SUPPORTED_2D_VALUES = {
    "act_fn": "silu", "time_embedding_type": "positional", "resnet_time_scale_shift": "default",
    "conv_in_kernel": 3, "conv_out_kernel": 3, "resnet_out_scale_factor": 1.0, "dropout": 0.0,
    "attention_type": "default",
}
# 2D entries that only matter for features rejected above.
IGNORED_2D_KEYS = ("addition_embed_type_num_heads",)
TEMPORAL_KEYS = (".attn_temp.", ".norm_temp.")
# What an interpolation UNet denoises: the frames' latents beside the keyframes copied over their slots (the
# official design), or their difference from the keyframes' latent blend beside that blend (the blend added
# back after sampling: a UNet that predicts no residual reproduces the blend).
INTERPOLATION_TARGETS = ("frames", "blend_residual")


@dataclass
class UNet3DConditionOutput(BaseOutput):
    sample: torch.Tensor  # (batch, channels, frames, height, width)


class UNet3DConditionModel(ModelMixin, ConfigMixin):
    """Text-to-video UNet. Input and output are (batch, channels, frames, height, width).

    `block_design="base"` is the base text-to-video model; `"interpolation"` the temporal interpolation
    model (sparse-causal spatial attention, temporal attention after the feed-forward, no positions),
    which takes the noisy latents and the conditioning latents concatenated on the channel axis.
    `temporal_positions` (base design): how temporal attention orders frames, "rotary" as LaVie or one of the
    ablation's alternatives (models/temporal_attention.py: POSITIONS). `interpolation_target` (interpolation
    design): INTERPOLATION_TARGETS; the model ignores it, its pipeline and training loss read it.

    The last `num_image_frames` frames of a sample may be still images (joint image-video training):
    every spatial layer processes them, temporal attention skips them, so each image's output depends
    only on that image and its text.
    """

    _supports_gradient_checkpointing = True
    _keep_in_fp32_modules = ["rotary_emb"]  # loading with torch_dtype keeps the rotary frequencies exact

    @register_to_config
    def __init__(
        self,
        sample_size: int | None = None,
        in_channels: int = 4,
        out_channels: int = 4,
        center_input_sample: bool = False,
        flip_sin_to_cos: bool = True,
        freq_shift: int = 0,
        down_block_types: tuple = ("CrossAttnDownBlock3D",) * 3 + ("DownBlock3D",),
        mid_block_type: str = "UNetMidBlock3DCrossAttn",
        up_block_types: tuple = ("UpBlock3D",) + ("CrossAttnUpBlock3D",) * 3,
        block_out_channels: tuple = (320, 640, 1280, 1280),
        layers_per_block: int = 2,
        downsample_padding: int = 1,
        mid_block_scale_factor: float = 1.0,
        norm_num_groups: int = 32,
        norm_eps: float = 1e-5,
        cross_attention_dim: int = 768,
        attention_head_dim: int | tuple = 8,
        num_attention_heads: int | tuple | None = None,
        use_linear_projection: bool = False,
        upcast_attention: bool = False,
        num_class_embeds: int | None = None,
        transformer_layers_per_block: int = 1,
        group_norm_across_frames: bool = False,
        block_design: str = "base",
        temporal_positions: str = "rotary",
        interpolation_target: str = "frames",
    ):
        super().__init__()
        n = len(block_out_channels)
        if interpolation_target not in INTERPOLATION_TARGETS:
            raise ValueError(f"interpolation_target must be one of {', '.join(INTERPOLATION_TARGETS)}, "
                             f"got {interpolation_target!r}")
        if mid_block_type != "UNetMidBlock3DCrossAttn":
            raise ValueError(f"unsupported mid_block_type {mid_block_type!r}")
        # Stable Diffusion's `attention_head_dim` is really the number of heads (a diffusers legacy).
        heads = num_attention_heads or attention_head_dim
        heads = (heads,) * n if isinstance(heads, int) else tuple(heads)
        time_dim = block_out_channels[0] * 4
        resnet_kwargs = dict(groups=norm_num_groups, eps=norm_eps, group_norm_across_frames=group_norm_across_frames)

        def attention_kwargs(i):
            channels = block_out_channels[i]
            if channels % heads[i]:
                raise ValueError(f"block {i}: {channels} channels do not split into {heads[i]} heads")
            return dict(heads=heads[i], head_dim=channels // heads[i], context_dim=cross_attention_dim,
                        num_layers=transformer_layers_per_block, norm_num_groups=norm_num_groups,
                        use_linear_projection=use_linear_projection, upcast_attention=upcast_attention,
                        block_design=block_design, temporal_positions=temporal_positions)

        self.conv_in = nn.Conv2d(in_channels, block_out_channels[0], 3, padding=1)
        self.time_proj = Timesteps(block_out_channels[0], flip_sin_to_cos, freq_shift)
        self.time_embedding = TimestepEmbedding(block_out_channels[0], time_dim)
        self.class_embedding = nn.Embedding(num_class_embeds, time_dim) if num_class_embeds else None

        self.down_blocks, self.mid_block, self.up_blocks = build_blocks(
            block_out_channels, down_block_types, up_block_types, layers_per_block, time_dim, resnet_kwargs,
            lambda i, part: attention_kwargs(i), downsample_padding, mid_block_scale_factor)

        self.conv_norm_out = nn.GroupNorm(norm_num_groups, block_out_channels[0], eps=norm_eps)
        self.conv_out = nn.Conv2d(block_out_channels[0], out_channels, 3, padding=1)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        num_image_frames: int = 0,
        class_labels: torch.Tensor | None = None,
        return_dict: bool = True,
    ):
        """sample: (b, c, t, h, w); encoder_hidden_states: (b, tokens, dim) for one text per video, or
        (b, t, tokens, dim) for one text per frame. Returns `.sample` shaped like `sample`."""
        if sample.ndim != 5:
            raise ValueError(f"sample must be (batch, channels, frames, height, width), got {tuple(sample.shape)}")
        b, c, t, h, w = sample.shape
        if not 0 <= num_image_frames <= t:
            raise ValueError(f"num_image_frames={num_image_frames} is outside 0..{t} (the sample has {t} frames)")
        if num_image_frames and self.config.block_design != "base":
            raise ValueError(f"the {self.config.block_design} design takes no image frames")
        text = encoder_hidden_states
        if text.ndim == 4:
            if text.shape[:2] != (b, t):
                raise ValueError(
                    f"per-frame encoder_hidden_states must be ({b}, {t}, tokens, dim), got {tuple(text.shape)}")
            text = text.reshape(b * t, *text.shape[2:])  # (b*t, tokens, dim)
        elif text.ndim != 3 or text.shape[0] != b:
            raise ValueError(f"encoder_hidden_states must be ({b}, tokens, dim) or ({b}, {t}, tokens, dim), "
                             f"got {tuple(text.shape)}")

        emb = embed_time(self, timestep, class_labels, b, sample.device, sample.dtype)  # (b, time_dim)

        x = sample.transpose(1, 2).reshape(b * t, c, h, w)  # frames fold into the batch
        if self.config.center_input_sample:
            x = 2 * x - 1.0
        x = self.conv_in(x)
        skips = (x,)
        for block in self.down_blocks:
            x, block_skips = block(x, emb, text, t, num_image_frames)
            skips += block_skips
        x = self.mid_block(x, emb, text, t, num_image_frames)
        for i, block in enumerate(self.up_blocks):
            block_skips, skips = skips[-len(block.resnets):], skips[: -len(block.resnets)]
            # Odd latent sizes: upsample to the size of the next skip connection instead of doubling.
            size = skips[-1].shape[-2:] if skips and block.upsamplers is not None else None
            x = block(x, block_skips, emb, text, t, num_image_frames, upsample_size=size)
        x = frame_group_norm(self.conv_norm_out, x, t, num_image_frames, self.config.group_norm_across_frames)
        x = self.conv_out(F.silu(x))
        x = x.reshape(b, t, -1, h, w).transpose(1, 2).contiguous()  # (b, c_out, t, h, w)
        return UNet3DConditionOutput(sample=x) if return_dict else (x,)

    @classmethod
    def from_pretrained_2d(cls, unet2d, subfolder: str | None = None, group_norm_across_frames: bool = False,
                           block_design: str = "base", in_channels: int | None = None,
                           temporal_positions: str = "rotary"):
        """Inflate a Stable Diffusion 1.x UNet (a `UNet2DConditionModel` or a path to one).

        Every 2D weight is copied; the temporal layers are new and start as the identity, so the result
        reproduces the 2D model frame by frame (exactly so with the default per-frame GroupNorm and the
        base design). `in_channels` above the 2D model's adds input channels whose weights start at zero
        (the interpolation model's conditioning latents).
        """
        unet2d = load_unet2d(unet2d, subfolder)
        config = config_from_2d(dict(unet2d.config), group_norm_across_frames=group_norm_across_frames)
        config["block_design"], config["temporal_positions"] = block_design, temporal_positions
        weights_2d = dict(unet2d.state_dict())
        if in_channels is not None and in_channels != config["in_channels"]:
            if in_channels < config["in_channels"]:
                raise ValueError(f"in_channels={in_channels} is below the 2D model's {config['in_channels']}")
            conv_in = weights_2d["conv_in.weight"]  # (c_out, c_in, 3, 3)
            extra = conv_in.new_zeros(conv_in.shape[0], in_channels - conv_in.shape[1], *conv_in.shape[2:])
            weights_2d["conv_in.weight"] = torch.cat([conv_in, extra], dim=1)
            config["in_channels"] = in_channels
        return copy_2d_weights(cls(**config), weights_2d, unet2d.dtype,
                               is_temporal=lambda name: any(part in name for part in TEMPORAL_KEYS))


def config_from_2d(config2d: dict, group_norm_across_frames: bool = False) -> dict:
    """The 3D config for a diffusers `UNet2DConditionModel` config; unsupported 2D features raise."""
    config = {"group_norm_across_frames": group_norm_across_frames}
    for key, value in config2d.items():
        if key.startswith("_") or key in IGNORED_2D_KEYS:
            continue
        if key in COPIED_2D_KEYS:
            config[key] = list(value) if isinstance(value, tuple) else value
        elif key in ("down_block_types", "up_block_types", "mid_block_type"):
            names = [value] if isinstance(value, str) else value
            unknown = [name for name in names if name not in BLOCKS_2D_TO_3D]
            if unknown:
                raise ValueError(f"unsupported {key} {unknown} (supported: {sorted(BLOCKS_2D_TO_3D)})")
            mapped = [BLOCKS_2D_TO_3D[name] for name in names]
            config[key] = mapped[0] if isinstance(value, str) else mapped
        elif key in SUPPORTED_2D_VALUES:
            if value != SUPPORTED_2D_VALUES[key]:
                raise ValueError(f"unsupported UNet setting {key}={value!r} (only {SUPPORTED_2D_VALUES[key]!r})")
        elif value not in (None, False):
            raise ValueError(f"unsupported UNet setting {key}={value!r}")
    if not isinstance(config.get("transformer_layers_per_block", 1), int):
        raise ValueError("only a single integer transformer_layers_per_block is supported")
    return config


def per_sample(value, batch: int, device) -> torch.Tensor:
    """A timestep or class label as a (batch,) tensor: from a number, a 0-d or a (batch,) tensor."""
    if not torch.is_tensor(value):
        value = torch.tensor([value], dtype=torch.float32 if isinstance(value, float) else torch.int64)
    return value.reshape(-1).to(device).expand(batch)


def embed_time(model, timestep, class_labels, batch: int, device, dtype) -> torch.Tensor:
    """(batch, time_dim): the timestep embedding, plus the class embedding where the model has one."""
    emb = model.time_embedding(model.time_proj(per_sample(timestep, batch, device)).to(dtype))
    if model.class_embedding is None:
        if class_labels is not None:
            raise ValueError("class_labels were given but the model has no class embedding")
        return emb
    if class_labels is None:
        raise ValueError("this model has a class embedding (for the VSR model, the noise level): pass class_labels")
    labels = per_sample(class_labels, batch, device)
    classes = model.class_embedding.num_embeddings
    if labels.is_floating_point() or labels.min() < 0 or labels.max() >= classes:
        raise ValueError(f"class_labels must be integer classes (noise levels in 0..{classes - 1} for the VSR model), "
                         f"got {labels.tolist()}")
    return emb + model.class_embedding(labels).to(emb.dtype)


def load_unet2d(unet2d, subfolder: str | None = None):
    """A diffusers `UNet2DConditionModel`, given as one or as a path (with an optional `subfolder`)."""
    from diffusers import UNet2DConditionModel  # heavy: loaded only when inflating

    if isinstance(unet2d, (str, os.PathLike)):
        return UNet2DConditionModel.from_pretrained(unet2d, subfolder=subfolder)
    if not isinstance(unet2d, UNet2DConditionModel):
        raise TypeError(f"expected a UNet2DConditionModel or a path to one, got {type(unet2d).__name__}")
    return unet2d


def copy_2d_weights(model, weights_2d: dict, dtype, is_temporal):
    """Load every 2D weight into the inflated `model`, strictly: each must fit a 3D tensor of the same shape,
    and every 3D tensor they leave unset must be temporal (`is_temporal(name)`). Returns the model in `dtype`."""
    weights_3d = model.state_dict()
    missing = sorted(set(weights_2d) - set(weights_3d))
    mismatched = sorted(k for k in set(weights_2d) & set(weights_3d) if weights_2d[k].shape != weights_3d[k].shape)
    unset = sorted(k for k in set(weights_3d) - set(weights_2d) if not is_temporal(k))
    if missing or mismatched or unset:
        raise ValueError(f"cannot inflate this 2D UNet: 2D weights with no 3D place {missing[:5]}, "
                         f"shape mismatches {mismatched[:5]}, 3D weights not covered {unset[:5]}")
    model.load_state_dict(weights_2d, strict=False)
    return model if dtype == model.dtype else model.to(dtype)
