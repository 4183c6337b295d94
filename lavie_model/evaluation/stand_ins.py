"""Scores of the pretrained stand-ins on what they never trained on, and of the base stage on the shapes grammar.

    t2i_adherence    samples of the text-to-image stand-in for the held-out prompts (scenes.HELD_OUT): the share
                     showing the named colour and the named background
    held_out_frames  stills of held-out combinations, rendered at a given size, for the upscaler
    upscaler_psnr    PSNR of those stills upscaled x4 from x4 smaller copies, beside plain bicubic upscaling
    colour_fidelity  how well held-out clips survive an autoencoder's round trip: PSNR, and the shapes' colours
    probe            the trainer's periodic score of a stage's EMA weights (`evaluate_every`): one of the above,
                     or for the base stage shapes_adherence on the evaluation prompts

The 2D stand-ins are sampled with diffusers' own StableDiffusionPipeline and StableDiffusionUpscalePipeline, so
the numbers are those a user of the folders with diffusers gets.
"""

import numpy as np
import torch
import torch.nn.functional as F

from ..curation.demo_corpus import PROMPTS
from ..training.data import resize_crop, validation_clips
from ..training.scenes import HELD_OUT, held_out_prompts, still_caption
from .metrics import psnr
from .shapes import named_background, named_colour, parse_prompt, shapes_adherence, track

PROBE_SAMPLES_PER_PROMPT = 4
PROBE_STEPS = 20
FIDELITY_CLIPS = 32  # held-out clips the autoencoders' colour check reconstructs


def t2i_pipeline(unet, tokenizer, text_encoder, vae, scheduler):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=DDIMScheduler.from_config(scheduler.config), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def t2i_images(pipe, prompts: list[str], size: tuple[int, int], steps: int = PROBE_STEPS,
               guidance: float = 7.5, seed: int = 0, batch: int = 16) -> torch.Tensor:
    """(n, 3, h, w) samples in [0, 1] of a StableDiffusionPipeline, one per prompt, from one seeded generator."""
    generator = torch.Generator(pipe.unet.device).manual_seed(seed)
    return torch.cat([pipe(prompts[i:i + batch], height=size[0], width=size[1], num_inference_steps=steps,
                           guidance_scale=guidance, generator=generator, output_type="pt").images.float().cpu()
                      for i in range(0, len(prompts), batch)])


def still_adherence(images: torch.Tensor, prompts: list[str]) -> dict:
    """Colour and background accuracy of stills (n, 3, h, w) in [0, 1] for prompts of the shapes grammar."""
    colour = background = 0
    per_sample = []
    for image, prompt in zip(images, prompts, strict=True):
        parsed = parse_prompt(prompt)
        if parsed is None:
            raise ValueError(f"prompt outside the shapes grammar: {prompt!r}")
        seen = {"colour": named_colour(track(image[None]).colour), "background": named_background(image)}
        colour += seen["colour"] == parsed[0]
        background += seen["background"] == parsed[3]
        per_sample.append({"prompt": prompt} | seen)
    n = len(prompts)
    return {"colour": colour / n, "background": background / n, "n": n, "per_sample": per_sample}


def t2i_adherence(pipe, size, prompts: list[str] | None = None, samples_per_prompt: int = PROBE_SAMPLES_PER_PROMPT,
                  steps: int = PROBE_STEPS, guidance: float = 7.5, seed: int = 0) -> dict:
    """still_adherence of the stand-in's samples for the held-out prompts (or `prompts`), and the samples."""
    prompts = [p for p in (prompts or held_out_prompts()) for _ in range(samples_per_prompt)]
    images = t2i_images(pipe, prompts, size, steps, guidance, seed)
    return still_adherence(images, prompts) | {"images": images}


def held_out_frames(size: tuple[int, int], per_combination: int = 2, seed: int = 0) -> tuple[torch.Tensor, list[str]]:
    """(n, 3, h, w) stills in [0, 1] of the held-out combinations, the shape at random places, and captions."""
    from ..curation.demo_corpus import Scene, render

    rng = np.random.default_rng(seed)
    frames, captions = [], []
    for colour, shape, background in HELD_OUT:
        for _ in range(per_combination):
            scene = Scene(shape, colour, background, None, float(rng.uniform(0.12, 0.18)), float(rng.uniform(0.3, 0.7)))
            frames.append(resize_crop(torch.from_numpy(render(scene, 1)).permute(0, 3, 1, 2), size)[0])
            captions.append(still_caption(colour, shape, background))
    return (torch.stack(frames) + 1) / 2, captions


