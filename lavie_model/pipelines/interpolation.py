"""Stage 2: temporal interpolation, F frames -> 4F - 3 frames (LaVie interpolation UNet)."""

import torch

from ..text import guidance_embeddings
from .common import LaVieStagePipeline, VideoPipelineOutput, check_video, decode_latents, encode_frames


def conditioning_latents(latents: torch.Tensor) -> torch.Tensor:
    """(b, c, F, h, w) -> (b, c, 4F - 3, h, w): each base latent copied over its 4-frame slot.

    Frame j of the result is base frame floor((j + 1) / 4), as in the official sampler: the F latents
    repeated 4 times, less one at the start and two at the end.
    """
    return latents.repeat_interleave(4, dim=2)[:, :, 1:-2]


def blend_keyframes(keyframes: torch.Tensor) -> torch.Tensor:
    """(b, K, c, h, w) keyframes (frames, or their latents) -> (b, 4K - 3, c, h, w): each in-between frame the
    linear blend of its two neighbouring keyframes."""
    weights = torch.arange(4, dtype=keyframes.dtype, device=keyframes.device) / 4  # (4,): 0, 1/4, 1/2, 3/4
    left, right = keyframes[:, :-1, None], keyframes[:, 1:, None]  # (b, K-1, 1, c, h, w)
    w = weights[None, None, :, None, None, None]
    between = (1 - w) * left + w * right  # (b, K-1, 4, c, h, w)
    return torch.cat([between.flatten(1, 2), keyframes[:, -1:]], dim=1)


def interpolation_condition(unet, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The conditioning latents (b, c, 4F - 3, h, w) of keyframe latents (b, c, F, h, w) for `unet`, and the
    latent blend its output is a residual of (None when it denoises the frames themselves)."""
    if unet.config.get("interpolation_target", "frames") == "blend_residual":
        blend = blend_keyframes(latents.transpose(1, 2)).transpose(1, 2)
        return blend, blend
    return conditioning_latents(latents), None


class LaVieInterpolationPipeline(LaVieStagePipeline):
    components_needed = ("tokenizer", "text_encoder", "vae", "scheduler", "unet_interpolation")
    stage = "interpolation"

    def __init__(self, tokenizer, text_encoder, vae, scheduler, unet_interpolation, num_frames=None, height=None,
                 width=None, fps=None, sampling=None):
        super().__init__()
        self.register_modules(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler,
                              unet_interpolation=unet_interpolation)
        self.register_settings(num_frames, height, width, fps, sampling)

    @torch.no_grad()
    def __call__(self, video, prompt, negative_prompt=None, num_inference_steps=None, guidance_scale=None,
                 scheduler=None, generator=None, output_type="pt", vae_chunk=8):
        """video: (b, F, 3, H, W) or (F, 3, H, W) in [0, 1] -> (b, 4F - 3, 3, H, W) in [0, 1]."""
        video = check_video(video, "video to interpolate")
        if video.shape[1] < 2:
            raise ValueError(f"interpolation needs at least 2 frames, got {video.shape[1]}")
        steps = self.sampling_default("steps", num_inference_steps)
        guidance = self.sampling_default("guidance_scale", guidance_scale)
        kind = scheduler or self.config.sampling["interpolation"].get("scheduler")
        sampler = self.scheduler_for(self.scheduler, kind)

        unet = self.unet_interpolation
        device, dtype = unet.device, unet.dtype
        text = guidance_embeddings(self.tokenizer, self.text_encoder, prompt, negative_prompt, guidance, device, dtype)
        batch = text.shape[0] // (2 if guidance > 1 else 1)
        if video.shape[0] != batch:
            raise ValueError(f"{video.shape[0]} videos for {batch} prompts")
        condition, residual_of = interpolation_condition(unet, encode_frames(self.vae, video, vae_chunk, generator))
        condition = condition.to(dtype)
        if guidance > 1:
            condition = torch.cat([condition] * 2)  # the unconditional branch sees the same video
        latents = self.noise((batch, *condition.shape[1:]), generator, device, dtype)  # (b, 4, 4F-3, h, w)

        def model(x, t):
            return unet(torch.cat([x, condition], dim=1), t, text).sample  # noisy + conditioning latents

        latents = self.denoise(sampler, latents, model, guidance, steps, generator)
        if residual_of is not None:
            latents = latents + residual_of.to(latents.dtype)
        if output_type == "latent":
            return VideoPipelineOutput(frames=latents)
        return VideoPipelineOutput(frames=decode_latents(self.vae, latents, vae_chunk))
