"""The DeepSpeed training step against a plain PyTorch loop: step rate and memory, on the tiny preset.

    python benchmarks/deepspeed_overhead.py [--stage base|interpolation|vsr] [--preset tiny] [--steps 5]
        [--warmup 1] [--threads 2] [--device cpu|cuda] [--videos SHARDS --images SHARDS] [--model FOLDER]
        [--batch-size N] [--json out.json]

Step rate. One fixed micro-batch (collated from `TrainingStream` over the shards) and the same per-sample generators
(`sample_generators`) feed two copies of the stage's UNet (same starting weights):
- plain: `training_loss`, `loss.backward()`, `clip_grad_norm_`, `torch.optim.AdamW.step()`, the LR schedule,
  `zero_grad`;
- deepspeed: `deepspeed.initialize` with the trainer's own config (`trainer.deepspeed_config`: ZeRO-2, the client
  AdamW and LR schedule; fp32 on the CPU, bf16 on CUDA), `engine.backward`, `engine.step`.
After the warm-up steps (a plain and a DeepSpeed step each) the two alternate (AB BA AB ...), so that machine noise
hits both alike; the table gives per loop the median seconds per optimizer step, samples/s, the CPU seconds of the
process per step, and the ratio deepspeed / plain four ways: of the medians (the headline), the median of the
per-round ratios (each pair ran back to back), of the minima and of the CPU times. On a busy machine the paired ratio
and the minima are the steadier (CPU time grows too there: OpenMP threads spin while a sibling waits for a core).
On CUDA the plain loop runs under bf16 autocast with fp32 weights (DeepSpeed keeps bf16 weights and fp32 master
copies), so the CUDA ratio compares two mixed-precision recipes, not one.

Memory. The process's peak resident set (sampled from /proc every 5 ms) during the DeepSpeed steps and during the
plain steps, beside the resident set before the first timed step; the process holds both UNet copies, their
optimizers and the frozen VAE and text encoder throughout, so the table also gives per loop the largest rise of the
resident set within one step (activations, gradients, optimizer work). On CUDA also torch.cuda.max_memory_allocated
per loop.

The tiny run itself (shards, model folder, the DeepSpeed engine) is common.tiny_run's.
"""

from common import (RssSampler, abba, make_optimizer, peak_rss_bytes, progress, ratio_lines, ratios, rss_bytes,
                    run_and_report, step_table, summary, timed, tiny_parser)


def plain_stepper(unet, parts, batch, training, seed, cuda):
    """One optimizer step of a plain PyTorch loop (the trainer's step without DeepSpeed)."""
    import contextlib

    import torch

    from lavie_model.training.stages import sample_generators, training_loss

    trainable, optimizer, schedule = make_optimizer(unet, training)
    batch_size, accumulation = len(batch["key"]), training["gradient_accumulation"]
    max_noise_level = training["vsr"]["max_noise_level"]
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else contextlib.nullcontext

    def step(index: int) -> float:
        for micro in range(accumulation):
            generators = sample_generators(seed, 0, (index * accumulation + micro) * batch_size, batch_size)
            with autocast():
                loss = training_loss(unet, parts, batch, generators, max_noise_level)
            (loss / accumulation).backward()
        torch.nn.utils.clip_grad_norm_(trainable, training["max_grad_norm"])
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    return step



def measure(run) -> dict:
    from lavie_model.training.stages import load_unet

    args = run.args
    plain_unet = load_unet(run.model, args.stage).train().to(run.device)
    plain_step = plain_stepper(plain_unet, run.parts, run.batch, run.training, args.seed, run.cuda)
    loops = {"plain": lambda i: plain_step(i), "deepspeed": run.fixed_step}
    warmup = {name: [] for name in loops}
    for i in range(args.warmup):  # the first steps allocate gradients and the optimizer states
        for name, step in loops.items():
            warmup[name].append(timed(lambda: step(i), run.sync)[0])
    progress(run.began, f"{args.warmup} warm-up step(s) per loop done")

    rss_before = rss_bytes()
    with RssSampler() as sampler:
        times = abba(loops, args.steps, args.warmup, run.sync, sampler, run.cuda)
        steps = {name: summary(times[name], run.samples_per_step, sampler, name) | {"warmup_seconds": warmup[name]}
                 for name in loops}
    progress(run.began, "plain / deepspeed steps timed")
    return {"steps": steps, "overhead": ratios(steps["deepspeed"], steps["plain"]),
            "rss_before_steps_mb": rss_before / 2**20, "peak_rss_process_mb": peak_rss_bytes() / 2**20}


def report(results: dict) -> None:
    steps, cuda = results["steps"], results["cuda"]
    print(f"training step on one fixed batch: {len(steps['plain']['seconds'])} steps per loop, alternating (AB BA ...)")
    step_table(steps, cuda)
    if steps["plain"]["warmup_seconds"]:
        print("warm-up, untimed in the table: " + ", ".join(
            f"{name} " + " ".join(f"{x:.2f}" for x in steps[name]["warmup_seconds"]) + " s" for name in steps))
    ratio_lines("deepspeed / plain", results["overhead"], target=1.15)
    print()
    deep, plain = steps["deepspeed"], steps["plain"]
    print(f"memory: peak resident set during the DeepSpeed steps {deep['peak_rss_mb']:.0f} MB, during the plain "
          f"steps {plain['peak_rss_mb']:.0f} MB ({results['rss_before_steps_mb']:.0f} MB before the timed steps; "
          f"process peak {results['peak_rss_process_mb']:.0f} MB). One process holds both UNet copies, their")
    print(f"   optimizer states, the frozen VAE and text encoder and the imports. Largest rise within one step over "
          f"the resident set at its start: DeepSpeed {deep['step_rss_rise_mb']:.0f} MB, plain "
          f"{plain['step_rss_rise_mb']:.0f} MB")
    print("   (memory taken from the system during the step; what the allocator kept from earlier steps and "
          "reused is not counted).")
    if cuda:
        print(f"   CUDA max allocated: DeepSpeed steps {deep['cuda_max_allocated_mb']:.0f} MB, plain "
              f"steps {plain['cuda_max_allocated_mb']:.0f} MB")


if __name__ == "__main__":
    run_and_report(tiny_parser(__doc__.splitlines()[0], 5, "timed steps per loop"), measure, report)
