"""Scores of each clip, computed once and stored, so that filters can be re-tuned without recomputing them.

    clip_score      mean cosine between the caption's CLIP text embedding and each sampled frame's image
                    embedding (CLIPSIM; CLIP ViT-L/14 gives about 0.2-0.3 for a matching caption); NaN without
                    a caption
    clip_embedding  the sampled frames' normalised image embeddings averaged and normalised again (for dedup)
    aesthetic       a LAION-style head (one linear layer, or the LAION MLP) on clip_embedding; NaN without a head
    motion          mean Farneback optical-flow magnitude in pixels per frame, on grey frames whose short side
                    is `motion_size` pixels (so clips of any resolution are comparable), over `motion_pairs`
                    evenly spaced pairs of consecutive frames (every pair of a shorter clip); as the clip writer
                    measured it (writer.py) where it used these settings, else measured here on the clip file
    width, height, duration, and the labels of the models that produced the scores

Nothing is downloaded: CLIP weights come from a local open_clip checkpoint, or, with `clip_weights=None`,
a tiny randomly initialised CLIP is built from the open_clip config below (for tests and the demo; its
scores mean nothing and its `clip_model` label says "tiny-random").

CLIP sees the stills the clip writer kept (its frames before compression, as JPEG) where they hold the sampled
frames; otherwise the frames are decoded from the clip file.
"""

from __future__ import annotations  # torch in annotations: it and open_clip load in the functions that use them

import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from .filtering import has_caption
from .probe import open_input
from .writer import ClipMeasure, Motion, kept_stills, sample_indices

# An open_clip model config with CLIP's tokenizer. Its image is one 32 x 32 patch, so that, untrained, it acts
# about like a random projection of the pixels and only frames that look alike get near-duplicate embeddings
# (untrained with the usual small patches, almost every pair of demo clips has a cosine above 0.98).
TINY_CLIP = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "patch_size": 32, "width": 256, "head_width": 64, "layers": 2, "pool_type": "avg"},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
TINY_CLIP_SEED = 0  # the tiny CLIP is the same model on every call
TINY_CLIP_LABEL = "tiny-random"
SCORE_COLUMNS = ["clip_id", "clip_score", "clip_embedding", "aesthetic", "motion", "width", "height", "duration",
                 "clip_model", "aesthetic_model"]
NEEDED_COLUMNS = ["clip_id", "path", "caption", "frame_count", "width", "height", "start_time", "end_time"]


@dataclass(frozen=True)
class ScoreConfig:
    # An open_clip model name: the architecture clip_weights fits (OpenAI's CLIP weights, which the LAION
    # aesthetic heads were trained on, need "ViT-L-14-quickgelu").
    clip_model: str = "ViT-L-14"
    clip_weights: str | None = None  # local open_clip checkpoint; None: the tiny random CLIP (tests, demo)
    aesthetic_weights: str | None = None  # LAION-style head (.pth or .safetensors state dict); None: no aesthetic
    motion_size: int = ClipMeasure.motion_size  # short side of the frames optical flow runs on
    motion_pairs: int = ClipMeasure.motion_pairs  # pairs of consecutive frames, evenly spaced over the clip
    frames_per_clip: int = 3  # frames CLIP sees, evenly spaced: first, middle, last
    batch_size: int = 48  # frames per CLIP forward pass
    device: str = "cpu"

    def __post_init__(self):
        if self.frames_per_clip < 1 or self.batch_size < 1 or self.motion_size < 8 or self.motion_pairs < 1:
            raise ValueError(f"need frames_per_clip, batch_size, motion_pairs >= 1 and motion_size >= 8, got {self}")

    def measure(self) -> ClipMeasure:
        """What the clip writer measures and keeps for these scores (motion, and the stills CLIP sees)."""
        return ClipMeasure(self.motion_size, self.motion_pairs, self.frames_per_clip)


def require_file(path, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path} (nothing is downloaded; give a local file)")
    return path


