"""The interpolation stage's references: what a model that fills in frames between keyframes must beat, and its
ceiling, each as PSNR on the filled-in frames of each clip (so that a model is compared with them clip by clip,
stats.paired_comparison).

    hold_keyframes       each frame its nearest keyframe
    blend_keyframes      each frame the linear blend of its two neighbouring keyframes (pipelines/interpolation.py)
    interpolation_references(vae, clips)  PSNR per clip of the hold, the pixel blend, the latent blend decoded and
                         the VAE round trip of the truth (the ceiling of any model whose frames pass through that VAE)
"""

import torch

from ..pipelines.interpolation import blend_keyframes
from .metrics import psnr_per_video

VAE_CHUNK = 8  # frames the autoencoder encodes or decodes at a time


def hold_keyframes(keyframes: torch.Tensor) -> torch.Tensor:
    """(b, K, c, h, w) keyframes -> (b, 4K - 3, c, h, w): each frame its nearest keyframe (the earlier one halfway,
    as the interpolation UNet's conditioning latents are copied)."""
    nearest = (torch.arange(4 * keyframes.shape[1] - 3) + 1) // 4  # (4K - 3,): 0, 0, 0, 1, 1, 1, 1, 2, ...
    return keyframes[:, nearest]


@torch.no_grad()
def encode(vae, frames: torch.Tensor) -> torch.Tensor:
    """(b, f, 3, H, W) frames in [0, 1] -> (b, f, c, h, w): the autoencoder's posterior means (unscaled)."""
    flat = (frames.flatten(0, 1) * 2 - 1).to(vae.device, vae.dtype)  # (b f, 3, H, W)
    latents = torch.cat([vae.encode(part).latent_dist.mean.float().cpu() for part in flat.split(VAE_CHUNK)])
    return latents.unflatten(0, frames.shape[:2])


@torch.no_grad()
def decode(vae, latents: torch.Tensor) -> torch.Tensor:
    """(b, f, c, h, w) unscaled latents -> (b, f, 3, H, W) frames in [0, 1]."""
    flat = latents.flatten(0, 1).to(vae.device, vae.dtype)  # (b f, c, h, w)
    frames = torch.cat([vae.decode(part).sample.float().cpu() for part in flat.split(VAE_CHUNK)])
    return ((frames + 1) / 2).clamp(0, 1).unflatten(0, latents.shape[:2])


def interpolation_references(vae, truth: torch.Tensor) -> dict[str, torch.Tensor]:
    """(b,) PSNR per clip on the in-between frames of (b, 4K - 3, 3, h, w) clips in [0, 1], from their every 4th
    frame, of the interpolation stage's four references: hold the nearest keyframe, blend the two neighbouring
    keyframes, blend their latents under `vae` and decode, and the `vae` round trip of the true frames (the ceiling
    for a model whose frames pass through that autoencoder). Their means are the metrics of the same names."""
    between = torch.arange(truth.shape[1]) % 4 != 0  # the frames filled in; the keyframes are given
    keyframes, target = truth[:, ::4], truth[:, between]  # (b, K, 3, h, w), (b, 3K - 3, 3, h, w)
    latent_blend = decode(vae, blend_keyframes(encode(vae, keyframes))[:, between])
    return {"interpolation/psnr_hold": psnr_per_video(hold_keyframes(keyframes)[:, between], target),
            "interpolation/psnr_blend": psnr_per_video(blend_keyframes(keyframes)[:, between], target),
            "interpolation/psnr_latent_blend": psnr_per_video(latent_blend, target),
            "interpolation/psnr_vae": psnr_per_video(decode(vae, encode(vae, target)), target)}
