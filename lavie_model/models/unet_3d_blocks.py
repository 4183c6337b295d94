"""Down, mid and up blocks of the inflated UNet; same structure and tensor names as Stable Diffusion's."""

import torch
from torch import nn

from .attention import Transformer3DModel
from .resnet import Downsample, ResnetBlock3D, Upsample


class _Block(nn.Module):
    """Runs a layer directly, or under activation checkpointing when enabled and training."""

    def __init__(self):
        super().__init__()
        self.gradient_checkpointing = False

    def run(self, layer, *args):
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return self._gradient_checkpointing_func(layer, *args)
        return layer(*args)


class DownBlock3D(_Block):
    def __init__(self, in_channels, out_channels, temb_channels, num_layers, add_downsample, resnet_kwargs,
                 downsample_padding=1):
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock3D(in_channels if i == 0 else out_channels, out_channels, temb_channels, **resnet_kwargs)
            for i in range(num_layers)
        )
        self.downsamplers = nn.ModuleList([Downsample(out_channels, downsample_padding)]) if add_downsample else None

    def forward(self, x, temb, text, num_frames, num_image_frames):
        skips = ()
        for resnet in self.resnets:
            x = self.run(resnet, x, temb, num_frames, num_image_frames)
            skips += (x,)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            skips += (x,)
        return x, skips


class CrossAttnDownBlock3D(DownBlock3D):
    transformer_class = Transformer3DModel  # the VSR model substitutes its own transformer

    def __init__(self, in_channels, out_channels, temb_channels, num_layers, add_downsample, resnet_kwargs,
                 attention_kwargs, downsample_padding=1):
        super().__init__(in_channels, out_channels, temb_channels, num_layers, add_downsample, resnet_kwargs,
                         downsample_padding)
        self.attentions = nn.ModuleList(
            self.transformer_class(out_channels, **attention_kwargs) for _ in range(num_layers)
        )

    def forward(self, x, temb, text, num_frames, num_image_frames):
        skips = ()
        for resnet, attn in zip(self.resnets, self.attentions):
            x = self.run(resnet, x, temb, num_frames, num_image_frames)
            x = self.run(attn, x, text, num_frames, num_image_frames)
            skips += (x,)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            skips += (x,)
        return x, skips


class UNetMidBlock3DCrossAttn(_Block):
    transformer_class = Transformer3DModel

    def __init__(self, channels, temb_channels, resnet_kwargs, attention_kwargs, num_layers=1):
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock3D(channels, channels, temb_channels, **resnet_kwargs) for _ in range(num_layers + 1)
        )
        self.attentions = nn.ModuleList(self.transformer_class(channels, **attention_kwargs) for _ in range(num_layers))

    def forward(self, x, temb, text, num_frames, num_image_frames):
        x = self.run(self.resnets[0], x, temb, num_frames, num_image_frames)
        for attn, resnet in zip(self.attentions, self.resnets[1:]):
            x = self.run(attn, x, text, num_frames, num_image_frames)
            x = self.run(resnet, x, temb, num_frames, num_image_frames)
        return x


class UpBlock3D(_Block):
    def __init__(self, in_channels, prev_output_channels, out_channels, temb_channels, num_layers, add_upsample,
                 resnet_kwargs):
        super().__init__()
        self.resnets = nn.ModuleList()
        for i in range(num_layers):
            skip_channels = in_channels if i == num_layers - 1 else out_channels
            resnet_in = prev_output_channels if i == 0 else out_channels
            self.resnets.append(ResnetBlock3D(resnet_in + skip_channels, out_channels, temb_channels, **resnet_kwargs))
        self.upsamplers = nn.ModuleList([Upsample(out_channels)]) if add_upsample else None

    def layers(self):
        return [(resnet, None) for resnet in self.resnets]

    def forward(self, x, skips, temb, text, num_frames, num_image_frames, upsample_size=None):
        """skips: the matching down-path activations, consumed last-first."""
        for resnet, attn in self.layers():
            x, skips = torch.cat([x, skips[-1]], dim=1), skips[:-1]  # (b*t, c + c_skip, h, w)
            x = self.run(resnet, x, temb, num_frames, num_image_frames)
            if attn is not None:
                x = self.run(attn, x, text, num_frames, num_image_frames)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, upsample_size)
        return x


class CrossAttnUpBlock3D(UpBlock3D):
    transformer_class = Transformer3DModel

    def __init__(self, in_channels, prev_output_channels, out_channels, temb_channels, num_layers, add_upsample,
                 resnet_kwargs, attention_kwargs):
        super().__init__(in_channels, prev_output_channels, out_channels, temb_channels, num_layers, add_upsample,
                         resnet_kwargs)
        self.attentions = nn.ModuleList(
            self.transformer_class(out_channels, **attention_kwargs) for _ in range(num_layers)
        )

    def layers(self):
        return list(zip(self.resnets, self.attentions))


def build_blocks(block_out_channels, down_block_types, up_block_types, layers_per_block, time_dim, resnet_kwargs,
                 attention_kwargs, downsample_padding=1, mid_block_scale_factor=1.0,
                 cross_attention_blocks=(CrossAttnDownBlock3D, UNetMidBlock3DCrossAttn, CrossAttnUpBlock3D)):
    """The down, mid and up blocks of a Stable-Diffusion-shaped UNet, channel bookkeeping as in diffusers.

    attention_kwargs(i, part): the transformer settings of level i, part "down", "mid" or "up";
    cross_attention_blocks: the classes of the blocks with attention (the VSR model has its own).
    """
    down_class, mid_class, up_class = cross_attention_blocks
    n = len(block_out_channels)
    if len(down_block_types) != n or len(up_block_types) != n:
        raise ValueError(f"need {n} down and up block types for block_out_channels={block_out_channels}")
    down_blocks = nn.ModuleList()
    for i, kind in enumerate(down_block_types):
        args = (block_out_channels[max(i - 1, 0)], block_out_channels[i], time_dim, layers_per_block, i < n - 1,
                resnet_kwargs)
        if kind == "CrossAttnDownBlock3D":
            down_blocks.append(down_class(*args, attention_kwargs(i, "down"), downsample_padding))
        elif kind == "DownBlock3D":
            down_blocks.append(DownBlock3D(*args, downsample_padding))
        else:
            raise ValueError(f"unsupported down block type {kind!r}")
    mid_block = mid_class(block_out_channels[-1], time_dim,
                          dict(resnet_kwargs, output_scale_factor=mid_block_scale_factor),
                          attention_kwargs(n - 1, "mid"))
    up_blocks = nn.ModuleList()
    reversed_channels = list(reversed(block_out_channels))
    for i, kind in enumerate(up_block_types):
        args = (reversed_channels[min(i + 1, n - 1)], reversed_channels[max(i - 1, 0)], reversed_channels[i],
                time_dim, layers_per_block + 1, i < n - 1, resnet_kwargs)
        if kind == "CrossAttnUpBlock3D":
            up_blocks.append(up_class(*args, attention_kwargs(n - 1 - i, "up")))
        elif kind == "UpBlock3D":
            up_blocks.append(UpBlock3D(*args))
        else:
            raise ValueError(f"unsupported up block type {kind!r}")
    return down_blocks, mid_block, up_blocks
