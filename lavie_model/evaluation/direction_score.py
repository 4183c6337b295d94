"""Which way does the base model think a clip moves? A diffusion classifier over the four direction words.

For a clip of the shapes grammar ("a red circle moving left on a gray background"), the base UNet's denoising
loss is measured with the true caption and with the same caption naming each other direction, at fixed
timesteps and fixed noises shared by the four captions; the caption with the lowest mean loss is the model's
answer (Li et al., 2023, "Your Diffusion Model is Secretly a Zero-Shot Classifier"). A tie is not an answer:
a model whose loss does not depend on the direction word scores 0, not chance.

It reads the model's conditional density directly, without sampling, so it moves long before sampled videos
follow their direction words, and it costs n x 4 x len(timesteps) x noises UNet evaluations and no sampler.

    direction_scores(unet, parts, frames, captions)  -> {"accuracy": Rate, "answers", "losses" (n, 4), ...}
"""

import numpy as np
import torch

from ..curation.demo_corpus import DIRECTIONS, Scene, parse_caption
from ..text import encode_prompts
from .interpolation import encode
from .stats import Rate

TIMESTEPS = (100, 300, 500, 700, 900)


def direction_captions(caption: str) -> list[str]:
    """The caption with each direction of DIRECTIONS in turn (in DIRECTIONS' order)."""
    parsed = parse_caption(caption)
    if parsed is None or parsed[2] is None:
        raise ValueError(f"not a moving caption of the shapes grammar: {caption!r}")
    colour, shape, _, background = parsed
    return [Scene(shape, colour, background, name, 0.0, 0.0).caption() for name in DIRECTIONS]


@torch.no_grad()
def direction_scores(unet, parts, frames: torch.Tensor, captions: list[str], timesteps=TIMESTEPS, noises: int = 2,
                     seed: int = 0, batch_size: int = 64) -> dict:
    """The diffusion classifier's direction answers for clips `frames` (n, f, 3, H, W) in [0, 1] with
    `captions` (moving captions of the shapes grammar). `parts` holds the frozen tokenizer, text encoder, VAE
    (its posterior mean is the clip's latents) and noise scheduler of the base stage (training.stages.StageParts).
    Noise j of clip i is drawn from a generator seeded by (seed, i, j), so scores are repeatable."""
    if len(frames) != len(captions):
        raise ValueError(f"{len(frames)} clips but {len(captions)} captions")
    names = list(DIRECTIONS)
    options = [direction_captions(c) for c in captions]  # (n, 4) captions; fails on a caption without direction
    truth = torch.tensor([names.index(parse_caption(c)[2]) for c in captions])  # (n,)
    device, dtype = unet.device, unet.dtype
    scheduler = parts.noise_scheduler
    velocity = scheduler.config.prediction_type == "v_prediction"
    n, f = frames.shape[:2]
    losses = torch.zeros(n, len(names), dtype=torch.float64)  # mean over the (timestep, noise) pairs
    pairs = [(t, j) for t in timesteps for j in range(noises)]
    jobs = [(i, d, k) for i in range(n) for d in range(len(names)) for k in range(len(pairs))]
    latents = encode(parts.vae, frames) * parts.vae.config.scaling_factor  # (n, f, c, h, w) posterior means
    latents = latents.transpose(1, 2).to(device, torch.float32)  # (n, c, f, h, w)
    for first in range(0, len(jobs), batch_size):
        chunk = jobs[first:first + batch_size]
        clean = latents[[i for i, _, _ in chunk]]  # (b, c, f, h, w)
        noise = torch.stack([torch.randn(clean.shape[1:], generator=torch.Generator().manual_seed(
            int(np.random.SeedSequence([seed, i, pairs[k][1]]).generate_state(1)[0]))) for i, _, k in chunk]).to(device)
        t = torch.tensor([pairs[k][0] for _, _, k in chunk], device=device)  # (b,)
        text = encode_prompts(parts.tokenizer, parts.text_encoder, [options[i][d] for i, d, _ in chunk],
                              parts.text_encoder.device).to(device, dtype)  # (b, tokens, dim)
        noisy = scheduler.add_noise(clean, noise, t)
        prediction = unet(noisy.to(dtype), t, text).sample.float()
        target = scheduler.get_velocity(clean, noise, t) if velocity else noise
        error = (prediction - target).pow(2).flatten(1).mean(dim=1).double().cpu()  # (b,)
        for (i, d, _), e in zip(chunk, error):
            losses[i, d] += e / len(pairs)
    answers = []
    for row in losses:
        winners = (row == row.min()).nonzero().flatten().tolist()
        answers.append(names[winners[0]] if len(winners) == 1 else None)  # a tie is no answer
    hits = sum(answer == names[t] for answer, t in zip(answers, truth.tolist()))
    # the true caption's loss less the mean over the four, relative to that mean: < 0 where it is preferred
    margin = (losses.gather(1, truth[:, None])[:, 0] / losses.mean(dim=1) - 1).mean()
    return {"accuracy": Rate(hits, n), "answers": answers, "losses": losses, "directions": names,
            "relative_margin": float(margin)}
