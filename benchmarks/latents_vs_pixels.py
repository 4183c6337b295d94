"""Precomputed latents against pixels on the tiny preset (training/latents.py): the speed-up of reading latents.

    python benchmarks/latents_vs_pixels.py [--stage base|interpolation|vsr] [--preset tiny] [--steps 5] [--warmup 1]
        [--threads 2] [--device cpu|cuda] [--videos SHARDS --images SHARDS] [--model FOLDER] [--workers N]
        [--loader-samples 40] [--batch-size N] [--json out.json]

Latent shards of the shards are built (the time and the bytes per clip are reported), then the same DeepSpeed engine
runs --steps steps on the fixed pixel batch against the same samples' latent batch, and --steps fed by a pixel loader
against --steps fed by a latent loader (the preset's workers, or --workers), each pair alternating, after --warmup
untimed steps on the pixel batch. The ratios pixels / latents are the speed-up of reading latents; the loaders alone
are timed too, over --loader-samples samples.

The tiny run itself (shards, model folder, the DeepSpeed engine) is common.tiny_run's.
"""

import time
from pathlib import Path

from common import (RssSampler, abba, fixed_batch, loader_rate, progress, ratio_lines, ratios, run_and_report,
                    step_table, stream_of, summary, tiny_parser)


def measure(run) -> dict:
    """Build latent shards of the shards (timed, sized), then time the DeepSpeed step on the pixel batch against the
    same samples' latent batch, and fed by a pixel loader against a latent loader (the preset's workers), each pair
    alternating (AB BA ...). The step on latents skips the VAE and the text encoder; its loader reads arrays instead
    of decoding and resizing video."""
    from torch.utils.data import DataLoader

    from lavie_model.training.data import collate, expand_shards
    from lavie_model.training.latents import FAMILY_OF, Encoders, encode_shards

    args, data, videos, images, root = run.args, run.data, run.videos, run.images, run.root
    pixel_batch, ds_step, workers, cuda = run.batch, run.ds_step, run.workers, run.cuda
    batch_size, buffer = run.batch_size, run.training["shuffle_buffer"]
    for i in range(args.warmup):  # the first steps allocate gradients and the optimizer states
        run.fixed_step(i)
    progress(run.began, f"{args.warmup} warm-up step(s) done")
    encoders = Encoders.load(run.model, FAMILY_OF[args.stage], run.preset, device="cuda" if cuda else "cpu")
    started = time.perf_counter()
    made = encode_shards(expand_shards(videos), root / "latents" / "videos", encoders, "video")
    made_images = encode_shards(expand_shards(images), root / "latents" / "images", encoders, "image") if images else []
    build_s = time.perf_counter() - started
    latent_videos = [root / "latents" / "videos" / m["name"] for m in made]
    latent_images = [root / "latents" / "images" / m["name"] for m in made_images] or None
    latent_batch = fixed_batch(latent_videos, latent_images, data, batch_size, args.seed, buffer, latents=True)
    if latent_batch["key"] != pixel_batch["key"]:
        raise RuntimeError("the latent and pixel streams gave different samples: the comparison would be unfair")

    fixed_loops = {"pixels, fixed batch": lambda i: ds_step(i, lambda: pixel_batch),
                   "latents, fixed batch": lambda i: ds_step(i, lambda: latent_batch)}
    with RssSampler() as sampler:
        fixed = abba(fixed_loops, args.steps, args.warmup, run.sync, sampler, cuda)
        sources = (("pixels", videos, images), ("latents", latent_videos, latent_images))
        loaders = {name: iter(DataLoader(stream_of(shards, pictures, data, args.seed, buffer, batch_size,
                                                   name == "latents"),
                                         batch_size=batch_size, num_workers=workers, collate_fn=collate))
                   for name, shards, pictures in sources}
        for loader in loaders.values():
            next(loader)  # start-up (workers, shuffle buffer) untimed
        fed_loops = {"pixels, fed by loader": lambda i: ds_step(i, lambda: next(loaders["pixels"])),
                     "latents, fed by loader": lambda i: ds_step(i, lambda: next(loaders["latents"]))}
        fed = abba(fed_loops, args.steps, args.warmup + args.steps, run.sync, sampler, cuda)
    del loaders
    progress(run.began, "latents against pixels timed")
    rows = {name: summary(times[name], run.samples_per_step, sampler, name)
            for times, loops in ((fixed, fixed_loops), (fed, fed_loops)) for name in loops}
    clips, frames = sum(m["samples"] for m in made), sum(m["frames"] for m in made)
    rates = {name: loader_rate(shards, pictures, data, batch_size, workers, args.seed, buffer, args.loader_samples,
                               latents=name == "latents")
             for name, shards, pictures in sources}
    return {
        "steps": rows, "workers": workers,
        "speedup_fixed": ratios(rows["pixels, fixed batch"], rows["latents, fixed batch"]),
        "speedup_fed": ratios(rows["pixels, fed by loader"], rows["latents, fed by loader"]),
        "loaders": rates, "build_s": build_s, "clips": clips, "frames": frames, "images": sum(
            m["samples"] for m in made_images),
        "bytes": sum(m["bytes"] for m in made + made_images),
        "kb_per_clip": sum(m["bytes"] for m in made) / clips / 1024,
        "build_s_per_clip": sum(m["seconds"] for m in made) / clips,
        "curated_kb_per_clip": sum(Path(p).stat().st_size for p in expand_shards(videos)) / clips / 1024,
    }


def report(results: dict) -> None:
    print(f"precomputed latents against pixels, the same DeepSpeed engine and samples ({results['workers']} loader "
          "worker(s)), alternating:")
    print(f"   latent shards of {results['clips']} clips ({results['frames']} frames) and {results['images']} "
          f"images built in {results['build_s']:.1f} s ({results['build_s_per_clip'] * 1000:.0f} ms per clip); "
          f"{results['kb_per_clip']:.0f} kB per clip (the curated mp4 shards: "
          f"{results['curated_kb_per_clip']:.0f} kB per clip)")
    step_table(results["steps"], results["cuda"])
    ratio_lines("speed-up on the fixed batch, pixels / latents", results["speedup_fixed"])
    ratio_lines("speed-up fed by the loaders, pixels / latents", results["speedup_fed"])
    print("   loaders alone: " + ", ".join(f"{name} {rate['samples_per_s']:.1f} samples/s"
                                          for name, rate in results["loaders"].items()))


if __name__ == "__main__":
    parser = tiny_parser(__doc__.splitlines()[0], 5, "timed steps per loop, on fixed batches and fed by loaders")
    parser.add_argument("--loader-samples", type=int, default=40)
    run_and_report(parser, measure, report)
