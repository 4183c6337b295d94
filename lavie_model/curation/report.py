"""Pictures for people: score histograms (PNG) and clip previews (GIF), as bytes for reports and metadata."""

import io
from pathlib import Path

import numpy as np

from .probe import open_input


def histogram_png(values, title: str, bins: int = 20) -> bytes:
    """A small histogram of the finite `values` as PNG bytes (an empty plot says so)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    figure, axis = plt.subplots(figsize=(4, 2.4), dpi=80)
    if values.size:
        axis.hist(values, bins=bins, color="#4c72b0")
    else:
        axis.text(0.5, 0.5, "no values", ha="center", va="center", transform=axis.transAxes)
    axis.set_title(f"{title} (n={values.size})", fontsize=9)
    axis.tick_params(labelsize=7)
    figure.tight_layout()
    out = io.BytesIO()
    figure.savefig(out, format="png")
    plt.close(figure)
    return out.getvalue()


def preview_gif(path, size: int = 96, max_frames: int = 24, fps: float = 8) -> bytes:
    """The first `max_frames` frames of a clip, short side `size`, as an animated GIF."""
    frames = []
    with open_input(Path(path)) as container:
        for frame in container.decode(container.streams.video[0]):
            image = frame.to_image()
            scale = size / min(image.size)
            frames.append(image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale)))))
            if len(frames) == max_frames:
                break
    if not frames:
        raise ValueError(f"no frame decodes in {path}")
    out = io.BytesIO()
    frames[0].save(out, format="GIF", save_all=True, append_images=frames[1:], duration=round(1000 / fps), loop=0)
    return out.getvalue()
