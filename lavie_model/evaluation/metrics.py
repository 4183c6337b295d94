"""Video metrics as plain functions over tensors: CLIPSIM, temporal consistency, PSNR, SSIM and FVD.

Videos are (b, f, 3, h, w) float tensors in [0, 1].

    clipsim               mean CLIP cosine between each caption and each frame of its video (not x100 as in
                          torchmetrics' CLIPScore); CLIP comes from lavie_model.curation.scores.load_clip
    temporal_consistency  mean CLIP image-embedding cosine of consecutive frames
    psnr, ssim            per frame (SSIM per frame and channel: Gaussian window 11, sigma 1.5), averaged
    fvd                   Frechet distance between the video features of two sets, from a pluggable extractor:
                          the StyleGAN-V I3D TorchScript file, or a fallback that needs no weights (whose
                          values are NOT comparable to published FVD)
"""

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


PSNR_MIN_MSE = 1e-10  # identical frames score 10 * log10(1 / 1e-10) = 100 dB instead of infinity
SSIM_WINDOW, SSIM_SIGMA = 11, 1.5
SSIM_C1, SSIM_C2 = 0.01**2, 0.03**2  # (K1 L)^2, (K2 L)^2 for data range L = 1
FALLBACK_SEED = 0
FALLBACK_SIZE = 64  # frame side the fallback extractor sees
MOTION_GAIN = 8.0  # weight of the frame differences in the fallback (tuned on the demo shapes)
FALLBACK_NAME = f"fallback:random-conv3d(seed={FALLBACK_SEED}) (NOT I3D; not comparable to published FVD)"


def _check_videos(videos: torch.Tensor) -> None:
    if videos.ndim != 5 or videos.shape[2] != 3:
        raise ValueError(f"expected videos of shape (b, f, 3, h, w), got {tuple(videos.shape)}")


def _check_pair(a: torch.Tensor, b: torch.Tensor) -> None:
    _check_videos(a)
    if a.shape != b.shape:
        raise ValueError(f"the two sets of videos differ in shape: {tuple(a.shape)} and {tuple(b.shape)}")


# ---------------------------------------------------------------------------------------------------------- CLIP


