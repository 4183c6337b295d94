"""The trainer as a Dagster Pipes process: `lavie train` whose rank 0 streams metrics back to the asset.

The training assets launch it in one of two ways (TrainingSettings.launcher):
- `deepspeed`: one rank directly (`python pipelines/train_pipes.py train ...`), several under the deepspeed
  launcher (`deepspeed ... pipelines/train_pipes.py train ...`). Rank 0 opens
  the Pipes channel, logs each logged step and reports the final metrics as the materialization; the other
  ranks just train.
- `ray`: as the entrypoint of a Ray job (`python pipelines/train_pipes.py --ray-workers N train ...`). This
  process, the job's driver, opens the channel and runs the ranks as Ray Train workers
  (lavie_model.cluster.ray_train); rank 0's metrics reach it through a Ray queue, so the Pipes messages on the
  job's log come from the driver alone and the workers' output cannot corrupt them.
Outside Dagster the channel is a no-op, so this runs as `lavie train` does.
"""

import argparse
import json
import os
import sys

from dagster_pipes import open_dagster_pipes

from lavie_model.cli import build_parser, train_settings
from lavie_model.evaluation.stand_ins import probe
from lavie_model.training.trainer import train


def main(argv=None) -> int:
    launch = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    launch.add_argument("--ray-workers", type=int, default=0, help="ranks to run as Ray Train workers")
    known, rest = launch.parse_known_args(argv)
    args = build_parser().parse_args(rest)
    if args.command != "train":
        raise SystemExit("train_pipes.py runs `train` only")
    settings = train_settings(args)
    if not known.ray_workers and int(os.environ.get("RANK", "0")) != 0:
        train(settings, probe=probe)
        return 0
    with open_dagster_pipes() as pipes:
        last = {}

        def report(record):
            last.update(record)
            pipes.log.info("step " + json.dumps(record))

        if known.ray_workers:
            import ray

            from lavie_model.cluster.ray_train import fit

            ray.init(log_to_driver=True)  # inside a Ray job: the job's cluster
            exported = fit(settings, known.ray_workers, report=report, log=pipes.log.info, probe=probe)
        else:
            exported = train(settings, report=report, log=pipes.log.info, probe=probe)
        pipes.report_asset_materialization(metadata={
            "model_folder": {"raw_value": str(exported), "type": "path"},
            "steps": last.get("step", 0), "final_loss": last.get("loss", float("nan")),
        })
    return 0


if __name__ == "__main__":
    sys.exit(main())
