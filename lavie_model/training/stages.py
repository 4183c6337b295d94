"""What each stage trains: its UNet, its frozen parts, its data, its inputs and targets.

The cascade:
    base           noisy video latents (+ M image latents, each with its own caption) -> noise
    interpolation  noisy latents of 4K-3 consecutive frames beside every 4th frame's latents copied over
                   its slot (the sampler's conditioning) -> noise
    vsr            noisy latents of high-resolution frames beside the x4 smaller frames, noise-augmented at a
                   random level given as the class label -> velocity (the x4 upscaler's v-prediction)
The stand-ins the cascade starts from where no pretrained weights exist (tiny preset), 2D UNets in the
layout of the Stable Diffusion folders they stand in for, trained on stills:
    t2i            as base, every frame and image a still: the stand-in for Stable Diffusion's UNet
    upscaler       as vsr, every frame and image a still: the stand-in for the x4 upscaler's UNet

Random draws come from one generator per sample, seeded by (seed, rank, sample index), so a sample gets the
same noise whatever the batch size or the point a run resumed from.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from ..model_folder import UNET, load_components, present_components, untrained_unets
from ..pipelines.interpolation import interpolation_condition
from ..text import encode_prompts
from .data import StageData

FROZEN = {
    "t2i": ("tokenizer", "text_encoder", "vae", "scheduler"),
    "upscaler": ("tokenizer", "text_encoder", "vae", "scheduler", "low_res_scheduler"),
    "base": ("tokenizer", "text_encoder", "vae", "scheduler"),
    "interpolation": ("tokenizer", "text_encoder", "vae", "scheduler"),
    "vsr": ("vsr_tokenizer", "vsr_text_encoder", "vsr_vae", "vsr_scheduler", "vsr_low_res_scheduler"),
}
ENCODE_CHUNK = 16  # frames per VAE call when a step reads pixels
STILLS = ("t2i", "upscaler")  # stages whose 2D UNet sees every frame as a still
SUPER_RESOLUTION = ("upscaler", "vsr")


@dataclass
class StageParts:
    """The frozen components of a stage (the UNet is trained apart)."""

    stage: str
    tokenizer: object
    text_encoder: torch.nn.Module
    vae: torch.nn.Module
    noise_scheduler: DDPMScheduler
    low_res_scheduler: DDPMScheduler | None = None
    caption_cache: dict | None = None  # caption -> (tokens, dim) embedding, filled by `embed` when set (a dict)

    def to(self, device, dtype):
        self.text_encoder.to(device, dtype).requires_grad_(False)
        self.vae.to(device, dtype).requires_grad_(False)
        return self

    @property
    def vae_scale(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)


def check_folder(folder, stage: str) -> None:
    """Fail early, naming what a model folder lacks for training `stage`."""
    present = present_components(folder)
    needed = list(FROZEN[stage])
    if stage == "interpolation":
        if "unet_base" not in present and "unet_interpolation" not in present:
            needed.append("unet_base")
    else:
        needed.append(UNET[stage])
    missing = [name for name in needed if name not in present]
    if missing:
        raise FileNotFoundError(f"model folder {folder} lacks {', '.join(f'{m}/' for m in missing)}, "
                                f"needed to train the {stage} stage")


def load_parts(folder, stage: str) -> StageParts:
    components, _ = load_components(folder, FROZEN[stage], stage)
    prefix = "vsr_" if stage == "vsr" else ""
    low_res = components.get(f"{prefix}low_res_scheduler")
    return StageParts(stage, components[f"{prefix}tokenizer"], components[f"{prefix}text_encoder"],
                      components[f"{prefix}vae"], DDPMScheduler.from_config(components[f"{prefix}scheduler"].config),
                      low_res)


def interpolation_starts_from_base(folder) -> bool:
    """Whether the interpolation stage of a model folder starts from its base UNet, as in the paper: when it has
    one and its own interpolation UNet is missing or untrained (model_folder.UNTRAINED). A trained one (the
    released LaVie's, the shipped tiny LaVie's, an earlier run's) is fine-tuned further."""
    present = present_components(folder)
    return "unet_base" in present and ("unet_interpolation" not in present
                                       or "unet_interpolation" in untrained_unets(folder))


def load_unet(folder, stage: str, train_2d: bool = False) -> torch.nn.Module:
    """The UNet to train, in fp32. The interpolation UNet starts from the folder's base UNet where
    `interpolation_starts_from_base` (the 4 conditioning input channels start at zero), else from its own
    weights. The VSR UNet trains its temporal layers only unless `train_2d`. The stand-ins' UNets are diffusers
    2D UNets."""
    if stage in STILLS:
        from diffusers import UNet2DConditionModel

        return UNet2DConditionModel.from_pretrained(Path(folder) / UNET[stage], torch_dtype=torch.float32)
    if stage == "interpolation" and interpolation_starts_from_base(folder):
        return interpolation_from_base(load_components(folder, ["unet_base"], stage)[0]["unet_base"])
    unet = load_components(folder, [UNET[stage]], stage)[0][UNET[stage]]
    if stage == "vsr" and not train_2d:
        unet.freeze_2d_weights()
    return unet


def interpolation_from_base(base, target: str = "frames") -> torch.nn.Module:
    """An interpolation UNet holding a base UNet's weights, denoising `target` (models.unet_3d:
    INTERPOLATION_TARGETS); its extra input channels start at zero."""
    config = dict(base.config) | {"block_design": "interpolation", "in_channels": 2 * base.config.in_channels,
                                  "interpolation_target": target}
    unet = type(base).from_config(config)
    weights = base.state_dict()
    target = unet.state_dict()
    conv_in = torch.zeros_like(target["conv_in.weight"])
    conv_in[:, :base.config.in_channels] = weights["conv_in.weight"]
    # the interpolation design has no positions in its temporal attention: leave those buffers out
    unet.load_state_dict({name: weights[name] for name in target} | {"conv_in.weight": conv_in})
    return unet


def stage_data(stage: str, preset: dict, vae_scale: int) -> StageData:
    """The clips and images a stage reads, sized by the preset (pixels = latent size x the VAE's factor).
    `preset["training"]` holds the stage's settings (for the stand-ins with the preset's pretraining entries
    applied: trainer.preset_with_overrides)."""
    training, data = preset["training"], preset["data"]
    size = tuple(n * vae_scale for n in data["latent_size"])
    if stage in STILLS:  # one frame of a clip, M images and R rendered scenes per example
        if stage == "upscaler":
            size = tuple(training["vsr"]["size"])
        return StageData(stage, 1, 1, size, training["image_frames"], training["text_drop"],
                         training["rendered_frames"], held_out=True)
    if stage == "base":
        return StageData("base", data["num_frames"], training["frame_stride"], size, training["image_frames"],
                         training["text_drop"])
    if stage == "interpolation":
        return StageData("interpolation", 4 * training["interpolation"]["keyframes"] - 3, 1, size, 0,
                         training["text_drop"])
    if stage == "vsr":
        vsr = training["vsr"]
        return StageData("vsr", vsr["num_frames"], 1, tuple(vsr["size"]), 0, training["text_drop"])
    raise ValueError(f"unknown stage {stage!r}; choose one of {', '.join(UNET)}")


def sample_generators(seed: int, rank: int, first_index: int, count: int) -> list[torch.Generator]:
    """One CPU generator per sample, seeded by (seed, rank, sample index)."""
    seeds = [np.random.SeedSequence([seed, rank, first_index + i]).generate_state(1, np.uint64)[0]
             for i in range(count)]
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


def per_sample(generators, shape, device, dtype) -> torch.Tensor:
    """(b, *shape) standard normal noise, sample i from generators[i]."""
    return torch.stack([torch.randn(shape, generator=g) for g in generators]).to(device, dtype)


def low_resolution(frames: torch.Tensor) -> torch.Tensor:
    """(n, 3, H, W) in [-1, 1] -> (n, 3, H/4, W/4): what the super-resolution stages condition on."""
    return F.interpolate(frames, scale_factor=0.25, mode="bicubic", antialias=True).clamp(-1, 1)


def sampled_latents(parts: StageParts, mean: torch.Tensor, std: torch.Tensor, generators) -> torch.Tensor:
    """The VAE posterior (b, n, c, h, w) -> (b, c, n, h, w) scaled latents, sampled with each sample's generator."""
    latents = mean + std * per_sample(generators, mean.shape[1:], mean.device, mean.dtype)
    return (latents * parts.vae.config.scaling_factor).transpose(1, 2)


def pixels(batch: dict) -> torch.Tensor:
    """A pixel batch's frames then images: (b, n, 3, H, W) in [-1, 1]."""
    images = batch.get("images")
    return batch["frames"] if images is None else torch.cat([batch["frames"], images], dim=1)


def posterior(parts: StageParts, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The VAE posterior's mean and std of a batch's frames then images, (b, n, c, h, w) each: read from a
    latent batch (latents.py), or encoded here from a pixel batch."""
    device, dtype = parts.vae.device, parts.vae.dtype
    if "mean" in batch:
        mean, std = batch["mean"], batch["std"]
        if "image_mean" in batch:
            mean, std = torch.cat([mean, batch["image_mean"]], dim=1), torch.cat([std, batch["image_std"]], dim=1)
        return mean.to(device, dtype), std.to(device, dtype)
    frames = pixels(batch)
    b, n = frames.shape[:2]
    means, stds = [], []
    with torch.no_grad():  # a few frames at a time: at paper size the encoder's activations outgrow the UNet's
        for chunk in frames.flatten(0, 1).split(ENCODE_CHUNK):
            dist = parts.vae.encode(chunk.to(device, dtype)).latent_dist
            means.append(dist.mean)
            stds.append(dist.std)
    return torch.cat(means).unflatten(0, (b, n)), torch.cat(stds).unflatten(0, (b, n))


def embed(parts: StageParts, captions: list[str], stored: torch.Tensor | None = None) -> torch.Tensor:
    """(len(captions), tokens, dim): the captions' embeddings; with `stored` (a latent batch's), those, the
    dropped captions ("") embedded here. A text encoder that trains (requires_grad) keeps the graph. With
    `parts.caption_cache` each caption is encoded once and looked up after (exact only while the text encoder is
    frozen: the trainer that sets the cache sees to it)."""
    device = parts.text_encoder.device
    if stored is None and parts.caption_cache is not None:
        missing = sorted(set(captions) - parts.caption_cache.keys())
        if missing:
            encoded = encode_prompts(parts.tokenizer, parts.text_encoder, missing, device)  # (k, tokens, dim)
            parts.caption_cache.update(zip(missing, encoded))
        return torch.stack([parts.caption_cache[caption] for caption in captions])
    if stored is None:
        trains = any(p.requires_grad for p in parts.text_encoder.parameters())
        return encode_prompts(parts.tokenizer, parts.text_encoder, captions, device, grad=trains)
    stored = stored.to(device, parts.text_encoder.dtype)
    dropped = [i for i, caption in enumerate(captions) if not caption]
    if dropped:
        stored = stored.clone()
        stored[dropped] = encode_prompts(parts.tokenizer, parts.text_encoder, [""], device)
    return stored


def training_loss(unet, parts: StageParts, batch: dict, generators, max_noise_level: int = 350,
                  snr_gamma: float = 0.0, high_noise_fraction: float = 0.0) -> torch.Tensor:
    """The stage's denoising loss on one micro-batch, of pixels or of precomputed latents (the same draws
    either way): the squared error against the scheduler's target, per sample weighted by min(SNR, gamma) / SNR
    for epsilon or / (SNR + 1) for velocity targets when `snr_gamma` is set (Min-SNR weighting; 0: unweighted).
    Timesteps are uniform, except that a `high_noise_fraction` of the samples draw theirs from the noisier half
    (where the caption, not the noisy frames, has to say where things are and which way they move)."""
    device, dtype = parts.vae.device, parts.vae.dtype
    precomputed = "mean" in batch
    b, f = batch["mean" if precomputed else "frames"].shape[:2]
    text = embed(parts, batch["caption"], batch.get("text")).to(dtype)  # (b, tokens, dim)
    kwargs = {}
    if "image_captions" in batch:  # joint training: M images after the F frames, one caption each
        m = len(batch["image_captions"][0])
        stored = batch["image_text"].flatten(0, 1) if precomputed else None
        image_text = embed(parts, [c for captions in batch["image_captions"] for c in captions], stored).to(dtype)
        text = torch.cat([text[:, None].expand(-1, f, -1, -1), image_text.unflatten(0, (b, m))], dim=1)
        kwargs["num_image_frames"] = m  # text: (b, f + m, tokens, dim)
    mean, std = posterior(parts, batch)  # (b, n, c, h, w)
    n = mean.shape[1]
    # a timestep per sample, or per still for a 2D UNet
    steps = parts.noise_scheduler.config.num_train_timesteps
    counts = n if parts.stage in STILLS else 1
    timesteps = torch.stack([torch.randint(steps // 2 if high_noise_fraction and torch.rand((), generator=g)
                                           < high_noise_fraction else 0, steps, (counts,), generator=g)
                             for g in generators]).to(device)  # (b, k)

    if parts.stage in SUPER_RESOLUTION:
        low_res = batch["low_res"] if precomputed else low_resolution(pixels(batch).flatten(0, 1)).unflatten(0, (b, n))
        low_res = low_res.transpose(1, 2).to(device, dtype)  # (b, 3, n, h, w)
        levels = torch.stack([torch.randint(max_noise_level + 1, (counts,), generator=g)
                              for g in generators]).to(device)  # (b, k)
        noise = per_sample(generators, low_res.shape[1:], device, dtype)
        per_frame = levels.expand(b, n).flatten()  # (b n,): each frame's level

        def frame_major(x):  # (b, 3, n, h, w) -> (b n, 3, h, w)
            return x.transpose(1, 2).flatten(0, 1)

        low_res = parts.low_res_scheduler.add_noise(frame_major(low_res), frame_major(noise), per_frame)
        low_res = low_res.unflatten(0, (b, n)).transpose(1, 2)  # (b, 3, n, h, w), noise-augmented
        latents = sampled_latents(parts, mean, std, generators)
        condition, kwargs["class_labels"] = low_res, levels
    elif parts.stage == "interpolation":
        latents = sampled_latents(parts, mean, std, generators)  # (b, c, 4K-3, h, w)
        condition, residual_of = interpolation_condition(unet, latents[:, :, ::4])
        if residual_of is not None:
            latents = latents - residual_of  # the UNet denoises the frames' difference from the keyframes' blend
    else:
        latents = sampled_latents(parts, mean, std, generators)
        condition = None

    noise = per_sample(generators, latents.shape[1:], device, latents.dtype)  # (b, c, n, h, w)
    if parts.stage in STILLS:  # every frame a still: (b n, c, h, w), one caption and timestep each
        def flat(x):
            return x.transpose(1, 2).flatten(0, 1)

        latents, noise, timesteps = flat(latents), flat(noise), timesteps.flatten()
        condition = None if condition is None else flat(condition)
        text = text.flatten(0, 1) if text.ndim == 4 else text.repeat_interleave(n, dim=0)
        kwargs.pop("num_image_frames", None)
        if "class_labels" in kwargs:
            kwargs["class_labels"] = kwargs["class_labels"].flatten()
    else:
        timesteps = timesteps[:, 0]
        if "class_labels" in kwargs:
            kwargs["class_labels"] = kwargs["class_labels"][:, 0]
    noisy = parts.noise_scheduler.add_noise(latents, noise, timesteps)
    if condition is not None:
        noisy = torch.cat([noisy, condition], dim=1)
    prediction = unet(noisy.to(unet.dtype), timesteps, text.to(unet.dtype), **kwargs).sample
    velocity = parts.noise_scheduler.config.prediction_type == "v_prediction"
    target = parts.noise_scheduler.get_velocity(latents, noise, timesteps) if velocity else noise
    error = (prediction.float() - target.float()).pow(2).flatten(1).mean(dim=1)  # (samples,)
    if snr_gamma:
        alphas = parts.noise_scheduler.alphas_cumprod.to(device)[timesteps]
        snr = alphas / (1 - alphas)
        error = error * snr.clamp(max=snr_gamma) / (snr + 1 if velocity else snr)
    return error.mean()