@torch.no_grad()
def frame_embeddings(model, preprocess, videos: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """(b, f, d) normalised CLIP image embeddings of every frame, resized and normalised by `preprocess`.

    `model` and `preprocess` are those of `load_clip`; its transform works on batches of [0, 1] tensors as on
    PIL images (shortest-side bicubic resize, centre crop, mean/std normalisation).
    """
    _check_videos(videos)
    b, f = videos.shape[:2]
    device = next(model.parameters()).device
    embeddings = []
    for chunk in videos.flatten(0, 1).split(batch_size):  # (n, 3, h, w)
        pixels = preprocess(chunk.to(device).float())  # (n, 3, s, s)
        embeddings.append(F.normalize(model.encode_image(pixels).float(), dim=-1).cpu())  # (n, d)
    return torch.cat(embeddings).reshape(b, f, -1)


@torch.no_grad()
def clipsim(model, preprocess, tokenizer, videos: torch.Tensor, captions: list[str], batch_size: int = 64) -> float:
    """CLIPSIM: the mean cosine between each caption's text embedding and each frame of its video."""
    if len(captions) != len(videos):
        raise ValueError(f"{len(videos)} videos but {len(captions)} captions")
    images = frame_embeddings(model, preprocess, videos, batch_size)  # (b, f, d)
    device = next(model.parameters()).device
    texts = F.normalize(model.encode_text(tokenizer(list(captions)).to(device)).float(), dim=-1).cpu()  # (b, d)
    return float(torch.einsum("bfd,bd->bf", images, texts).mean())


@torch.no_grad()
def temporal_consistency(model, preprocess, videos: torch.Tensor, batch_size: int = 64) -> float:
    """The mean cosine between the CLIP image embeddings of consecutive frames."""
    if videos.ndim != 5 or videos.shape[1] < 2:
        raise ValueError(f"temporal consistency needs videos (b, f >= 2, 3, h, w), got {tuple(videos.shape)}")
    images = frame_embeddings(model, preprocess, videos, batch_size)  # (b, f, d)
    return float((images[:, 1:] * images[:, :-1]).sum(-1).mean())


# ---------------------------------------------------------------------------------------------------- PSNR, SSIM


def psnr_per_video(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(b,): each video's mean per-frame PSNR in dB for data range 1 (capped at 100 dB for identical frames)."""
    _check_pair(a, b)
    mse = (a.float() - b.float()).pow(2).mean(dim=(2, 3, 4))  # (b, f)
    return (10 * torch.log10(1 / mse.clamp_min(PSNR_MIN_MSE))).mean(dim=1)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean per-frame PSNR in dB for data range 1 (capped at 100 dB for identical frames)."""
    return float(psnr_per_video(a, b).mean())


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """(size, size) normalised 2D Gaussian."""
    x = torch.arange(size, dtype=torch.float32) - (size - 1) / 2  # (size,)
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return torch.outer(g, g)


@torch.no_grad()
def ssim(a: torch.Tensor, b: torch.Tensor, frames_per_chunk: int = 16) -> float:
    """Mean SSIM (Wang et al. 2004) per frame and channel: Gaussian window 11, sigma 1.5, valid positions only.

    Equals skimage's structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
    data_range=1) averaged over channels. Frames are processed `frames_per_chunk` at a time to bound memory.
    """
    _check_pair(a, b)
    h, w = a.shape[-2:]
    if min(h, w) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs frames of at least {SSIM_WINDOW} x {SSIM_WINDOW} pixels, got {h} x {w}")
    window = gaussian_window().to(a.device)[None, None]  # (1, 1, 11, 11)
    total, count = 0.0, 0
    for x, y in zip(a.flatten(0, 1).split(frames_per_chunk), b.flatten(0, 1).split(frames_per_chunk)):
        x = x.float().reshape(-1, 1, h, w)  # (n * 3, 1, h, w): each channel its own image
        y = y.float().reshape(-1, 1, h, w)
        mu_x, mu_y = F.conv2d(x, window), F.conv2d(y, window)  # (n * 3, 1, h - 10, w - 10)
        var_x = F.conv2d(x * x, window) - mu_x**2
        var_y = F.conv2d(y * y, window) - mu_y**2
        cov = F.conv2d(x * y, window) - mu_x * mu_y
        ssim_map = ((2 * mu_x * mu_y + SSIM_C1) * (2 * cov + SSIM_C2)) / (
            (mu_x**2 + mu_y**2 + SSIM_C1) * (var_x + var_y + SSIM_C2))
        total += float(ssim_map.mean(dim=(1, 2, 3)).sum())
        count += len(ssim_map)
    return total / count


# ----------------------------------------------------------------------------------------------------------- FVD


def _as_float64(features) -> np.ndarray:
    if isinstance(features, torch.Tensor):
        features = features.detach().cpu().double().numpy()
    return np.asarray(features, dtype=np.float64)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix."""
    values, vectors = np.linalg.eigh(matrix)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(feats_a, feats_b) -> float:
    """Frechet distance between Gaussians fitted to two (n, d) feature sets (numpy or torch).

    |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)), with the covariance normalised by n as StyleGAN-V's
    FeatureStats does. tr((S_a S_b)^(1/2)) is computed in float64 as the sum of the square roots of the
    eigenvalues of the symmetric PSD matrix S_a^(1/2) S_b S_a^(1/2) (same eigenvalues as S_a S_b), which
    avoids scipy.linalg.sqrtm's complex round-off.
    """
    a, b = _as_float64(feats_a), _as_float64(feats_b)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"expected two (n, d) feature sets of the same d, got {a.shape} and {b.shape}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"need at least 2 samples per set for a covariance, got {len(a)} and {len(b)}")
    mu_a, mu_b = a.mean(0), b.mean(0)  # (d,)
    sigma_a = np.atleast_2d(np.cov(a, rowvar=False, bias=True))  # (d, d)
    sigma_b = np.atleast_2d(np.cov(b, rowvar=False, bias=True))
    root_a = _psd_sqrt(sigma_a)
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ sigma_b @ root_a), 0, None)).sum()
    value = np.square(mu_a - mu_b).sum() + np.trace(sigma_a) + np.trace(sigma_b) - 2 * cross
    return max(float(value), 0.0)  # >= 0 exactly; round-off can leave about -1e-12


