"""Stills and clips of the demo's shapes grammar rendered on the fly: pretraining data that never runs out.

The stand-ins for Stable Diffusion and the x4 upscaler (`lavie train --stage t2i|upscaler`) learn from stills
beside the curated shards; the tiny LaVie's video pretraining (training/motion.py) from clips rendered in
batches on the training device. HELD_OUT lists colour/shape/background combinations that are never rendered
for training and whose shard samples the pretraining stages skip, so that the models are scored on prompts
they have never seen (compositions of known words, not recall). Big shapes (demo_corpus.BIG_RADIUS, captioned
"a big red circle ...") are never rendered here and skipped in the shards alike: they are the concept
`make demo` fine-tunes in.

    random_still(rng)                    a still outside HELD_OUT and its caption (numpy, 128 px)
    random_scenes(rng, n)                n moving scenes outside HELD_OUT (or only inside it)
    ClipMotion                           how far and how fast a rendered clip's shape travels
    render_clips(scenes, ...)            (n, f, 3, size, size) frames in [0, 1], rendered with torch
"""

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..curation.demo_corpus import (BACKGROUNDS, COLOURS, DIRECTIONS, RADIUS, SHAPES, SIZE, Scene, background,
                                    is_big, parse_caption, render)

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
    """Whether a caption of the shapes grammar names a held-out colour/shape/background combination or a big
    shape (the demo's new concept, which pretraining never shows)."""
    parsed = parse_caption(caption)
    return parsed is not None and ((parsed[0], parsed[1], parsed[3]) in HELD_OUT or is_big(caption))


def random_still(rng: np.random.Generator) -> tuple[torch.Tensor, str]:
    """A (3, 128, 128) uint8 still of a combination outside HELD_OUT, and its caption. Half are captioned as
    stills; half as a frame of a video ("... moving left ...", the shape somewhere along its path)."""
    while True:
        colour, shape, background = (str(rng.choice(options)) for options in (list(COLOURS), SHAPES, list(BACKGROUNDS)))
        if (colour, shape, background) not in HELD_OUT:
            break
    direction = str(rng.choice(list(DIRECTIONS))) if rng.random() < 0.5 else None
    scene = Scene(shape, colour, background, direction, radius=float(rng.uniform(*RADIUS)),
                  offset=float(rng.uniform(0.3, 0.7)))
    frames = int(rng.integers(2, 17)) if direction else 1  # a frame of a clip of that many
    frame = render(scene, frames)[int(rng.integers(frames))]  # (128, 128, 3)
    caption = scene.caption() if direction else still_caption(colour, shape, background)
    return torch.from_numpy(frame).permute(2, 0, 1), caption


def random_scenes(rng: np.random.Generator, count: int, held_out: bool = False,
                  still_fraction: float = 0.0) -> list[Scene]:
    """`count` scenes of the demo grammar: combinations outside HELD_OUT (or, with `held_out`, only HELD_OUT
    ones), a direction each (None for a `still_fraction` of them), radius (never big) and offset as the demo corpus."""
    scenes = []
    while len(scenes) < count:
        if held_out:
            colour, shape, background_name = HELD_OUT[int(rng.integers(len(HELD_OUT)))]
        else:
            colour, shape, background_name = (str(rng.choice(options))
                                              for options in (list(COLOURS), SHAPES, list(BACKGROUNDS)))
            if (colour, shape, background_name) in HELD_OUT:
                continue
        direction = None if rng.random() < still_fraction else str(rng.choice(list(DIRECTIONS)))
        scenes.append(Scene(shape, colour, background_name, direction, radius=float(rng.uniform(*RADIUS)),
                            offset=float(rng.uniform(0.3, 0.7))))
    return scenes


@dataclass(frozen=True)
class ClipMotion:
    """The path of a rendered clip's shape. As in the demo corpus by default: the shape crosses `travel` of
    the frame side (centred) over a clip of `clip_frames` frames (2-4 s at the curated 8 fps); a training
    window of `num_frames` frames `stride` apart starts at a random frame of it."""

    travel: float = 0.5
    clip_frames: tuple[int, ...] = (16, 24, 32)

    def positions(self, rng: np.random.Generator, count: int, num_frames: int, stride: int) -> np.ndarray:
        """(count, num_frames) fractions 0..1 of the way along each sample's path (random clip length and
        window start)."""
        span = (num_frames - 1) * stride + 1
        lengths = rng.choice([n for n in self.clip_frames if n >= span] or [span], count)  # (count,)
        starts = np.floor(rng.random(count) * (lengths - span + 1))  # (count,)
        index = starts[:, None] + stride * np.arange(num_frames)[None]  # (count, f)
        return index / np.maximum(lengths - 1, 1)[:, None]