def upscaler_pipeline(unet, tokenizer, text_encoder, vae, scheduler, low_res_scheduler):
    """diffusers' x4 upscaling pipeline over these components. It sets its autoencoder's scaling_factor to the
    x4 upscaler's 0.08333 whatever it was, so it gets a copy: the trainer's own must not change under it."""
    import copy

    from diffusers import DDIMScheduler, StableDiffusionUpscalePipeline

    pipe = StableDiffusionUpscalePipeline(vae=copy.deepcopy(vae), text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                          low_res_scheduler=low_res_scheduler,
                                          scheduler=DDIMScheduler.from_config(scheduler.config))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def upscaler_psnr(pipe, frames: torch.Tensor, captions: list[str], steps: int = PROBE_STEPS,
                  guidance: float = 5.0, noise_level: int = 50, seed: int = 0, batch: int = 16) -> dict:
    """PSNR of (n, 3, H, W) frames in [0, 1] upscaled x4 by the pipeline from antialiased x4 smaller copies,
    beside plain bicubic upscaling of the same copies; and the upscaled frames."""
    small = F.interpolate(frames, scale_factor=0.25, mode="bicubic", antialias=True).clamp(0, 1)  # (n, 3, h, w)
    generator = torch.Generator(pipe.unet.device).manual_seed(seed)
    upscaled = torch.cat([
        pipe(captions[i:i + batch], image=small[i:i + batch], num_inference_steps=steps, guidance_scale=guidance,
             noise_level=noise_level, negative_prompt=["blur, worst quality"] * len(captions[i:i + batch]),
             generator=generator, output_type="pt").images.float().cpu()
        for i in range(0, len(captions), batch)])
    bicubic = F.interpolate(small, scale_factor=4, mode="bicubic").clamp(0, 1)
    return {"psnr": psnr(upscaled[:, None], frames[:, None]), "psnr_bicubic": psnr(bicubic[:, None], frames[:, None]),
            "n": len(frames), "upscaled": upscaled}


SAMPLES_LOGGED = 4  # samples the probe hands the trainer to show in TensorBoard


def probe(unet, parts, preset: dict) -> dict:
    """Held-out scores of a stage's UNet during training: t2i colour and background on the held-out prompts,
    upscaler PSNR against bicubic on held-out stills, base colour and direction on the evaluation prompts; and
    for t2i and base, `samples`: (videos (n, f, 3, h, w) in [0, 1], their prompts), a few of those it scored."""
    from diffusers import DDPMScheduler

    unet.eval()
    sampling = preset["sampling"]
    if parts.stage == "t2i":
        size = tuple(n * parts.vae_scale for n in preset["data"]["latent_size"])
        pipe = t2i_pipeline(unet, parts.tokenizer, parts.text_encoder, parts.vae, parts.noise_scheduler)
        result = t2i_adherence(pipe, size, guidance=sampling["base"]["guidance_scale"])
        prompts = held_out_prompts()[:SAMPLES_LOGGED]
        step = len(result["images"]) // len(held_out_prompts())  # samples per prompt
        samples = (result["images"][::step][:SAMPLES_LOGGED].unsqueeze(1).cpu(), prompts)
    elif parts.stage == "upscaler":
        pipe = upscaler_pipeline(unet, parts.tokenizer, parts.text_encoder, parts.vae, parts.noise_scheduler,
                                 parts.low_res_scheduler)
        frames, captions = held_out_frames(tuple(preset["training"]["vsr"]["size"]))
        result = upscaler_psnr(pipe, frames, captions, guidance=sampling["vsr"]["guidance_scale"],
                               noise_level=sampling["vsr"]["noise_level"])
    elif parts.stage == "base":
        from ..model_folder import generation_settings
        from ..pipelines import LaVieBasePipeline

        pipe = LaVieBasePipeline(parts.tokenizer, parts.text_encoder, parts.vae,
                                 DDPMScheduler.from_config(parts.noise_scheduler.config), unet,
                                 **generation_settings(preset, parts.vae_scale))
        pipe.set_progress_bar_config(disable=True)
        prompts = [p for p in PROMPTS for _ in range(2)]
        generator = torch.Generator(unet.device).manual_seed(0)
        videos = torch.cat([pipe(prompts[i:i + 8], num_inference_steps=PROBE_STEPS, generator=generator).frames
                            for i in range(0, len(prompts), 8)])
        adherence = shapes_adherence(videos, prompts)
        result = {"colour": adherence["colour_accuracy"], "direction": adherence["direction_accuracy"],
                  "n": adherence["n"]}
        samples = (videos[::2][:SAMPLES_LOGGED].cpu(), prompts[::2][:SAMPLES_LOGGED])
    else:
        raise ValueError(f"no probe for the {parts.stage} stage: set evaluate_every to 0")
    unet.train()
    scores = {name: value for name, value in result.items() if isinstance(value, (int, float))}
    return scores | ({"samples": samples} if parts.stage in ("t2i", "base") else {})


