"""Prompt adherence on the demo's moving-shapes corpus: does the video show the prompt's colour and direction?

The corpus (lavie_model.curation.demo_corpus) draws one saturated shape (COLOURS) on a grey-level background
(plain, checkered, striped or noisy grey) and moves it left, right, up or down. So the shape is whatever
differs from the background in colour, not in brightness: each frame's background colour is the median of
its border pixels, and a pixel is foreground when the difference of its 3 x 3 mean (against pixel noise)
from that colour has a chroma (max - min over RGB) above a threshold. A grey texture of any contrast has
zero chroma against a grey background, and a tinted background (a generated video's) is subtracted first.
The shape's colour is the mean of its most saturated pixels, so that edges blended with the background
(blur, low resolution) do not dull it. Checked on renders of every colour, direction and background at
128, 32 and 16 pixels, and at 32 pixels blurred with per-pixel noise up to std 0.12: all recovered.

    track(video)          per-frame centroid and foreground area, and the shape's mean colour
    named_colour(rgb)     the nearest corpus colour
    named_background(frame)  gray / white / black by brightness, checkered / striped / noisy by texture
    displacement(centroids)  net displacement of the shape, as a fraction of the frame side
    direction(centroids)  left / right / up / down from the net displacement, None when it hardly moves
    apparent_radius(track, shape)  the radius a shape of that kind with the track's median area would have
    parse_prompt(text)    (colour, shape, direction, background) of a caption of the corpus grammar, else None
    shapes_adherence      colour, direction and size hits over the prompts of that grammar, and how far the
                          shapes move

The fixed prompts the base stage is scored on (PROMPTS, and CONCEPT_PROMPTS with the new concept) live with the
grammar in lavie_model/curation/demo_corpus.py.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lavie_model.curation.demo_corpus import BACKGROUNDS, COLOURS, is_big, parse_caption

parse_prompt = parse_caption  # the grammar lives with the corpus that writes it

CHROMA_THRESHOLD = 0.15  # the least saturated corpus colour (green) has chroma 100 / 255 = 0.39
MIN_AREA = 0.004  # fraction of the frame: the smallest corpus shape (a triangle) covers about 2%
MAX_AREA = 0.3  # more than this is not one shape (colour noise, a coloured scene): no shape found
CORE = 0.75  # the shape's colour is averaged over pixels with at least this fraction of the frame's top chroma
MIN_SHIFT = 0.1  # net displacement (fraction of the frame side) below which the shape counts as still; corpus: 0.5
# A shape's area per squared radius, as demo_corpus.shape_mask draws it (the square's half side is 0.85 r; the
# triangle is 1.74 r wide and 1.5 r high), and the apparent radius from which a shape counts as big. Measured on
# 300 corpus renders at 32 and 64 px: ordinary shapes (radius 0.12-0.18) read 0.127-0.219 (a small triangle's
# blurred tip reads up to 20% large), big ones (0.25-0.29) 0.257-0.341; BIG_FROM lies midway.
AREA_PER_SQUARED_RADIUS = {"circle": math.pi, "square": 1.7**2, "triangle": 0.87 * 1.5}
BIG_FROM = 0.24


# Backgrounds: plain ones by their grey level; textures by their grey-level autocorrelation (the shape masked).
PLAIN_STD = 0.03  # grey-level std below which a background is plain (the textures: 0.08 to 0.14 at 32 px)
PLAIN_LEVELS = {name: BACKGROUNDS[name] / 255 for name in ("gray", "white", "black")}


@dataclass
class Track:
    centroids: torch.Tensor  # (f, 2) x, y as fractions of width and height; NaN where no shape was found
    areas: torch.Tensor  # (f,) foreground fraction of each frame
    colour: tuple[float, float, float] | None  # mean RGB in [0, 1] of the shape's pixels; None: never found


def track(video: torch.Tensor, chroma_threshold: float = CHROMA_THRESHOLD, min_area: float = MIN_AREA,
          max_area: float = MAX_AREA) -> Track:
    """Find the coloured shape in each frame of a (f, 3, h, w) video in [0, 1]."""
    if video.ndim != 4 or video.shape[1] != 3:
        raise ValueError(f"expected a video of shape (f, 3, h, w), got {tuple(video.shape)}")
    h, w = video.shape[-2:]
    video = video.detach().float().cpu().clamp(0, 1)
    border = torch.cat([video[..., 0, :], video[..., -1, :], video[..., 1:-1, 0], video[..., 1:-1, -1]], dim=-1)
    background = border.median(dim=-1).values  # (f, 3)
    smooth = F.avg_pool2d(video, 3, stride=1, padding=1, count_include_pad=False)  # (f, 3, h, w): less pixel noise
    difference = smooth - background[:, :, None, None]  # (f, 3, h, w)
    chroma = difference.amax(dim=1) - difference.amin(dim=1)  # (f, h, w)
    mask = (chroma > chroma_threshold).float()  # (f, h, w)
    areas = mask.mean(dim=(1, 2))  # (f,)
    found = (areas >= min_area) & (areas <= max_area)  # (f,)

    ys = ((torch.arange(h) + 0.5) / h)[:, None]  # (h, 1)
    xs = ((torch.arange(w) + 0.5) / w)[None, :]  # (1, w)
    count = mask.sum(dim=(1, 2)).clamp_min(1)  # (f,)
    centroids = torch.stack([(mask * xs).sum(dim=(1, 2)) / count, (mask * ys).sum(dim=(1, 2)) / count], dim=-1)
    centroids[~found] = math.nan  # (f, 2)

    # the colour from the shape's core: edge pixels blended with the background (blur, resizing) would dull it
    core = (mask > 0) & (chroma >= CORE * chroma.amax(dim=(1, 2), keepdim=True)) & found[:, None, None]
    shape_pixels = video.permute(0, 2, 3, 1)[core]  # (k, 3)
    colour = tuple(shape_pixels.mean(dim=0).tolist()) if len(shape_pixels) else None
    return Track(centroids, areas, colour)


def named_colour(rgb: tuple[float, float, float] | None) -> str | None:
    """The corpus colour nearest to an RGB triple in [0, 1] (Euclidean in RGB); None for None."""
    if rgb is None:
        return None
    return min(COLOURS, key=lambda name: sum((c / 255 - x) ** 2 for c, x in zip(COLOURS[name], rgb)))


def shifted_correlation(grey: torch.Tensor, dy: int, dx: int) -> float:
    """Pearson correlation of an (h, w) image with itself shifted by (dy, dx) pixels (the overlap only)."""
    h, w = grey.shape
    a = grey[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)]
    b = grey[max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).mean() / (a.std(unbiased=False) * b.std(unbiased=False)).clamp_min(1e-8))


def named_background(frame: torch.Tensor, chroma_threshold: float = CHROMA_THRESHOLD) -> str:
    """The corpus background of a (3, h, w) frame in [0, 1]: plain ones (gray, white, black) by the grey level
    around the shape, textures by their structure at the corpus's scales: the checkerboard (squares of 1/8 of
    the side) anticorrelates with itself shifted by one square, the diagonal stripes correlate along their
    direction and not across it, and block noise does neither."""
    if frame.ndim != 3 or frame.shape[0] != 3:
        raise ValueError(f"expected a frame of shape (3, h, w), got {tuple(frame.shape)}")
    frame = frame.detach().float().cpu().clamp(0, 1)
    h, w = frame.shape[1:]
    border = torch.cat([frame[:, 0], frame[:, -1], frame[:, 1:-1, 0], frame[:, 1:-1, -1]], dim=-1)  # (3, n)
    difference = frame - border.median(dim=-1).values[:, None, None]  # (3, h, w)
    shape = (difference.amax(dim=0) - difference.amin(dim=0)) > chroma_threshold  # (h, w)
    shape = F.max_pool2d(shape[None, None].float(), 3, stride=1, padding=1)[0, 0] > 0  # and its blended edge
    grey = frame.mean(dim=0)  # (h, w)
    around = grey[~shape] if (~shape).any() else grey.flatten()
    if around.std(unbiased=False) < PLAIN_STD:
        level = float(around.mean())
        return min(PLAIN_LEVELS, key=lambda name: abs(PLAIN_LEVELS[name] - level))
    grey = torch.where(shape, around.median(), grey)  # the shape painted over with the background's middle
    square, step = max(1, round(h / 8)), max(1, round(h / 32))
    along, across = shifted_correlation(grey, step, -step), shifted_correlation(grey, step, step)
    if along - across > 0.5:
        return "striped"
    if (shifted_correlation(grey, square, 0) + shifted_correlation(grey, 0, square)) / 2 < -0.4:
        return "checkered"
    return "noisy"


def net_shift(centroids: torch.Tensor) -> tuple[float, float] | None:
    """(dx, dy) from the first to the last found centroid of (f, 2) centroids, as fractions of the width and the
    height; None when fewer than two frames have a centroid."""
    valid = centroids[~centroids.isnan().any(dim=-1)]  # (k, 2)
    if len(valid) < 2:
        return None
    dx, dy = (valid[-1] - valid[0]).tolist()
    return dx, dy


def displacement(centroids: torch.Tensor) -> float | None:
    """The length of the net shift (fraction of the frame side); None when fewer than two frames have a centroid."""
    shift = net_shift(centroids)
    return None if shift is None else math.hypot(*shift)


def direction(centroids: torch.Tensor, min_shift: float = MIN_SHIFT) -> str | None:
    """left / right / up / down: the main axis of the displacement from the first to the last found centroid.

    None when fewer than two frames have a centroid or the shape moved less than `min_shift` (frame fraction).
    """
    shift = net_shift(centroids)
    if shift is None or math.hypot(*shift) < min_shift:
        return None
    dx, dy = shift
    if abs(dx) >= abs(dy):
        return "right" if dx > 0 else "left"
    return "down" if dy > 0 else "up"  # image rows grow downwards


def apparent_radius(found: Track, shape: str) -> float | None:
    """The radius (fraction of the frame side) of a `shape` whose area is the track's median over the frames where
    a shape was found; None when none was."""
    areas = found.areas[~found.centroids.isnan().any(dim=-1)]  # (k,)
    if not len(areas):
        return None
    return math.sqrt(float(areas.median()) / AREA_PER_SQUARED_RADIUS[shape])


def shapes_adherence(videos, prompts: list[str]) -> dict:
    """Colour, direction and size adherence of videos ((b, f, 3, h, w) or a list of (f, 3, h, w), in [0, 1]).

    Only prompts of the corpus grammar count (`n`): `colour_hits` and `direction_hits` of them, and their
    accuracies (NaN when n is 0). A "standing still" prompt is followed when no direction is found. `big` of them
    name a big shape (the demo's new concept), `big_hits` of those show one (apparent radius >= BIG_FROM). How the
    shapes move, whatever the prompt: `moving` counts the samples whose net displacement is at least MIN_SHIFT,
    `mean_displacement` is the mean displacement (fraction of the frame side) over the samples where a shape
    was found in two frames or more (NaN when none). `per_sample` has one dict per video.
    """
    if len(videos) != len(prompts):
        raise ValueError(f"{len(videos)} videos but {len(prompts)} prompts")
    per_sample, n, colour_hits, direction_hits, big, big_hits, moving, shifts = [], 0, 0, 0, 0, 0, 0, []
    for video, prompt in zip(videos, prompts):
        result = track(video)
        colour, moved, shift = named_colour(result.colour), direction(result.centroids), displacement(result.centroids)
        parsed = parse_prompt(prompt)
        sample = {"prompt": prompt, "colour": colour, "direction": moved, "displacement": shift, "radius": None,
                  "expected_colour": None, "expected_direction": None, "colour_ok": None, "direction_ok": None,
                  "big": None}
        if parsed is not None:
            expected_colour, shape, expected_direction, _ = parsed
            radius = apparent_radius(result, shape)
            sample.update(expected_colour=expected_colour, expected_direction=expected_direction,
                          colour_ok=colour == expected_colour, direction_ok=moved == expected_direction,
                          radius=radius, big=radius is not None and radius >= BIG_FROM)
            n += 1
            colour_hits += sample["colour_ok"]
            direction_hits += sample["direction_ok"]
            if is_big(prompt):
                big += 1
                big_hits += sample["big"]
            moving += moved is not None
            if shift is not None:
                shifts.append(shift)
        per_sample.append(sample)
    return {"colour_accuracy": colour_hits / n if n else math.nan,
            "direction_accuracy": direction_hits / n if n else math.nan, "n": n, "colour_hits": colour_hits,
            "direction_hits": direction_hits, "big": big, "big_hits": big_hits, "moving": moving,
            "mean_displacement": sum(shifts) / len(shifts) if shifts else math.nan, "per_sample": per_sample}