def load_clip(config: ScoreConfig):
    """(model, preprocess, tokenizer, label): the configured open_clip model in eval mode on config.device."""
    import open_clip
    import torch
    from open_clip.model import set_model_preprocess_cfg
    from open_clip.transform import PreprocessCfg, image_transform_v2

    if config.clip_weights is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(TINY_CLIP_SEED)
            model = open_clip.CLIP(**TINY_CLIP)
        set_model_preprocess_cfg(model, asdict(PreprocessCfg(size=model.visual.image_size)))
        tokenizer = open_clip.SimpleTokenizer(context_length=TINY_CLIP["text_cfg"]["context_length"])
        label = TINY_CLIP_LABEL
    else:
        path = require_file(config.clip_weights, f"CLIP weights for {config.clip_model} (ScoreConfig.clip_weights)")
        model = open_clip.create_model(config.clip_model, pretrained=str(path))  # a file path: loaded, not fetched
        tokenizer = open_clip.get_tokenizer(config.clip_model)
        label = f"{config.clip_model}:{path.name}"
    preprocess = image_transform_v2(PreprocessCfg(**model.visual.preprocess_cfg), is_train=False)
    return model.eval().to(config.device), preprocess, tokenizer, label


def load_aesthetic_head(path) -> torch.nn.Sequential:
    """A LAION-style aesthetic head as its linear layers in order.

    Accepts the state dict of one `nn.Linear(d, 1)` (keys `weight`, `bias`: the LAION linear predictor) or of
    the LAION MLP (`layers.0.weight` ... `layers.7.bias`). That MLP has dropout but no activation between its
    linear layers, so in eval mode it is exactly this chain of linear maps.
    """
    import torch
    from safetensors.torch import load_file

    path = require_file(path, "aesthetic head weights (ScoreConfig.aesthetic_weights)")
    if path.suffix == ".safetensors":
        state = load_file(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise ValueError(f"{path} is not a state dict of tensors")
    prefixes = sorted((key[: -len("weight")] for key in state if key.endswith("weight")), key=_natural_key)
    if set(state) != {prefix + name for prefix in prefixes for name in ("weight", "bias")}:
        raise ValueError(f"{path} is not a linear or LAION MLP aesthetic head: keys {sorted(state)}")
    layers = []
    for prefix in prefixes:
        weight, bias = state[prefix + "weight"], state[prefix + "bias"]  # (out, in), (out,)
        chains = not layers or layers[-1].out_features == weight.shape[1]
        if weight.ndim != 2 or bias.shape != weight.shape[:1] or not chains:
            raise ValueError(f"{path}: layer {prefix or 'weight'} of shape {tuple(weight.shape)} does not chain")
        layer = torch.nn.Linear(weight.shape[1], weight.shape[0])
        layer.load_state_dict({"weight": weight.float(), "bias": bias.float()})
        layers.append(layer)
    if layers[-1].out_features != 1:
        raise ValueError(f"{path}: an aesthetic head gives one score, this one gives {layers[-1].out_features}")
    return torch.nn.Sequential(*layers).eval()


def _natural_key(text: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def read_clip(path, frame_count: int, frames_per_clip: int, motion_size: int, motion_pairs: int | None = None,
              motion: float | None = None, stills: dict[int, bytes] | None = None) -> tuple[list, float]:
    """The sampled frames (PIL images) and the mean optical-flow magnitude of a clip, in at most one decode.

    The clip writer's `motion` and `stills` (clip frame: JPEG) are used where given and sufficient; otherwise every
    frame is decoded, and only those of the measured pairs (all pairs when motion_pairs is None) are converted to
    grey and run through optical flow.
    """
    wanted = sample_indices(frame_count, frames_per_clip)
    kept = kept_stills(stills, wanted)
    if kept is not None and motion is not None:
        return kept, motion
    images = dict(zip(wanted, kept)) if kept is not None else {}
    measured = Motion(frame_count, motion_pairs, motion_size)
    with open_input(Path(path)) as container:  # PyAV's default threading: frame threads cost a clip 30% more here
        stream = container.streams.video[0]
        for index, frame in enumerate(container.decode(stream)):
            if motion is None:
                measured(index, frame)
            if index in wanted and index not in images:
                images[index] = frame.to_image()
    missing = [index for index in wanted if index not in images]
    if missing:
        raise ValueError(f"{path} decoded fewer frames than the {frame_count} its clip row lists")
    return [images[index] for index in wanted], measured.value() if motion is None else motion


def score_clips(clips: pd.DataFrame, config: ScoreConfig = ScoreConfig(), motion: dict[str, float] | None = None,
                stills: dict[str, dict[int, bytes]] | None = None) -> pd.DataFrame:
    """One row of scores per clip (columns SCORE_COLUMNS); models load once, CLIP runs on batches of frames.

    motion: clip_id to the motion the clip writer measured with `config.measure()`; stills: clip_id to the stills
    it kept (clip frame: JPEG). The other clips' motion and frames come from their files.
    """
    import torch
    import torch.nn.functional as F

    motion, stills = motion or {}, stills or {}
    missing = [column for column in NEEDED_COLUMNS if column not in clips.columns]
    if missing:
        raise ValueError(f"the clips table lacks the columns {missing}")
    head = load_aesthetic_head(config.aesthetic_weights) if config.aesthetic_weights else None
    model, preprocess, tokenizer, clip_label = load_clip(config)
    embed_dim = model.visual.output_dim
    if head is not None and head[0].in_features != embed_dim:
        raise ValueError(f"the aesthetic head {config.aesthetic_weights} takes {head[0].in_features}-dim "
                         f"embeddings; {clip_label} gives {embed_dim}")
    aesthetic_label = Path(config.aesthetic_weights).name if head is not None else "none"

    rows = []
    clips_per_batch = max(1, config.batch_size // config.frames_per_clip)
    for start in range(0, len(clips), clips_per_batch):
        group = clips.iloc[start:start + clips_per_batch]
        frames, motions = zip(*(read_clip(row.path, int(row.frame_count), config.frames_per_clip, config.motion_size,
                                          config.motion_pairs, motion.get(row.clip_id), stills.get(row.clip_id))
                                for row in group.itertuples()))
        captioned = [has_caption(caption) for caption in group.caption]
        texts = [caption if ok else "" for caption, ok in zip(group.caption, captioned)]
        images = torch.stack([preprocess(image) for clip in frames for image in clip])  # (n, 3, s, s)
        with torch.inference_mode():
            image_embeddings = F.normalize(model.encode_image(images.to(config.device)).float(), dim=-1)  # (n, d)
            text_embeddings = F.normalize(model.encode_text(tokenizer(texts).to(config.device)).float(), dim=-1)
            per_clip = image_embeddings.cpu().split([len(clip) for clip in frames])  # each (k, d)
            embeddings = F.normalize(torch.stack([clip.mean(0) for clip in per_clip]), dim=-1)  # (g, d)
            aesthetics = head(embeddings).squeeze(1).tolist() if head is not None else [math.nan] * len(group)
        for row, clip, text, embedding, aesthetic, clip_motion, ok in zip(
                group.itertuples(), per_clip, text_embeddings.cpu(), embeddings, aesthetics, motions, captioned):
            rows.append({
                "clip_id": row.clip_id,
                "clip_score": float((clip @ text).mean()) if ok else math.nan,
                "clip_embedding": embedding.numpy(),  # (d,) float32
                "aesthetic": float(aesthetic),
                "motion": clip_motion,
                "width": int(row.width),
                "height": int(row.height),
                "duration": float(row.end_time - row.start_time),
                "clip_model": clip_label,
                "aesthetic_model": aesthetic_label,
            })
    return pd.DataFrame(rows, columns=SCORE_COLUMNS)
