"""Video files: writing generated frames to mp4 or gif, reading a clip back as a tensor."""

import os
from pathlib import Path

import numpy as np
import torch

VIDEO_SUFFIXES = (".mp4", ".gif")


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """(f, 3, h, w) floats in [0, 1] -> (f, h, w, 3) uint8."""
    return (frames.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def write_video(frames: torch.Tensor, path, fps: float) -> Path:
    """Write (f, 3, h, w) frames in [0, 1] to an .mp4 (H.264, yuv420p) or .gif file, atomically."""
    path = Path(path)
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise ValueError(f"output {path} must end in {' or '.join(VIDEO_SUFFIXES)}")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot write {path}: folder {path.parent} does not exist")
    partial = path.with_name(f".{path.stem}.partial{path.suffix}")  # renamed into place once complete
    try:
        _write(to_uint8(frames), partial, fps)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def _write(pixels: np.ndarray, path: Path, fps: float) -> None:
    if path.suffix.lower() == ".gif":
        from PIL import Image

        images = [Image.fromarray(frame) for frame in pixels]
        images[0].save(path, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
        return
    import av

    height, width = pixels.shape[1:3]
    if height % 2 or width % 2:  # yuv420p needs even sizes
        pixels = np.pad(pixels, ((0, 0), (0, height % 2), (0, width % 2), (0, 0)), mode="edge")
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=round(fps))
        stream.width, stream.height = pixels.shape[2], pixels.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18"}
        for frame in pixels:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def read_video(path) -> tuple[torch.Tensor, float]:
    """All frames of a video file as (f, 3, h, w) floats in [0, 1], and its frame rate."""
    import av

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video not found: {path}")
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            fps = float(stream.average_rate or 8)
            frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
    except (av.error.FFmpegError, IndexError) as error:
        raise ValueError(f"cannot decode video {path}: {error}") from error
    if not frames:
        raise ValueError(f"video {path} has no frames")
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 255, fps


def frames_grid(videos: torch.Tensor, per_row: int, path) -> None:
    """A PNG of (n, f, 3, h, w) videos in [0, 1]: `per_row` videos side by side per row (the samples of one
    prompt), each as its first, middle and last frame, shown at twice the size."""
    from PIL import Image

    f = videos.shape[1]
    tiles = [torch.cat([v[k] for k in (0, f // 2, f - 1)], dim=2) for v in videos.clamp(0, 1)]  # (3, h, 3w)
    rows = [torch.cat(tiles[i:i + per_row], dim=2) for i in range(0, len(tiles), per_row)]
    grid = torch.cat(rows, dim=1).permute(1, 2, 0).mul(255).byte().numpy()  # (H, W, 3)
    Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.NEAREST).save(path)
