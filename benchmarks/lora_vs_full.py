"""A LoRA adapter against full fine-tuning on the tiny preset: step time, trainable weights, optimizer memory.

    python benchmarks/lora_vs_full.py [--rank 8] [--stage base|interpolation|vsr] [--preset tiny] [--steps 5]
        [--warmup 1] [--threads 2] [--device cpu|cuda] [--videos SHARDS --images SHARDS] [--model FOLDER]
        [--batch-size N] [--json out.json]

A second DeepSpeed engine trains a rank --rank LoRA adapter (lavie_model/finetune/lora.py, the attention projections) of
another copy of the UNet, --steps steps alternating (AB BA ...) with the full engine on the same batch, after --warmup
untimed steps of each: per engine the trainable weights, the optimizer-state bytes (AdamW's moments and ZeRO's fp32
master partitions, summed from the engine), s/step and the resident-set rise within a step, beside `lavie plan`'s
optimizer row and peak for each.

The tiny run itself (shards, model folder, the full DeepSpeed engine) is common.tiny_run's.
"""

from common import (RssSampler, abba, deepspeed_stepper, progress, ratio_lines, ratios, run_and_report, step_table,
                    summary, tiny_parser)


def optimizer_state_bytes(engine) -> int:
    """Bytes of a DeepSpeed ZeRO engine's optimizer states: AdamW's moments and ZeRO's fp32 master partitions."""
    import torch

    zero = engine.optimizer
    tensors = [t for state in zero.optimizer.state.values() for t in state.values() if torch.is_tensor(t)]
    tensors += list(getattr(zero, "single_partition_of_fp32_groups", []))
    return sum(t.numel() * t.element_size() for t in tensors)



def measure(run) -> dict:
    from lavie_model.finetune.lora import add_lora
    from lavie_model.finetune.plan import plan
    from lavie_model.training.stages import load_unet
    from lavie_model.training.trainer import TrainSettings

    args = run.args
    unet = load_unet(run.model, args.stage).train()
    add_lora(unet, args.rank, seed=args.seed)
    engine, step = deepspeed_stepper(unet, run.parts, run.training, run.ds_config, args.seed)
    loops = {"deepspeed, full": run.fixed_step, "deepspeed, LoRA": lambda i: step(i, lambda: run.batch)}
    for i in range(args.warmup):  # the first steps allocate gradients and the optimizer states
        for loop in loops.values():
            loop(i)
    progress(run.began, f"{args.warmup} warm-up step(s) per engine done")
    with RssSampler() as sampler:
        times = abba(loops, args.steps, args.warmup, run.sync, sampler, run.cuda)
        rows = {name: summary(times[name], run.samples_per_step, sampler, name) for name in loops}
    progress(run.began, "LoRA against full fine-tuning timed")
    for name, eng in (("deepspeed, full", run.engine), ("deepspeed, LoRA", engine)):
        rank = args.rank if "LoRA" in name else 0
        settings = TrainSettings(stage=args.stage, model="", videos="", output="", preset=args.preset, lora_rank=rank,
                                 overrides={"batch_size": run.batch_size})
        planned = plan(settings, "cuda" if run.cuda else "cpu")
        rows[name] |= {"trainable_parameters": sum(p.numel() for p in eng.module.parameters() if p.requires_grad),
                       "optimizer_state_bytes": optimizer_state_bytes(eng),
                       "planned_optimizer_bytes": planned.device["optimizer"], "planned_peak_bytes": planned.total}
    return {"rank": args.rank, "steps": rows, "ratio": ratios(rows["deepspeed, LoRA"], rows["deepspeed, full"])}


def report(results: dict) -> None:
    print(f"a rank-{results['rank']} LoRA adapter (attention projections) against full fine-tuning, the same batch "
          f"and DeepSpeed config, alternating:")
    step_table(results["steps"], results["cuda"])
    print(f"{'engine':18} {'trainable':>10} {'optimizer states MB':>20} {'plan: optimizer MB':>19} "
          f"{'plan: peak MB':>14} {'step RSS rise MB':>17}")
    for name, row in results["steps"].items():
        print(f"{name:18} {row['trainable_parameters']:10,} {row['optimizer_state_bytes'] / 2**20:20.1f} "
              f"{row['planned_optimizer_bytes'] / 2**20:19.1f} {row['planned_peak_bytes'] / 2**20:14.0f} "
              f"{row['step_rss_rise_mb']:17.0f}")
    ratio_lines("LoRA / full step time", results["ratio"])


if __name__ == "__main__":
    parser = tiny_parser(__doc__.splitlines()[0], 5, "timed steps per engine")
    parser.add_argument("--rank", type=int, default=8, help="the LoRA adapter's rank")
    run_and_report(parser, measure, report)