def validation_stills(videos, preset: dict, size: tuple[int, int], count: int = 16) -> tuple[torch.Tensor, list[str]]:
    """The middle frame of up to `count` held-out validation clips at `size`: (n, 3, h, w) in [0, 1], captions."""
    clips = validation_clips(videos, preset["training"]["validation_percent"], count, 1, size)
    if not clips:
        return torch.zeros(0, 3, *size), []
    return torch.stack([clip["frames"][0] for clip in clips]), [clip["caption"] for clip in clips]


def colour_fidelity(vae, videos, validation_percent: float, frames: int, size) -> dict:
    """How well held-out clips survive encoding and decoding: PSNR, and for captions of the demo's shapes
    grammar whether the shape keeps its colour (shapes_adherence on the reconstructions; `n` such clips)."""
    clips = validation_clips(videos, validation_percent, FIDELITY_CLIPS, frames, size)
    if not clips:
        return {"clips": 0, "n": 0, "colour_accuracy": None, "psnr": None}
    real = torch.stack([clip["frames"] for clip in clips])  # (b, f, 3, H, W) in [0, 1]
    with torch.no_grad():
        latents = vae.encode(real.flatten(0, 1) * 2 - 1).latent_dist.mean
        decoded = ((vae.decode(latents).sample + 1) / 2).clamp(0, 1).unflatten(0, real.shape[:2])
    adherence = shapes_adherence(decoded, [clip["caption"] for clip in clips])
    return {"clips": len(clips), "n": adherence["n"], "psnr": psnr(decoded, real),
            "colour_accuracy": adherence["colour_accuracy"] if adherence["n"] else None}


def score_stand_ins(sd, upscaler, videos, preset: str = "tiny", samples_per_prompt: int = 8) -> dict:
    """Held-out scores of a pair of stand-in folders: t2i colour and background adherence on the held-out prompts,
    upscaler PSNR against bicubic on held-out stills and on validation clip frames, and both autoencoders' PSNR
    (and the 2x one's shape colours kept) on validation clips."""
    from ..config import load_preset
    from ..model_folder import load_components

    config = load_preset(preset)
    sampling = config["sampling"]
    parts = load_components(sd, ["tokenizer", "text_encoder", "vae", "unet", "scheduler"], "t2i")[0]
    scale = 2 ** (len(parts["vae"].config.block_out_channels) - 1)
    size = tuple(n * scale for n in config["data"]["latent_size"])
    pipe = t2i_pipeline(parts["unet"], parts["tokenizer"], parts["text_encoder"], parts["vae"], parts["scheduler"])
    guidance = sampling["base"]["guidance_scale"]
    t2i = t2i_adherence(pipe, size, samples_per_prompt=samples_per_prompt, guidance=guidance)
    fidelity = colour_fidelity(parts["vae"], videos, config["training"]["validation_percent"],
                               config["data"]["num_frames"], size)

    up = load_components(upscaler, ["tokenizer", "text_encoder", "vae", "unet", "scheduler", "low_res_scheduler"],
                         "upscaler")[0]
    pipe = upscaler_pipeline(up["unet"], up["tokenizer"], up["text_encoder"], up["vae"], up["scheduler"],
                             up["low_res_scheduler"])
    vsr_size = tuple(config["training"]["vsr"]["size"])
    options = {"guidance": sampling["vsr"]["guidance_scale"], "noise_level": sampling["vsr"]["noise_level"]}
    held_out = upscaler_psnr(pipe, *held_out_frames(vsr_size), **options)
    frames, captions = validation_stills(videos, config, vsr_size)
    clips = upscaler_psnr(pipe, frames, captions, **options) if captions else {"psnr": None, "psnr_bicubic": None}
    with torch.no_grad():
        reconstructed = (up["vae"].decode(up["vae"].encode(frames * 2 - 1).latent_dist.mean).sample + 1) / 2
    return {
        "t2i": {"colour": t2i["colour"], "background": t2i["background"], "n": t2i["n"],
                "prompts": len(HELD_OUT), "samples_per_prompt": samples_per_prompt, "steps": PROBE_STEPS,
                "guidance": guidance},
        "upscaler": {"psnr": held_out["psnr"], "psnr_bicubic": held_out["psnr_bicubic"], "n": held_out["n"],
                     "clips_psnr": clips["psnr"], "clips_psnr_bicubic": clips["psnr_bicubic"], "clips_n": len(captions),
                     "steps": PROBE_STEPS, **options},
        "autoencoders": {"vae_psnr": fidelity["psnr"], "vae_colour": fidelity["colour_accuracy"],
                         "shape_clips": fidelity["n"], "clips": fidelity["clips"],
                         "upscaler_vae_psnr": psnr(reconstructed.clamp(0, 1)[:, None], frames[:, None])
                         if captions else None},
    }