class I3DExtractor:
    """The StyleGAN-V I3D (Kinetics-400, a TorchScript port of the tf.hub model of the original FVD).

    Called exactly as StyleGAN-V's src/metrics/frechet_video_distance.py and metric_utils.py call it:
    `detector(x, rescale=True, resize=True, return_features=True)` on x of shape (n, 3, t, h, w), uint8 in
    [0, 255]; the module itself rescales to [-1, 1] and resizes to 224 x 224, and returns the 400 logits
    before the softmax. Published FVDs (StyleGAN-V, LaVie's UCF-101 figure) use 16-frame clips.
    """

    def __init__(self, path, device: str = "cpu"):
        from lavie_model.curation.scores import require_file

        path = require_file(path, "I3D TorchScript file (i3d_torchscript.pt of StyleGAN-V)")
        self.model = torch.jit.load(str(path), map_location=device).eval()
        self.device = device
        self.name = f"i3d:{Path(path).name}"

    @torch.no_grad()
    def __call__(self, videos: torch.Tensor) -> torch.Tensor:
        _check_videos(videos)
        pixels = (videos.float().clamp(0, 1) * 255).round().to(torch.uint8)  # (n, f, 3, h, w)
        pixels = pixels.permute(0, 2, 1, 3, 4).contiguous().to(self.device)  # (n, 3, f, h, w)
        return self.model(pixels, rescale=True, resize=True, return_features=True).float().cpu()  # (n, 400)


class FallbackExtractor:
    """A frozen, randomly initialised 3D conv net (fixed seed): video features without any weights file.

    Frames are resized to 64 x 64; the net sees 6 channels per frame, the frame in [-1, 1] and its temporal
    difference to the next frame x MOTION_GAIN (so that a still video is far from a moving one); three strided
    3 x 3 x 3 convolutions (16, 32, 32 channels, He-normal weights, zero biases) with ReLU and global average
    pooling give 32 features: few, so that a few dozen videos per set estimate their covariance. On the demo
    shapes, frozen motion, blur, lower contrast and colour noise each score several times the distance
    between two halves of one set; the values are NOT comparable to published FVD, which needs the I3D.
    """

    name = FALLBACK_NAME

    def __init__(self, device: str = "cpu"):
        layers, channels = [], 6
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(FALLBACK_SEED)
            for index, width in enumerate((16, 32, 32)):
                conv = torch.nn.Conv3d(channels, width, 3, stride=(1, 2, 2) if index == 0 else 2, padding=1)
                torch.nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
                torch.nn.init.zeros_(conv.bias)
                layers += [conv, torch.nn.ReLU()]
                channels = width
        self.net = torch.nn.Sequential(*layers, torch.nn.AdaptiveAvgPool3d(1), torch.nn.Flatten())
        self.net.eval().requires_grad_(False).to(device)
        self.device = device

    @torch.no_grad()
    def __call__(self, videos: torch.Tensor) -> torch.Tensor:
        _check_videos(videos)
        x = videos.to(self.device).float().permute(0, 2, 1, 3, 4)  # (n, 3, f, h, w)
        x = F.interpolate(x, size=(x.shape[2], FALLBACK_SIZE, FALLBACK_SIZE), mode="trilinear", align_corners=False)
        motion = torch.diff(x, dim=2, append=x[:, :, -1:])  # (n, 3, f, 64, 64): 0 for the last frame
        return self.net(torch.cat([x * 2 - 1, motion * MOTION_GAIN], dim=1)).cpu()  # (n, 32)


def load_video_extractor(path=None, device: str = "cpu") -> I3DExtractor | FallbackExtractor:
    """The StyleGAN-V I3D from a local TorchScript file, or without a path the labelled fallback extractor."""
    return I3DExtractor(path, device) if path is not None else FallbackExtractor(device)


def video_features(extractor, videos: torch.Tensor | Iterable[torch.Tensor], batch_size: int = 16) -> torch.Tensor:
    """(n, d) features of a (n, f, 3, h, w) tensor of videos, or of an iterable of such batches."""
    batches = videos.split(batch_size) if isinstance(videos, torch.Tensor) else videos
    return torch.cat([extractor(batch) for batch in batches])


def fvd(extractor, real_videos, fake_videos, batch_size: int = 16) -> dict:
    """FVD between two sets of videos (tensors (n, f, 3, h, w) in [0, 1], or iterables of such batches)."""
    real = video_features(extractor, real_videos, batch_size)  # (n_real, d)
    fake = video_features(extractor, fake_videos, batch_size)  # (n_fake, d)
    return {"value": frechet_distance(real, fake), "extractor": extractor.name,
            "n_real": len(real), "n_fake": len(fake)}
