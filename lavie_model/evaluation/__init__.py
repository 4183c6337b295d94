"""Evaluation metrics in plain PyTorch (no Dagster here), as functions over video tensors (b, f, 3, h, w) in [0, 1].

    metrics.py  CLIPSIM, temporal consistency, PSNR, SSIM, Frechet distance and FVD with a pluggable video
                feature extractor (the StyleGAN-V I3D TorchScript file, or a labelled fallback without weights)
    shapes.py   prompt adherence on the demo's moving-shapes corpus: a colour-and-motion tracker, a background
                recogniser
    stats.py    rates counted on n samples, with their 95% Wilson interval and a binomial p-value; a model and a
                reference compared clip by clip (paired_comparison)
    stand_ins.py  held-out scores of the pretrained stand-ins (t2i adherence, upscaler PSNR, the autoencoders'
                colour fidelity) and the trainer's probes
"""

from .metrics import (
    clipsim,
    frechet_distance,
    fvd,
    load_video_extractor,
    psnr,
    ssim,
    temporal_consistency,
    video_features,
)
from .shapes import direction, displacement, named_background, named_colour, parse_prompt, shapes_adherence, track
from .stats import Rate, binomial_p, wilson

__all__ = [
    "Rate", "binomial_p", "clipsim", "direction", "displacement", "frechet_distance", "fvd", "load_video_extractor",
    "named_background", "named_colour", "parse_prompt", "psnr", "shapes_adherence", "ssim", "temporal_consistency",
    "track", "video_features", "wilson",
]
