"""Inflated ResNet blocks and resamplers: 2D convolutions applied to every frame.

Activations are (batch * frames, channels, height, width), so a 2D convolution is an inflated 3D one
with no reshaping. GroupNorm is the one place where frames can interact: the official LaVie models
normalise over all frames of a video at once (`group_norm_across_frames=True`, needed to reproduce the
released checkpoints); a model inflated from Stable Diffusion normalises each frame on its own, so that
it starts out as the image model. Still-image frames of a joint batch are always normalised alone.
"""

import torch
import torch.nn.functional as F
from torch import nn


def frame_group_norm(norm: nn.GroupNorm, x, num_frames: int, num_image_frames: int, across_frames: bool):
    """GroupNorm over x: (b*t, c, h, w); across_frames pools the statistics of each video's frames."""
    if not across_frames or num_image_frames == num_frames:
        return norm(x)
    bt, c, h, w = x.shape
    video_frames = num_frames - num_image_frames
    x5 = x.view(bt // num_frames, num_frames, c, h, w)  # (b, t, c, h, w)
    video = x5[:, :video_frames].transpose(1, 2)  # (b, c, f, h, w)
    video = F.group_norm(video, norm.num_groups, norm.weight, norm.bias, norm.eps).transpose(1, 2)
    if num_image_frames:
        images = norm(x5[:, video_frames:].reshape(-1, c, h, w)).view(-1, num_image_frames, c, h, w)
        video = torch.cat([video, images], dim=1)
    return video.reshape(bt, c, h, w)


class ResnetBlock3D(nn.Module):
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        temb_channels: int,
        groups: int = 32,
        eps: float = 1e-5,
        output_scale_factor: float = 1.0,
        group_norm_across_frames: bool = False,
    ):
        super().__init__()
        self.output_scale_factor = output_scale_factor
        self.across_frames = group_norm_across_frames
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb_channels, out_channels)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps)
        self.dropout = nn.Dropout(0.0)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x, temb, num_frames: int, num_image_frames: int):
        """x: (b*t, c_in, h, w); temb: (b, temb_channels), one per video -> (b*t, c_out, h, w)."""
        h = F.silu(frame_group_norm(self.norm1, x, num_frames, num_image_frames, self.across_frames))
        h = self.conv1(h)
        bt, c, height, width = h.shape
        temb = self.time_emb_proj(F.silu(temb))  # (b, c_out)
        h = (h.view(-1, num_frames, c, height, width) + temb[:, None, :, None, None]).view(bt, c, height, width)
        h = F.silu(frame_group_norm(self.norm2, h, num_frames, num_image_frames, self.across_frames))
        h = self.conv2(self.dropout(h))
        shortcut = x if self.conv_shortcut is None else self.conv_shortcut(x)
        return (shortcut + h) / self.output_scale_factor


class Downsample(nn.Module):
    def __init__(self, channels: int, padding: int = 1):
        super().__init__()
        self.padding = padding
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=padding)

    def forward(self, x):
        if self.padding == 0:  # diffusers' asymmetric padding for downsample_padding=0
            x = F.pad(x, (0, 1, 0, 1))
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x, size=None):
        """x: (b*t, c, h, w) -> (b*t, c, 2h, 2w), or to `size` when the skip connection is odd-sized."""
        x = F.interpolate(x, scale_factor=2.0, mode="nearest") if size is None else F.interpolate(x, size=size)
        return self.conv(x)
