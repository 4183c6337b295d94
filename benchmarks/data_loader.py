"""The training data loader against the DeepSpeed step it feeds, on the tiny preset: is the loader the bottleneck?

    python benchmarks/data_loader.py [--stage base|interpolation|vsr] [--preset tiny] [--steps 5] [--warmup 1]
        [--threads 2] [--device cpu|cuda] [--videos SHARDS --images SHARDS] [--model FOLDER] [--workers N]
        [--loader-samples 40] [--batch-size N] [--json out.json]

The loader alone: `TrainingStream` + `DataLoader(collate)`, with the preset's `training.num_workers` (or --workers)
and with 0 workers: samples/s over --loader-samples samples after the first batch (its start-up: worker processes,
the shuffle buffer). Against the step's consumption rate (the DeepSpeed step on one fixed batch): with workers the
loader runs beside the step and is the bottleneck when it delivers fewer samples/s than the step takes; with 0
workers it runs in series, and the table gives the step time it adds. Then --steps DeepSpeed steps fed by that
loader, as the trainer runs them (on a machine with few cores its workers compete with the step for them),
alternating (AB BA ...) with as many on the fixed batch, after --warmup untimed steps on the fixed batch.

The tiny run itself (shards, model folder, the DeepSpeed engine) is common.tiny_run's.
"""

from common import (RssSampler, abba, loader_rate, progress, ratio_lines, ratios, run_and_report, step_table,
                    stream_of, summary, tiny_parser)


def measure(run) -> dict:
    from torch.utils.data import DataLoader

    from lavie_model.training.data import collate

    args, buffer = run.args, run.training["shuffle_buffer"]
    for i in range(args.warmup):  # the first steps allocate gradients and the optimizer states
        run.fixed_step(i)
    progress(run.began, f"{args.warmup} warm-up step(s) done")
    loaders = [loader_rate(run.videos, run.images, run.data, run.batch_size, n, args.seed, buffer, args.loader_samples)
               for n in dict.fromkeys([run.workers, 0])]
    progress(run.began, "loaders timed")

    stream = stream_of(run.videos, run.images, run.data, args.seed, buffer, run.batch_size)
    loader = iter(DataLoader(stream, batch_size=run.batch_size, num_workers=run.workers, collate_fn=collate))
    next(loader)  # the loader's start-up (worker, shuffle buffer) is not timed
    loops = {"deepspeed, fixed batch": run.fixed_step,
             "deepspeed, fed by loader": lambda i: run.ds_step(i, lambda: next(loader))}
    with RssSampler() as sampler:
        times = abba(loops, args.steps, args.warmup, run.sync, sampler, run.cuda)
        fed = {name: summary(times[name], run.samples_per_step, sampler, name) for name in loops}
    del loader
    progress(run.began, "loader-fed steps timed")
    return {"loaders": loaders, "default_workers": run.workers, "fed": fed,
            "ratio": ratios(fed["deepspeed, fed by loader"], fed["deepspeed, fixed batch"])}


def report(results: dict) -> None:
    rate = results["fed"]["deepspeed, fixed batch"]["samples_per_s"]
    print(f"data loader alone (TrainingStream + DataLoader + collate) against the DeepSpeed step's {rate:.2f} "
          "samples/s on the fixed batch")
    print(f"{'workers':>7} {'samples':>7} {'samples/s':>10} {'first batch s':>14}  verdict")
    for loader in results["loaders"]:
        if loader["workers"]:
            headroom = loader["samples_per_s"] / rate
            verdict = (f"{headroom:.1f}x the step's rate: "
                       + ("not the bottleneck" if headroom >= 1 else "THE BOTTLENECK"))
        else:
            verdict = f"in series: would add {rate / loader['samples_per_s'] * 100:.1f}% to the step time"
        default = " (the preset's workers)" if loader["workers"] == results["default_workers"] else ""
        print(f"{loader['workers']:>7} {loader['samples']:>7} {loader['samples_per_s']:10.2f} "
              f"{loader['first_batch_s']:14.2f}  {verdict}{default}")
    print()
    print(f"DeepSpeed steps fed by that loader ({results['default_workers']} worker(s)) against the fixed batch, "
          "alternating:")
    step_table(results["fed"], results["cuda"])
    ratio_lines("fed / fixed", results["ratio"])


if __name__ == "__main__":
    parser = tiny_parser(__doc__.splitlines()[0], 5, "DeepSpeed steps fed by the loader, alternating with as many on "
                         "the fixed batch")
    parser.add_argument("--loader-samples", type=int, default=40)
    run_and_report(parser, measure, report)
