"""Training a small autoencoder for a preset without pretrained weights (`tiny`): `lavie train-vae`.

The tiny preset's VAEs start random, and latent diffusion on a random autoencoder cannot show what it learned.
This trains a model folder's `vae` (or `vsr_vae`) on frames of the video shards and on the image shards:
reconstruction error weighted towards coloured pixels (see reconstruction_loss) plus a small KL term, AdamW,
one process; the held-out validation clips are left out. Afterwards the latent scaling factor is set so the
latents have unit variance, as Stable Diffusion's 0.18215 does for its VAE, and a new model folder is
written with the trained autoencoder in place (and, given a `fidelity` scorer, its held-out scores: see
lavie_model.evaluation.stand_ins.colour_fidelity). With real weights (`paper`) the pretrained VAE is used as it
is and this is not needed.
"""

import json
import math
import time
from collections.abc import Callable
from itertools import islice
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..config import load_preset
from ..model_folder import load_components
from .data import StageData, TrainingStream, consumer_stream, decode_image, expand_shards, resize_crop
from .export import replace_component
from .scenes import random_still

KL_WEIGHT = 1e-6
# Extra loss weight per unit of a pixel's saturation. The demo's frames are mostly grey, and under plain MSE
# the small autoencoder learns luminance first: after 120 steps 30 of 92 shape clips came back in their colour
# (the rest greyish or a neighbouring hue), against 91 of 92 with this weight (32 x 32, same steps and data).
CHROMA_WEIGHT = 10.0


