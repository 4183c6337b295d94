"""Generation cost per cascade stage: seconds per denoising step and peak memory.

    python benchmarks/generate.py [--presets tiny,benchmarks/mid_preset.yaml] [--stages base,interpolation,vsr]
        [--threads 2] [--device cpu]

For each preset a randomly initialised model folder is built (`init_random`), then every stage runs
in a fresh process with 1 and with 3 denoising steps; the difference over 2 is the cost of one step
(classifier-free guidance included: two UNet passes per step), free of the fixed costs of text encoding
and VAE coding, which are reported apart as the remainder of the 1-step run. Stage inputs: base
generates the preset's frames and size; interpolation takes those frames (F -> 4F - 3); VSR upscales
the base-size video x4, in chunks of 8 frames. Peak memory: the stage process's peak resident set
(models, Python and torch included) on CPU, the allocator peak on CUDA.
"""

import argparse
import multiprocessing
import tempfile
import time
from pathlib import Path

STAGES = ("base", "interpolation", "vsr")


def run_stage(queue, folder, stage, steps, threads, device):
    import resource

    import torch

    from lavie_model.pipelines.cascade import STAGE_PIPELINES

    torch.set_num_threads(threads)
    pipe = STAGE_PIPELINES[stage].from_pretrained(folder).to(device)
    pipe.set_progress_bar_config(disable=True)
    config = pipe.config
    generator = torch.Generator(device).manual_seed(0)
    video = torch.rand(1, config.num_frames, 3, config.height, config.width)
    args = ("a red circle moving left",) if stage == "base" else (video, "a red circle moving left")
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    frames = pipe(*args, num_inference_steps=steps, generator=generator).frames
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated() if device == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    queue.put({"seconds": seconds, "peak_mb": peak / 2**20, "shape": tuple(frames.shape)})


def measure(*args):
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=run_stage, args=(queue, *args))
    process.start()
    process.join()
    if process.exitcode != 0:
        raise RuntimeError(f"stage run {args[1]} failed with exit code {process.exitcode}")
    return queue.get()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="tiny,benchmarks/mid_preset.yaml")
    parser.add_argument("--stages", default=",".join(STAGES), help="comma-separated stages to time")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args()
    stages = args.stages.split(",")
    if not set(stages) <= set(STAGES):
        parser.error(f"--stages: choose among {', '.join(STAGES)}")

    from lavie_model.model_folder import init_random

    print(f"{args.threads} threads, {args.device}; batch 1, guidance on")
    print(f"{'preset':8} {'stage':14} {'output (b, f, c, h, w)':24} {'s/step':>8} {'fixed s':>8} {'peak MB':>8}")
    with tempfile.TemporaryDirectory() as root:
        for preset in args.presets.split(","):
            folder = init_random(Path(root) / Path(preset).stem, preset)
            name = Path(preset).stem
            for stage in stages:
                one = measure(folder, stage, 1, args.threads, args.device)
                three = measure(folder, stage, 3, args.threads, args.device)
                chunks = -(-one["shape"][1] // 8) if stage == "vsr" else 1  # VSR denoises each chunk
                per_step = (three["seconds"] - one["seconds"]) / 2
                fixed = one["seconds"] - per_step * chunks
                print(f"{name:8} {stage:14} {str(three['shape']):24} {per_step:8.3f} {fixed:8.2f} "
                      f"{max(one['peak_mb'], three['peak_mb']):8.0f}", flush=True)


if __name__ == "__main__":
    main()
