"""Stage 1: text -> base video (LaVie base UNet)."""

import torch

from ..text import guidance_embeddings
from .common import LaVieStagePipeline, VideoPipelineOutput, decode_latents


class LaVieBasePipeline(LaVieStagePipeline):
    components_needed = ("tokenizer", "text_encoder", "vae", "scheduler", "unet_base")
    stage = "base"

    def __init__(self, tokenizer, text_encoder, vae, scheduler, unet_base, num_frames=None, height=None, width=None,
                 fps=None, sampling=None):
        super().__init__()
        self.register_modules(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler,
                              unet_base=unet_base)
        self.register_settings(num_frames, height, width, fps, sampling)

    @torch.no_grad()
    def __call__(self, prompt, negative_prompt=None, num_frames=None, height=None, width=None,
                 num_inference_steps=None, guidance_scale=None, scheduler=None, generator=None,
                 output_type="pt", vae_chunk=8):
        """Generate (b, num_frames, 3, height, width) frames in [0, 1] for one or more prompts."""
        num_frames = num_frames or self.config.num_frames
        height, width = height or self.config.height, width or self.config.width
        steps = self.sampling_default("steps", num_inference_steps)
        guidance = self.sampling_default("guidance_scale", guidance_scale)
        sampler = self.scheduler_for(self.scheduler, scheduler or self.config.sampling["base"].get("scheduler"))
        scale = self.vae_scale_factor
        if height % scale or width % scale:
            raise ValueError(f"height and width must be multiples of {scale}, got {height}x{width}")

        device, dtype = self.unet_base.device, self.unet_base.dtype
        text = guidance_embeddings(self.tokenizer, self.text_encoder, prompt, negative_prompt, guidance, device, dtype)
        batch = text.shape[0] // (2 if guidance > 1 else 1)
        shape = (batch, self.unet_base.config.in_channels, num_frames, height // scale, width // scale)
        latents = self.noise(shape, generator, device, dtype)  # (b, 4, f, h, w)
        latents = self.denoise(sampler, latents, lambda x, t: self.unet_base(x, t, text).sample, guidance, steps,
                               generator)
        if output_type == "latent":
            return VideoPipelineOutput(frames=latents)
        return VideoPipelineOutput(frames=decode_latents(self.vae, latents, vae_chunk))

    @property
    def vae_scale_factor(self):
        return 2 ** (len(self.vae.config.block_out_channels) - 1)
