"""Stage 3: video super-resolution, x4 in height and width (LaVie VSR UNet on the SD x4 upscaler)."""

import torch

from ..text import guidance_embeddings
from .common import LaVieStagePipeline, VideoPipelineOutput, check_video, decode_latents

MAX_NOISE_LEVEL = 350  # the x4 upscaler was trained with low-resolution noise levels up to this


class LaVieVSRPipeline(LaVieStagePipeline):
    components_needed = ("vsr_tokenizer", "vsr_text_encoder", "vsr_vae", "vsr_scheduler", "vsr_low_res_scheduler",
                         "unet_vsr")
    stage = "vsr"

    def __init__(self, vsr_tokenizer, vsr_text_encoder, vsr_vae, vsr_scheduler, vsr_low_res_scheduler, unet_vsr,
                 num_frames=None, height=None, width=None, fps=None, sampling=None):
        super().__init__()
        self.register_modules(vsr_tokenizer=vsr_tokenizer, vsr_text_encoder=vsr_text_encoder, vsr_vae=vsr_vae,
                              vsr_scheduler=vsr_scheduler, vsr_low_res_scheduler=vsr_low_res_scheduler,
                              unet_vsr=unet_vsr)
        self.register_settings(num_frames, height, width, fps, sampling)

    @torch.no_grad()
    def __call__(self, video, prompt, negative_prompt="blur, worst quality", num_inference_steps=None,
                 guidance_scale=None, noise_level=None, scheduler=None, generator=None, chunk_frames=8,
                 vae_chunk=4, output_type="pt"):
        """video: (b, f, 3, h, w) or (f, 3, h, w) in [0, 1] -> (b, f, 3, 4h, 4w) in [0, 1].

        The video is upscaled `chunk_frames` frames at a time and decoded `vae_chunk` frames at a time, so
        memory depends on the chunk sizes, not on the length of the video.
        """
        video = check_video(video, "video to upscale")
        steps = self.sampling_default("steps", num_inference_steps)
        guidance = self.sampling_default("guidance_scale", guidance_scale)
        noise_level = self.sampling_default("noise_level", noise_level)
        if not 0 <= noise_level <= MAX_NOISE_LEVEL:
            raise ValueError(f"noise_level must be in 0..{MAX_NOISE_LEVEL}, got {noise_level}")
        if chunk_frames < 1 or vae_chunk < 1:
            raise ValueError("chunk_frames and vae_chunk must be positive")
        kind = scheduler or self.config.sampling["vsr"].get("scheduler")

        unet = self.unet_vsr
        device, dtype = unet.device, unet.dtype
        text = guidance_embeddings(self.vsr_tokenizer, self.vsr_text_encoder, prompt, negative_prompt, guidance,
                                   device, dtype)
        batch = text.shape[0] // (2 if guidance > 1 else 1)
        if video.shape[0] != batch:
            raise ValueError(f"{video.shape[0]} videos for {batch} prompts")
        low_res = (video.to(device, dtype) * 2 - 1).transpose(1, 2)  # (b, 3, f, h, w) in [-1, 1]
        levels = torch.full((text.shape[0],), noise_level, device=device, dtype=torch.long)

        upscaled = []
        starts = range(0, low_res.shape[2], chunk_frames)
        sampler = self.scheduler_for(self.vsr_scheduler, kind)
        sampler.set_timesteps(steps)
        bar = self.progress_bar(total=len(starts) * len(sampler.timesteps))
        for start in starts:
            chunk = low_res[:, :, start:start + chunk_frames]  # (b, 3, c, h, w)
            noisy = self.vsr_low_res_scheduler.add_noise(
                chunk, self.noise(chunk.shape, generator, device, dtype), levels[:batch]
            )
            condition = torch.cat([noisy] * 2) if guidance > 1 else noisy

            def model(x, t):
                return unet(torch.cat([x, condition], dim=1), t, text, class_labels=levels).sample

            latents = self.noise((batch, self.vsr_vae.config.latent_channels, *chunk.shape[2:]), generator, device,
                                 dtype)
            latents = self.denoise(sampler, latents, model, guidance, steps, generator, progress=bar)
            upscaled.append(latents if output_type == "latent" else decode_latents(self.vsr_vae, latents, vae_chunk))
        bar.close()
        return VideoPipelineOutput(frames=torch.cat(upscaled, dim=2 if output_type == "latent" else 1))