def reconstruction_loss(reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared error per pixel, weighted by 1 + CHROMA_WEIGHT x the target pixel's saturation (max - min
    over RGB, in [0, 1]); (n, 3, H, W) in [-1, 1]. Grey pixels weigh 1, the corpus colours 5 to 9."""
    saturation = (target.amax(dim=1, keepdim=True) - target.amin(dim=1, keepdim=True)) / 2  # (n, 1, H, W)
    weight = 1 + CHROMA_WEIGHT * saturation
    return ((reconstruction - target) ** 2 * weight).sum() / (weight.sum() * target.shape[1])


def frame_batches(videos, images, size, batch_size: int, seed: int, crop: int | None = None,
                  validation_percent: float = 0.0, rendered: int = 0):
    """Endless (n, 3, H, W) batches in [-1, 1]: random single frames of clips (the validation split left out),
    plus a quarter as many images and `rendered` stills of the shapes grammar; with `crop`, a random crop x crop
    window of each (a convolutional autoencoder learns as well from crops)."""
    generator = torch.Generator().manual_seed(seed)
    scenes = np.random.default_rng(seed)
    clips = iter(TrainingStream(videos, StageData("vsr", num_frames=1, frame_stride=1, size=size), seed,
                                shuffle_buffer=256, validation_percent=validation_percent))
    pictures = consumer_stream(images, seed + 1, 0, 1, 256) if images else None
    while True:
        frames = [next(clips)["frames"][0] for _ in range(batch_size)]
        if pictures is not None:
            frames += [resize_crop(decode_image(s["jpg"], s["__key__"])[None], size)[0]
                       for s in islice(pictures, max(1, batch_size // 4))]
        frames += [resize_crop(random_still(scenes)[0][None], size)[0] for _ in range(rendered)]
        frames = torch.stack(frames)  # (n, 3, H, W)
        if crop:
            top, left = (int(torch.randint(n - crop + 1, (), generator=generator)) for n in frames.shape[2:])
            frames = frames[:, :, top:top + crop, left:left + crop]
        yield frames


def train_vae(model, videos, output, component: str = "vae", images=None, steps: int = 600, batch_size: int = 16,
              learning_rate: float = 1e-3, preset: str = "tiny", crop: int | None = 32, seed: int = 0,
              size: tuple[int, int] | None = None, rendered: int = 0, scaling_factor: float | None = None,
              fidelity: Callable[..., dict] | None = None, log=print) -> Path:
    """Train `component` of the model folder `model`; write `output`, a copy of it with the trained autoencoder.
    Frames are `size` (default: the size the preset trains that component's stages at; the x4 upscaler's is the
    super-resolution crop size), cut to random `crop` x `crop` windows (None: whole frames), `rendered` stills of
    the shapes grammar added to each batch. The latent scale is measured on whole frames: the scaling factor is
    set to give unit-variance latents, or, with `scaling_factor` (the x4 upscaler's fixed 0.08333), the latent
    space is rescaled so that this factor does. `fidelity(vae, videos, validation_percent, frames, size)` scores
    the trained autoencoder on the held-out clips (lavie_model.evaluation.stand_ins.colour_fidelity); its result
    is recorded in the folder's training info."""
    if component not in ("vae", "vsr_vae"):
        raise ValueError(f"component must be vae or vsr_vae, got {component!r}")
    torch.manual_seed(seed)
    vae = load_components(model, [component], "vae training")[0][component]
    videos = expand_shards(videos, "video shards")
    images = expand_shards(images, "image shards") if images else None
    training_preset = load_preset(preset)
    if size is None and component == "vae":
        scale = 2 ** (len(vae.config.block_out_channels) - 1)
        size = tuple(n * scale for n in training_preset["data"]["latent_size"])
    elif size is None:
        size = tuple(training_preset["training"]["vsr"]["size"])
    vae.train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=learning_rate, weight_decay=0.0)
    # cosine decay to a tenth: the last steps settle instead of jumping around the minimum
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.1 + 0.45 * (1 + math.cos(math.pi * min(step, steps) / steps)))
    if vae.config.get("mid_block_add_attention", True) and crop:
        raise ValueError(f"{component} has attention in its mid block: train it on whole frames (crop=None)")
    percent = training_preset["training"]["validation_percent"]
    batches = frame_batches(videos, images, size, batch_size, seed, crop, percent, rendered)
    history, started = [], time.perf_counter()
    for step in range(1, steps + 1):
        x = next(batches)
        posterior = vae.encode(x).latent_dist
        reconstruction = vae.decode(posterior.sample()).sample
        mse = F.mse_loss(reconstruction, x)
        loss = reconstruction_loss(reconstruction, x) + KL_WEIGHT * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        history.append({"step": step, "mse": mse.item(), "loss": loss.item()})
        if step % 50 == 0 or step == steps:
            log(f"{component} step {step}/{steps}: reconstruction MSE {mse.item():.5f} "
                f"({time.perf_counter() - started:.0f} s)")
    vae.eval()
    with torch.no_grad():  # unit-variance latents for the diffusion model
        whole = frame_batches(videos, images, size, batch_size, seed + 1, validation_percent=percent)
        latents = torch.cat([vae.encode(next(whole)).latent_dist.mean for _ in range(4)])
    if scaling_factor is None:
        vae.register_to_config(scaling_factor=float(1 / latents.std()))
    else:
        rescale_latents(vae, 1 / (scaling_factor * float(latents.std())))
    info = {"stage": component, "steps": steps, "final_mse": history[-1]["mse"],
            "scaling_factor": vae.config.scaling_factor}
    if fidelity is not None:
        info["fidelity"] = fidelity(vae, videos, percent, training_preset["data"]["num_frames"], size)
    output = replace_component(model, output, component, vae, info)
    history_file = Path(output) / component / "training_history.json"  # kept when later stages copy the folder
    history_file.write_text(json.dumps({"info": info, "history": history}) + "\n")
    return output


def rescale_latents(vae, k: float) -> None:
    """Multiply the autoencoder's latents by `k` without changing what it reconstructs: the posterior's mean
    (and its standard deviation) scaled on the way in, divided on the way out. diffusers'
    StableDiffusionUpscalePipeline sets any x4 autoencoder's scaling_factor to 0.08333; the stand-in's latents
    are made to fit that factor instead of the factor to them."""
    c = vae.config.latent_channels
    with torch.no_grad():
        vae.quant_conv.weight[:c] *= k  # the mean channels of (mean, log variance)
        vae.quant_conv.bias[:c] *= k
        vae.quant_conv.bias[c:] += 2 * math.log(k)  # variance scaled by k^2
        vae.post_quant_conv.weight /= k  # (c_out, c_in, 1, 1): each input channel back to its old scale

