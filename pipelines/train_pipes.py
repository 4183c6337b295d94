"""The trainer as a Dagster Pipes process: `lavie train` whose rank 0 streams metrics back to the asset.

The training assets launch it with the deepspeed launcher (`deepspeed ... pipelines/train_pipes.py train ...`).
Rank 0 opens the Pipes channel, logs each logged step and reports the final metrics as the materialization;
the other ranks just train. Outside Dagster the channel is a no-op, so this runs as `lavie train` does.
"""

import json
import os
import sys

from dagster_pipes import open_dagster_pipes

from lavie_model.cli import build_parser, train_settings
from lavie_model.evaluation.stand_ins import probe
from lavie_model.training.trainer import train


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.command != "train":
        raise SystemExit("train_pipes.py runs `train` only")
    settings = train_settings(args)
    if int(os.environ.get("RANK", "0")) != 0:
        train(settings, probe=probe)
        return 0
    with open_dagster_pipes() as pipes:
        last = {}

        def report(record):
            last.update(record)
            pipes.log.info("step " + json.dumps(record))

        exported = train(settings, report=report, log=pipes.log.info, probe=probe)
        pipes.report_asset_materialization(metadata={
            "model_folder": {"raw_value": str(exported), "type": "path"},
            "steps": last.get("step", 0), "final_loss": last.get("loss", float("nan")),
        })
    return 0


if __name__ == "__main__":
    sys.exit(main())
