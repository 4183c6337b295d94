"""A paper-size training step of one stage on one GPU: time, memory, model FLOPs and MFU (random weights).

    python benchmarks/paper_step.py [--stage base|interpolation|vsr] [--steps 3] [--preset paper]
        [--device cuda|cpu] [--json out.json]

--steps DeepSpeed steps (after one warm-up step) of the preset's stage (the paper's base: bf16, ZeRO-2, gradient
checkpointing, batch 2 of 16 x 320 x 512 frames plus the preset's M images: (2, 4, 16 + M, 40, 64) latents) on a
randomly initialised UNet (`plan.build_unet`, as `build_base_unet(load_preset('paper'))` for the base), in a fresh
process. No VAE or text encoder is loaded and nothing is downloaded: the latents and text embeddings (77 x 768 per
frame) are random tensors of the right shapes. Time per step, peak allocated memory, the card's name, the step's
model FLOPs (counted on the meta device, without checkpointing's recomputation) and the MFU they give on a card of
known peak; and for the base stage what reading pixels would add to each step: an SD 1.4-shaped VAE encoder over
the batch's frames at 320 x 512 and a CLIP ViT-L/14-shaped text encoder over its captions (random weights), as a
share of a pixel step. Without deepspeed, a plain bf16-autocast AdamW step. On --device cuda without CUDA the
benchmark says it was skipped; --device cpu --preset tiny runs the same code on the CPU, small.
benchmarks/device_check.py runs `paper_steps` for all three stages.
"""

import argparse
import json
import math
import os
import statistics
import time
from pathlib import Path

from common import in_own_process, make_optimizer, peak_rss_bytes, quiet_deepspeed

from lavie_model.finetune.plan import SD_TEXT, SD_VAE, build_unet, stage_inputs

# Dense bf16 tensor-core peak (FLOP/s) by a part of the card's name, the first that matches; other cards: unknown
DENSE_BF16_PEAK = (("H200", 989e12), ("H100 PCIe", 756e12), ("H100 SXM", 989e12), ("H100 80GB HBM3", 989e12),
                   ("A100", 312e12))


def dense_bf16_peak(card: str) -> float | None:
    return next((peak for part, peak in DENSE_BF16_PEAK if part in card), None)


def step_flops(stage: str, preset: dict, images: int) -> dict:
    """FLOPs of one forward and of one training step's forward and backward (no recomputation: model FLOPs),
    counted with torch.utils.flop_counter on the meta device (shapes only: no memory, no compute)."""
    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        unet = build_unet(stage, preset).train()
        sample, timesteps, text, kwargs, target = stage_inputs(unet, stage, preset, images)
    if "class_labels" in kwargs:  # the noise-level embedding: a lookup, no FLOPs; its check reads values meta lacks
        del kwargs["class_labels"]
        unet.class_embedding = None
    with FlopCounterMode(display=False) as forward, torch.no_grad():
        unet(sample, timesteps, text, **kwargs)
    with FlopCounterMode(display=False) as step:
        F.mse_loss(unet(sample, timesteps, text, **kwargs).sample, target).backward()
    return {"forward": forward.get_total_flops(), "step": step.get_total_flops()}


