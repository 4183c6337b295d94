"""Base UNet step cost: forward, forward+backward and peak memory, with and without checkpointing.

    python benchmarks/unet_step.py [--official PATH/TO/LaVie] [--models ours,diffusers-2d] [--threads 2] [--repeats 3]
        [--device cpu]

Configs: the `tiny` preset and the mid-size config of issue 2 (block_out_channels 64/128/256/256,
2 heads, cross_attention_dim 64, batch 2, 8 frames, 32x32 latents). Beside ours it times the plain
diffusers 2D UNet over the same 16 frames (the floor: the 2D work alone) and, given --official, the
official LaVie base model from a checkout (never committed; it needs `rotary_embedding_torch` and
`einops` importable). Every case runs in a fresh process so that its peak memory is its own: on CPU
the peak resident set during the steps minus the resident set before them, on CUDA the allocator peak.
"""

import argparse
import multiprocessing
import statistics
import sys
import time
from pathlib import Path

MID_2D = {
    "sample_size": 32,
    "block_out_channels": [64, 128, 256, 256],
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    "layers_per_block": 2,
    "attention_head_dim": 2,
    "cross_attention_dim": 64,
    "norm_num_groups": 32,
}
BATCH, TOKENS = 2, 77


def config_2d(name):
    if name == "mid":
        return MID_2D, 8, (32, 32)
    from lavie_model.config import load_preset

    preset = load_preset(name)
    return preset["model"]["unet_2d"], preset["data"]["num_frames"], tuple(preset["data"]["latent_size"])


def build(impl, unet_2d, official_path, checkpointing):
    import torch

    torch.manual_seed(0)
    if impl == "ours":
        from lavie_model.models import UNet3DConditionModel, config_from_2d

        model = UNet3DConditionModel(**config_from_2d(unet_2d))
        if checkpointing:
            model.enable_gradient_checkpointing()
        return model, lambda x, t, text: model(x, t, text).sample
    if impl == "official":
        sys.path.insert(0, str(Path(official_path) / "base"))
        from models.unet import UNet3DConditionModel as Official

        config = dict(unet_2d)
        for key in ("down_block_types", "up_block_types"):
            config[key] = [name.replace("2D", "3D") for name in config[key]]
        model = Official(**config)
        if checkpointing:  # its blocks read this flag (it predates diffusers' current checkpointing API)
            for module in model.modules():
                if hasattr(module, "gradient_checkpointing"):
                    module.gradient_checkpointing = True
        return model, lambda x, t, text: model(x, t, encoder_hidden_states=text).sample
    from diffusers import UNet2DConditionModel  # the 2D floor: frames folded into the batch

    model = UNet2DConditionModel(**unet_2d)
    if checkpointing:
        model.enable_gradient_checkpointing()

    def forward_2d(x, t, text):
        b, c, f, h, w = x.shape
        images = x.transpose(1, 2).reshape(b * f, c, h, w)
        return model(images, t.repeat_interleave(f), text.repeat_interleave(f, dim=0)).sample

    return model, forward_2d


def rss_bytes():
    with open("/proc/self/statm") as statm:
        import os

        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes():
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_case(queue, impl, preset, official_path, checkpointing, threads, repeats, device):
    import torch

    torch.set_num_threads(threads)
    unet_2d, frames, (height, width) = config_2d(preset)
    model, forward = build(impl, unet_2d, official_path, checkpointing)
    model.to(device)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(BATCH, 4, frames, height, width, generator=generator).to(device)
    text = torch.randn(BATCH, TOKENS, unet_2d["cross_attention_dim"], generator=generator).to(device)
    t = torch.tensor([10, 900], device=device)

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    def timed(step):
        step()  # warm-up
        sync()
        seconds = []
        for _ in range(repeats):
            start = time.perf_counter()
            step()
            sync()
            seconds.append(time.perf_counter() - start)
        return statistics.median(seconds)

    def forward_only():
        with torch.no_grad():
            forward(x, t, text)

    def forward_backward():
        model.zero_grad(set_to_none=True)
        forward(x, t, text).square().mean().backward()

    model.eval()
    fwd = timed(forward_only) if not checkpointing else None
    model.train()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    before = rss_bytes()
    fwd_bwd = timed(forward_backward)
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else peak_rss_bytes() - before
    queue.put({"fwd": fwd, "fwd_bwd": fwd_bwd, "peak_mb": peak / 2**20})


def measure(*args):
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=run_case, args=(queue, *args))
    process.start()
    process.join()
    if process.exitcode != 0:
        return None
    return queue.get()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", help="checkout of Vchitect/LaVie to time its base model beside ours")
    parser.add_argument("--presets", default="tiny,mid")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--models", default="ours,diffusers-2d",
                        help="comma-separated: ours, diffusers-2d (the official model joins with --official)")
    args = parser.parse_args()

    impls = args.models.split(",") + (["official"] if args.official else [])
    if not set(impls) <= {"ours", "diffusers-2d", "official"}:
        parser.error("--models: choose among ours, diffusers-2d")
    print(f"batch {BATCH}, {args.threads} threads, {args.device}, median of {args.repeats}")
    print(f"{'config':6} {'model':13} {'ckpt':4} {'forward s':>9} {'fwd+bwd s':>9} {'peak MB':>8}")
    results = {}
    for preset in args.presets.split(","):
        for impl in impls:
            for checkpointing in (False, True):
                r = measure(impl, preset, args.official, checkpointing, args.threads, args.repeats, args.device)
                results[preset, impl, checkpointing] = r
                if r is None:
                    print(f"{preset:6} {impl:13} {'on' if checkpointing else 'off':4}   failed")
                    continue
                fwd = f"{r['fwd']:9.3f}" if r["fwd"] is not None else f"{'':9}"
                print(f"{preset:6} {impl:13} {'on' if checkpointing else 'off':4} {fwd} {r['fwd_bwd']:9.3f} "
                      f"{r['peak_mb']:8.0f}", flush=True)
        ours, official = results.get((preset, "ours", False)), results.get((preset, "official", False))
        floor = results.get((preset, "diffusers-2d", False))
        if ours and official:
            print(f"{preset}: official / ours = {official['fwd'] / ours['fwd']:.2f}x forward, "
                  f"{official['fwd_bwd'] / ours['fwd_bwd']:.2f}x forward+backward")
        if ours and floor:
            print(f"{preset}: ours / 2D floor = {ours['fwd'] / floor['fwd']:.2f}x forward, "
                  f"{ours['fwd_bwd'] / floor['fwd_bwd']:.2f}x forward+backward")


if __name__ == "__main__":
    main()
