"""What the stage pipelines share: scheduler choice, the guided denoising loop, chunked VAE coding."""

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import DDIMScheduler, DDPMScheduler, DiffusionPipeline, EulerDiscreteScheduler
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from ..config import load_preset
from ..model_folder import load_components

SCHEDULERS = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler, "euler": EulerDiscreteScheduler}


@dataclass
class VideoPipelineOutput(BaseOutput):
    """frames: (b, f, 3, h, w) in [0, 1]; or latents (b, c, f, h, w) when output_type="latent"."""

    frames: torch.Tensor


class LaVieStagePipeline(DiffusionPipeline):
    """Base class of the stage pipelines: loading from a model folder and the shared sampling steps."""

    components_needed: tuple = ()
    stage: str = ""

    @classmethod
    def from_pretrained(cls, path, torch_dtype=None):
        """Load the components this pipeline needs from a LaVie model folder; missing ones are named."""
        components, settings = load_components(path, cls.components_needed, cls.stage, torch_dtype)
        return cls(**components, **settings)

    @property
    def unet(self) -> torch.nn.Module:
        return getattr(self, self.components_needed[-1])  # unet_base, unet_interpolation or unet_vsr

    def load_lora(self, path, scale: float = 1.0, adapter_name: str | None = None) -> str:
        """Add the LoRA adapter in folder `path` (lavie train --lora) to this stage's UNet at `scale`, beside any
        loaded before; returns its name (default: the folder's name). An adapter of another stage or another
        base model is refused, naming both."""
        from ..finetune.lora import adapter_names, base_identity, load_adapter

        names = adapter_names(self.unet)
        name = adapter_name or Path(path).resolve().name
        if name in names:
            raise ValueError(f"an adapter named {name!r} is loaded already: pass another adapter_name")
        device, dtype = self.unet.device, self.unet.dtype
        load_adapter(self.unet, path, self.stage, base_identity(self.unet), name)
        self.unet.to(device, dtype)
        scales = getattr(self, "_lora_scales", {}) | {name: scale}
        self.set_adapters(list(scales), list(scales.values()))
        return name

    def set_adapters(self, names, scales) -> None:
        """Activate the loaded adapters `names` at `scales` (one each; 0 turns one off exactly)."""
        from ..finetune.lora import set_adapters

        set_adapters(self.unet, names, scales)
        self._lora_scales = dict(zip(names, scales))

    def register_settings(self, num_frames, height, width, fps, sampling):
        """Generation defaults; those a model folder does not give are the paper preset's (sizes through
        Stable Diffusion's 8x VAE, the official sampling settings)."""
        paper = load_preset("paper")
        latent_height, latent_width = paper["data"]["latent_size"]
        self.register_to_config(
            num_frames=num_frames or paper["data"]["num_frames"], height=height or 8 * latent_height,
            width=width or 8 * latent_width, fps=fps or paper["data"]["fps"], sampling=sampling or paper["sampling"])

    def sampling_default(self, name, value):
        return self.config.sampling[self.stage][name] if value is None else value

    def scheduler_for(self, scheduler, kind):
        """The stored scheduler, or the same noise schedule in another sampler (`ddpm`, `ddim`, `euler`)."""
        if kind is None:
            return scheduler
        if kind not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {kind!r}; choose one of {', '.join(SCHEDULERS)}")
        return SCHEDULERS[kind].from_config(scheduler.config)

    def denoise(self, scheduler, latents, model, guidance_scale, num_inference_steps, generator, progress=None):
        """The classifier-free guided sampling loop; `model(x, t)` predicts the model output for x.

        progress: a progress bar to advance per step (one is made when none is given).
        """
        scheduler.set_timesteps(num_inference_steps, device=latents.device)
        latents = latents * scheduler.init_noise_sigma
        bar = progress if progress is not None else self.progress_bar(total=len(scheduler.timesteps))
        for t in scheduler.timesteps:
            x = torch.cat([latents] * 2) if guidance_scale > 1 else latents
            prediction = model(scheduler.scale_model_input(x, t), t)
            if guidance_scale > 1:
                uncond, cond = prediction.chunk(2)
                prediction = uncond + guidance_scale * (cond - uncond)
            latents = scheduler.step(prediction, t, latents, generator=generator).prev_sample
            bar.update()
        if progress is None:
            bar.close()
        return latents

    @staticmethod
    def noise(shape, generator, device, dtype):
        return randn_tensor(shape, generator=generator, device=device, dtype=dtype)


def decode_latents(vae, latents: torch.Tensor, chunk: int) -> torch.Tensor:
    """(b, c, f, h, w) latents -> (b, f, 3, H, W) frames in [0, 1] on the CPU, `chunk` frames at a time.

    Decoded chunks go to host memory at once, so device memory holds one chunk whatever the video length.
    """
    b, c, f, h, w = latents.shape
    flat = latents.transpose(1, 2).reshape(b * f, c, h, w) / vae.config.scaling_factor
    frames = torch.cat([vae.decode(part.to(vae.dtype)).sample.float().cpu() for part in flat.split(chunk)])
    return (frames / 2 + 0.5).clamp(0, 1).reshape(b, f, *frames.shape[1:])


def encode_frames(vae, frames: torch.Tensor, chunk: int, generator) -> torch.Tensor:
    """(b, f, 3, H, W) frames in [0, 1] -> (b, c, f, h, w) scaled latents, `chunk` frames at a time."""
    b, f = frames.shape[:2]
    flat = (frames.flatten(0, 1) * 2 - 1).to(vae.device, vae.dtype)
    latents = torch.cat([vae.encode(part).latent_dist.sample(generator) for part in flat.split(chunk)])
    latents = latents * vae.config.scaling_factor
    return latents.reshape(b, f, *latents.shape[1:]).transpose(1, 2)  # (b, c, f, h, w)


def check_video(video: torch.Tensor, what: str) -> torch.Tensor:
    """A (b, f, 3, h, w) or (f, 3, h, w) video in [0, 1], as (b, f, 3, h, w)."""
    if not torch.is_tensor(video):
        raise TypeError(f"{what} must be a tensor of frames, got {type(video).__name__}")
    video = video[None] if video.ndim == 4 else video
    if video.ndim != 5 or video.shape[2] != 3:
        raise ValueError(f"{what} must be (batch, frames, 3, height, width), got {tuple(video.shape)}")
    return video
