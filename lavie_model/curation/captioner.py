"""Captions: describe each clip with a local transformers image-to-text model (BLIP, GIT, VisionEncoderDecoder).

The model folder is loaded offline (`local_files_only=True`) with `AutoModelForImageTextToText`, its image
processor with `AutoImageProcessor` and its tokenizer with `AutoTokenizer`, once per `caption_clips` call.
Frames are the stills the clip writer kept where they hold them, else decoded from the clip with PyAV; they are
captioned in batches by greedy `generate`, so the captions are deterministic.
`build_tiny_captioner` saves a tiny random model that loads the same way, to test the wiring offline.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .probe import open_input
from .writer import kept_stills, middle_indices

CAPTION_COLUMNS = ["clip_id", "caption", "caption_source"]


@dataclass(frozen=True)
class CaptionerConfig:
    model_path: str  # local folder saved with save_pretrained: model, image processor and tokenizer
    frames_per_clip: int = 1  # evenly spaced frames (1: the middle one); their distinct captions are joined by "; "
    batch_size: int = 8  # frames per generate call
    max_new_tokens: int = 30
    device: str = "cpu"

    def __post_init__(self):
        if self.frames_per_clip < 1 or self.batch_size < 1:
            raise ValueError(f"need frames_per_clip >= 1 and batch_size >= 1, got {self.frames_per_clip} "
                             f"and {self.batch_size}")


def read_frames(path, indices: list[int]) -> list[np.ndarray]:
    """(h, w, 3) uint8 RGB frames at `indices` in decode order; past the end, the last frame that decodes."""
    wanted, frames, last = set(indices), {}, None
    with open_input(Path(path)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index in wanted:
                frames[index] = frame.to_ndarray(format="rgb24")
            last = frame
            if index >= indices[-1]:
                break
    if last is None:
        raise ValueError(f"no video frame decodes from {path}")
    return [frames[i] if i in frames else last.to_ndarray(format="rgb24") for i in indices]


def load_captioner(model_path: Path, device: str):
    """The model (in eval mode on `device`), image processor and tokenizer of a local folder."""
    from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

    if not model_path.is_dir():
        raise FileNotFoundError(f"captioner model folder not found: {model_path}")
    model = AutoModelForImageTextToText.from_pretrained(model_path, local_files_only=True).to(device).eval()
    image_processor = AutoImageProcessor.from_pretrained(model_path, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(model_path, local_files_only=True)
    return model, image_processor, tokenizer


def caption_clips(clips: pd.DataFrame, config: CaptionerConfig,
                  stills: dict[str, dict[int, bytes]] | None = None) -> pd.DataFrame:
    """One row per clip of `clips` (clip_id, path, frame_count): clip_id, caption, caption_source.

    stills: clip_id to the stills the clip writer kept (clip frame: JPEG), used where they hold a clip's frames.
    """
    import torch

    stills = stills or {}
    model_path = Path(config.model_path)
    model, image_processor, tokenizer = load_captioner(model_path, config.device)
    source = f"captioner:{model_path.resolve().name}"

    def caption_batch(frames: list[np.ndarray]) -> list[str]:
        pixel_values = image_processor(images=frames, return_tensors="pt").pixel_values.to(config.device, model.dtype)
        with torch.no_grad():
            tokens = model.generate(pixel_values=pixel_values, max_new_tokens=config.max_new_tokens,
                                    do_sample=False)
        return [text.strip() for text in tokenizer.batch_decode(tokens, skip_special_tokens=True)]

    # frames are read as the batches need them, so memory holds one batch of frames, not the whole table's
    owners, waiting, texts = [], [], []  # texts[i] is the caption of a frame of clip row owners[i]
    for row, clip in enumerate(clips.itertuples(index=False)):
        indices = middle_indices(max(int(clip.frame_count), 1), config.frames_per_clip)
        kept = kept_stills(stills.get(clip.clip_id), indices)
        frames = [np.array(still) for still in kept] if kept is not None else read_frames(clip.path, indices)
        owners += [row] * len(frames)
        waiting += frames
        while len(waiting) >= config.batch_size:
            texts += caption_batch(waiting[:config.batch_size])
            del waiting[:config.batch_size]
    if waiting:
        texts += caption_batch(waiting)

    captions = [[] for _ in range(len(clips))]
    for row, text in zip(owners, texts):
        if text not in captions[row]:
            captions[row].append(text)
    return pd.DataFrame({"clip_id": clips["clip_id"].astype(str).tolist(),
                         "caption": ["; ".join(c) for c in captions],
                         "caption_source": source}, columns=CAPTION_COLUMNS)


def build_tiny_captioner(out_dir, seed: int = 0) -> Path:
    """Save a tiny random ViT -> GPT-2 VisionEncoderDecoder with its image processor and CLIP tokenizer.

    Everything is built offline; its captions are gibberish but it loads like a real captioner.
    """
    import torch
    from transformers import (AutoTokenizer, GPT2Config, ViTConfig, ViTImageProcessor, VisionEncoderDecoderConfig,
                              VisionEncoderDecoderModel)

    from ..text import write_clip_tokenizer

    out_dir = Path(out_dir)
    write_clip_tokenizer(out_dir)
    tokenizer = AutoTokenizer.from_pretrained(out_dir, local_files_only=True)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    encoder = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64)
    decoder = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=1, n_head=2, n_positions=64,
                         add_cross_attention=True, bos_token_id=bos, eos_token_id=eos)
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    config.decoder_start_token_id, config.pad_token_id, config.eos_token_id = bos, eos, eos
    with torch.random.fork_rng():  # seeded weights, without touching the caller's random state
        torch.manual_seed(seed)
        model = VisionEncoderDecoderModel(config)
    model.save_pretrained(out_dir)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(out_dir)
    return out_dir