_BACKGROUNDS: dict = {}  # device -> (len(BACKGROUNDS), 3, SIZE, SIZE) float backgrounds in [0, 1]


def _background_stack(device) -> torch.Tensor:
    key = str(device)
    if key not in _BACKGROUNDS:
        stack = np.stack([background(name) for name in BACKGROUNDS])  # (k, SIZE, SIZE, 3) uint8
        _BACKGROUNDS[key] = torch.from_numpy(stack).permute(0, 3, 1, 2).float().div(255).to(device)
    return _BACKGROUNDS[key]


def render_clips(scenes: list[Scene], along: np.ndarray, travel: float = 0.5, size: int = 32,
                 device="cpu") -> torch.Tensor:
    """Frames of each scene at the given points of its path: `along` (n, f) fractions 0..1 (ClipMotion.positions)
    -> (n, f, 3, size, size) in [0, 1] on `device`. Drawn at the corpus's 128 px as demo_corpus.render draws
    (same backgrounds, shapes and colours; a still scene sits at its offset, mid-frame), then area-averaged
    to `size`."""
    n, f = along.shape
    if len(scenes) != n:
        raise ValueError(f"{len(scenes)} scenes for {n} rows of positions")
    start = 0.5 - travel / 2
    cx, cy = np.empty((n, f)), np.empty((n, f))
    for i, scene in enumerate(scenes):
        dx, dy = DIRECTIONS[scene.direction] if scene.direction else (0, 0)
        position = start + travel * along[i]  # (f,) along the axis of motion
        if dx:
            cx[i], cy[i] = (position if dx > 0 else 1 - position), scene.offset
        elif dy:
            cx[i], cy[i] = scene.offset, (position if dy > 0 else 1 - position)
        else:
            cx[i], cy[i] = scene.offset, 0.5

    def per_frame(values):  # (n,) or (n, f) -> (n f, 1, 1) on the device
        values = np.array(np.broadcast_to(np.asarray(values, dtype=np.float32).reshape(n, -1), (n, f)))
        return torch.from_numpy(values).to(device).reshape(n * f, 1, 1)

    x0, y0 = per_frame(cx) * SIZE, per_frame(cy) * SIZE
    r = per_frame([s.radius for s in scenes]) * SIZE
    kind = per_frame([SHAPES.index(s.shape) for s in scenes])
    grid = torch.arange(SIZE, device=device, dtype=torch.float32) + 0.5
    y, x = grid[None, :, None], grid[None, None, :]  # (1, SIZE, 1), (1, 1, SIZE)
    circle = (x - x0) ** 2 + (y - y0) ** 2 <= r**2
    square = ((x - x0).abs() <= r * 0.85) & ((y - y0).abs() <= r * 0.85)
    depth = (y - (y0 - r)) / (1.5 * r)  # the triangle points up: apex at y0 - r, base at y0 + r / 2
    triangle = (depth >= 0) & (depth <= 1) & ((x - x0).abs() <= depth * r * 0.87)
    mask = torch.where(kind == 0, circle, torch.where(kind == 1, square, triangle))  # (n f, SIZE, SIZE)

    names = list(BACKGROUNDS)
    backgrounds = _background_stack(device)[[names.index(s.background) for s in scenes]]  # (n, 3, SIZE, SIZE)
    colours = torch.tensor([COLOURS[s.colour] for s in scenes], device=device, dtype=torch.float32) / 255  # (n, 3)
    frames = torch.where(mask.view(n, f, 1, SIZE, SIZE), colours[:, None, :, None, None],
                         backgrounds[:, None])  # (n, f, 3, SIZE, SIZE)
    if size != SIZE:
        frames = F.interpolate(frames.flatten(0, 1), size=(size, size), mode="area").unflatten(0, (n, f))
    return frames