def paper_steps(preset_name, steps, images, device_name="cuda", stage="base", deadline=None) -> dict:
    """Training steps of a randomly initialised `stage` UNet of the preset on one random micro-batch of its training
    shapes, with gradient checkpointing: DeepSpeed with the trainer's config (ZeRO-2; bf16 on CUDA) when deepspeed
    imports, else a plain AdamW step (bf16 autocast on CUDA). One warm-up step, then `steps` timed ones, fewer when
    time.time() passes `deadline`. With the step's model FLOPs and MFU, and for the base stage what reading pixels
    would add: an SD-shaped VAE encoder over the frames and images and a CLIP-shaped text encoder over the captions."""
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        os.environ.pop(name, None)  # a port of its own, not the parent's
    import torch
    import torch.nn.functional as F

    from lavie_model.config import load_preset
    from lavie_model.training.trainer import (TrainSettings, deepspeed_config, release_shared_buffer,
                                              single_rank_environment)

    cuda = device_name == "cuda"
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    preset = load_preset(preset_name)
    training = preset["training"]
    m = (training["image_frames"] if images is None else images) if stage == "base" else 0
    flops = step_flops(stage, preset, m)
    single_rank_environment()
    try:
        import deepspeed
    except ImportError:
        deepspeed = None

    torch.manual_seed(0)
    with device:
        unet = build_unet(stage, preset).train()
    unet.enable_gradient_checkpointing()
    parameters = sum(p.numel() for p in unet.parameters())
    trainable, optimizer, schedule = make_optimizer(unet, training)
    if deepspeed is not None:
        quiet_deepspeed()
        deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo")
        if not cuda:
            release_shared_buffer(0)
        settings = TrainSettings(stage=stage, model="(random)", videos="(random)", output="(none)", preset=preset_name)
        ds_config = deepspeed_config(settings, training, cuda)
        engine, _, _, _ = deepspeed.initialize(model=unet, optimizer=optimizer, lr_scheduler=schedule, config=ds_config)
        model, dtype = engine.module, engine.module.dtype
        engine_name = f"DeepSpeed {deepspeed.__version__} ZeRO-{ds_config['zero_optimization']['stage']}"
    else:
        model, dtype = unet, torch.float32  # fp32 weights under bf16 autocast, as the trainer without DeepSpeed
        engine_name = "plain torch (deepspeed not installed)"
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda and deepspeed is None)
    with device:
        sample, timesteps, text, kwargs, target = stage_inputs(unet, stage, preset, m)
    sample, text = sample.to(dtype), text.to(dtype)

    def step():
        with autocast:
            loss = F.mse_loss(model(sample, timesteps, text, **kwargs).sample.float(), target)
        if deepspeed is not None:
            engine.backward(loss)
            engine.step()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, training["max_grad_norm"])
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()

    started = time.perf_counter()
    step()  # warm-up: allocates gradients and optimizer states
    warmup_s = time.perf_counter() - started
    encode = {}
    if stage == "base":
        b, f = sample.shape[0], sample.shape[2]
        vae = preset["model"].get("vae", SD_VAE)
        scale = 2 ** (len(vae["block_out_channels"]) - 1)
        size = tuple(n * scale for n in sample.shape[-2:])
        frozen_dtype = torch.bfloat16 if cuda else torch.float32  # the frozen encoders, as the trainer holds them
        encode_s = encoder_seconds(b * f, size, b * (1 + m), device, frozen_dtype, vae,
                                   preset["model"].get("text_encoder", SD_TEXT), repeats=3 if cuda else 1)
        encode = {"encode_s": encode_s, "encode_frames": b * f, "encode_size": list(size)}
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    values = []
    while len(values) < steps and (not values or deadline is None or time.time() < deadline):
        start = time.perf_counter()
        step()
        values.append(time.perf_counter() - start)
    median = statistics.median(values)
    card = torch.cuda.get_device_name(device) if cuda else "cpu"
    peak = dense_bf16_peak(card) if cuda else None
    batch = sample.shape[0]
    return {"stage": stage, "card": card, "engine": engine_name, "parameters": parameters,
            "trainable_parameters": sum(p.numel() for p in trainable), "sample": list(sample.shape),
            "text": list(text.shape), "image_frames": m, "dtype": str(dtype), "gradient_checkpointing": True,
            "warmup_s": warmup_s, "seconds": values, "median_s": median, "samples_per_s": batch / median,
            "stopped_by_deadline": len(values) < steps,
            "max_allocated_mb": torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None,
            "peak_rss_mb": peak_rss_bytes() / 2**20,
            "inputs": "random latents and text embeddings (no VAE, no text encoder, no weights)",
            "forward_flops": flops["forward"], "step_flops": flops["step"],
            "tflops_per_s": flops["step"] / median / 1e12,
            "dense_bf16_peak": peak, "mfu": flops["step"] / median / peak if peak else None,
            **encode, **({"vae_share": encode["encode_s"] / (encode["encode_s"] + median)} if encode else {})}


