"""Text side: an offline CLIP tokenizer, and prompt embeddings for classifier-free guidance."""

import gzip
import json
from pathlib import Path

import torch

CLIP_MERGES = 49152 - 256 - 2  # merges used by CLIP's BPE (open_clip's SimpleTokenizer does the same)


def write_clip_tokenizer(output_dir) -> None:
    """Save a transformers `CLIPTokenizer` built from the BPE vocabulary that open_clip ships.

    It is CLIP's own vocabulary (49,408 tokens), so no download is needed; the ids equal open_clip's.
    """
    from open_clip.tokenizer import bytes_to_unicode, default_bpe
    from transformers import CLIPTokenizer

    lines = gzip.open(default_bpe()).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : CLIP_MERGES + 1]]
    byte_tokens = list(bytes_to_unicode().values())
    vocab = byte_tokens + [t + "</w>" for t in byte_tokens] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    vocab_file, merges_file = output_dir / "vocab.json", output_dir / "merges.txt"
    vocab_file.write_text(json.dumps({token: i for i, token in enumerate(vocab)}))
    merges_file.write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    CLIPTokenizer(str(vocab_file), str(merges_file), model_max_length=77).save_pretrained(output_dir)


def encode_prompts(tokenizer, text_encoder, prompts: list[str], device, grad: bool = False) -> torch.Tensor:
    """(len(prompts), tokens, dim) last hidden states of the text encoder, padded to its max length; with `grad`
    the graph is kept (a text encoder that trains)."""
    length = min(tokenizer.model_max_length, text_encoder.config.max_position_embeddings)
    tokens = tokenizer(prompts, padding="max_length", max_length=length, truncation=True, return_tensors="pt")
    with torch.set_grad_enabled(grad):
        return text_encoder(tokens.input_ids.to(device)).last_hidden_state


def guidance_embeddings(tokenizer, text_encoder, prompt, negative_prompt, guidance_scale, device, dtype):
    """Text embeddings for a batch: (2b, tokens, dim) as [negative; positive] when guiding, else (b, ...)."""
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts:
        raise ValueError("no prompt given")
    embeddings = encode_prompts(tokenizer, text_encoder, prompts, device)
    if guidance_scale > 1.0:
        negative = negative_prompt or ""
        negatives = [negative] * len(prompts) if isinstance(negative, str) else list(negative)
        if len(negatives) != len(prompts):
            raise ValueError(f"{len(negatives)} negative prompts for {len(prompts)} prompts")
        embeddings = torch.cat([encode_prompts(tokenizer, text_encoder, negatives, device), embeddings])
    return embeddings.to(dtype)
