"""Stills of the demo's shapes grammar rendered on the fly: pretraining data that never runs out.

The stand-ins for Stable Diffusion and the x4 upscaler (`lavie train --stage t2i|upscaler`) learn from these
beside the curated shards. HELD_OUT lists colour/shape/background combinations that are never rendered for
training and whose shard samples the pretraining stages skip, so that the stand-ins are scored on prompts
they have never seen (compositions of known words, not recall).
"""

import numpy as np
import torch

from ..curation.demo_corpus import BACKGROUNDS, COLOURS, DIRECTIONS, SHAPES, Scene, parse_caption, render

# Each colour twice, each background twice, each shape four times.
HELD_OUT = (
    ("red", "circle", "gray"), ("red", "square", "striped"),
    ("green", "square", "white"), ("green", "triangle", "noisy"),
    ("blue", "triangle", "black"), ("blue", "circle", "checkered"),
    ("yellow", "circle", "checkered"), ("yellow", "triangle", "white"),
    ("orange", "square", "noisy"), ("orange", "circle", "black"),
    ("purple", "triangle", "striped"), ("purple", "square", "gray"),
)


def still_caption(colour: str, shape: str, background: str) -> str:
    """The caption of a shape still, as the demo corpus writes it: "a red circle on a gray background"."""
    article = "an" if colour[0] in "aeiou" else "a"
    return f"{article} {colour} {shape} on a {background} background"


def held_out_prompts() -> list[str]:
    return [still_caption(*combination) for combination in HELD_OUT]


def is_held_out(caption: str) -> bool:
    """Whether a caption of the shapes grammar names a held-out colour/shape/background combination."""
    parsed = parse_caption(caption)
    return parsed is not None and (parsed[0], parsed[1], parsed[3]) in HELD_OUT


def random_still(rng: np.random.Generator) -> tuple[torch.Tensor, str]:
    """A (3, 128, 128) uint8 still of a combination outside HELD_OUT, and its caption. Half are captioned as
    stills; half as a frame of a video ("... moving left ...", the shape somewhere along its path)."""
    while True:
        colour, shape, background = (str(rng.choice(options)) for options in (list(COLOURS), SHAPES, list(BACKGROUNDS)))
        if (colour, shape, background) not in HELD_OUT:
            break
    direction = str(rng.choice(list(DIRECTIONS))) if rng.random() < 0.5 else None
    scene = Scene(shape, colour, background, direction, radius=float(rng.uniform(0.12, 0.18)),
                  offset=float(rng.uniform(0.3, 0.7)))
    frames = int(rng.integers(2, 17)) if direction else 1  # a frame of a clip of that many
    frame = render(scene, frames)[int(rng.integers(frames))]  # (128, 128, 3)
    caption = scene.caption() if direction else still_caption(colour, shape, background)
    return torch.from_numpy(frame).permute(2, 0, 1), caption