def encoder_seconds(frames: int, size: tuple[int, int], captions: int, device, dtype, vae_config=SD_VAE,
                    text_config=SD_TEXT, repeats: int = 3) -> float:
    """Median seconds of what the pixel path adds to each step and precomputed latents remove: a VAE encoder
    (Stable Diffusion's by default) over `frames` frames of `size` and a text encoder (CLIP ViT-L/14's) over
    `captions` captions, in one call each, as training_loss makes them."""
    import torch
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device(device):
        vae = AutoencoderKL(**vae_config).to(dtype).eval()
        text_encoder = CLIPTextModel(CLIPTextConfig(**text_config)).to(dtype).eval()
        pixels = torch.randn(frames, 3, *size, dtype=dtype)
        tokens = torch.randint(text_encoder.config.vocab_size, (captions, 77))
    cuda = torch.device(device).type == "cuda"

    def run():
        with torch.no_grad():
            vae.encode(pixels).latent_dist.sample()
            text_encoder(tokens)[0]
        if cuda:
            torch.cuda.synchronize()

    run()  # warm-up
    values = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        values.append(time.perf_counter() - start)
    return statistics.median(values)



def report(paper: dict) -> None:
    if "skipped" in paper:
        print(f"paper-size {paper['stage']} step: skipped: {paper['skipped']}")
        return
    if "error" in paper:
        print(f"paper-size {paper['stage']} step: failed: {paper['error']}")
        if "traceback" in paper:
            print(paper["traceback"])
        return
    print(f"paper-size {paper['stage']} step on {paper['card']}: a randomly initialised "
          f"{paper['parameters'] / 1e6:.0f} M-parameter {paper['stage']} UNet; {paper['inputs']}")
    m = paper["image_frames"]
    images = f" ({paper['sample'][2] - m} frames + {m} images)" if m else ""
    print(f"   latents {tuple(paper['sample'])}{images}, text {tuple(paper['text'])}, {paper['dtype']}, "
          f"{paper['engine']}, gradient checkpointing")
    allocated = (f"max allocated {paper['max_allocated_mb'] / 1024:.1f} GiB, "
                 if paper["max_allocated_mb"] is not None else "")
    print(f"   {paper['median_s']:.3f} s/step (median of {len(paper['seconds'])}), "
          f"{paper['samples_per_s']:.2f} samples/s, {allocated}peak RSS {paper['peak_rss_mb'] / 1024:.1f} GiB")
    mfu = f", MFU {paper['mfu']:.1%} of the card's dense bf16 peak" if paper["mfu"] is not None else ""
    print(f"   {paper['step_flops'] / 1e12:.1f} TFLOP per step (model FLOPs, counted): "
          f"{paper['tflops_per_s']:.0f} TFLOP/s{mfu}")
    if "encode_s" in paper:
        size = " x ".join(map(str, paper["encode_size"]))
        print(f"   pixels instead of latents would add {paper['encode_s']:.3f} s per step (the SD-shaped VAE over "
              f"{paper['encode_frames']} frames of {size} and the text encoder): {paper['vae_share']:.0%} of a "
              "pixel step, the share precomputed latents remove")

def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", default="base", choices=("base", "interpolation", "vsr"))
    parser.add_argument("--steps", type=int, default=3, help="timed steps, after one warm-up step")
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--json", help="write the results here as JSON")
    args = parser.parse_args()
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        paper = {"skipped": "CUDA is not available on this machine: the paper-size step needs a GPU"}
    else:  # a fresh process: nothing of this one's imports or allocations in its peaks
        paper = in_own_process(paper_steps, (args.preset, args.steps, None, args.device, args.stage), math.inf)
    paper.setdefault("stage", args.stage)
    report(paper)
    if args.json:
        Path(args.json).write_text(json.dumps(paper, indent=2, default=str) + "\n")
        print(f"\nresults written to {args.json}")


if __name__ == "__main__":
    main()
