"""Training runs people can watch while they train: TensorBoard event files, and MLflow for the teams that use it.

`lavie train --tracking` (TrainSettings.tracking) names the trackers, comma-separated: `tensorboard` (the
default), `mlflow`, or `none`. Rank 0 logs every step that metrics.jsonl records, under the same step:

    train/loss  train/lr  train/grad_norm  train/samples_per_s  train/memory_mb  train/skipped_clips
    probe/NAME  each held-out score of the steps that have them (`evaluate_every`)
    samples/I   TensorBoard only: a few of the probe's samples at those steps (t2i stills, base videos), as
                animated GIFs in the Images tab, each under its prompt

- TensorBoard: RUN_DIR/tensorboard (`tensorboard --logdir RUN_DIR/tensorboard`), written with torch's
  SummaryWriter and flushed every step, so a killed run keeps every step it logged. A resumed run opens a new
  event file that purges the steps after its checkpoint, as metrics.jsonl drops them. (DeepSpeed's own
  `tensorboard` monitor is not used: it logs its own scalars against samples seen, never closes its writer and
  cannot purge; a `tensorboard` or `wandb` section in `--deepspeed-config` still turns it on.)
- MLflow: a run in experiment `lavie-STAGE`, continued on resume (the steps a resume repeats are logged twice
  there), in the store at MLFLOW_TRACKING_URI when set (a team's server or database), else a SQLite store in
  RUN_DIR/mlflow (`mlflow ui --backend-store-uri sqlite:///RUN_DIR/mlflow/mlflow.db`). MLflow's telemetry is
  off, as Dagster's is.
"""

import io
import math
import os
from pathlib import Path

TRACKERS = ("tensorboard", "mlflow")
SCALARS = ("loss", "lr", "grad_norm", "samples_per_s", "memory_mb", "skipped_clips")


def parse(spec: str) -> tuple[str, ...]:
    """The trackers of a `--tracking` value: "tensorboard", "tensorboard,mlflow", "none", ..."""
    names = tuple(name.strip() for name in spec.split(",") if name.strip() and name.strip() != "none")
    unknown = [name for name in names if name not in TRACKERS]
    if unknown:
        raise ValueError(f"unknown tracking {', '.join(unknown)}: choose from {', '.join(TRACKERS)}, or none")
    return names


def scalars(record: dict) -> dict[str, float]:
    """{tag: value} of one metrics.jsonl record: its numbers, and each held-out score under probe/."""
    values = {f"train/{name}": record[name] for name in SCALARS if record.get(name) is not None}
    values |= {f"probe/{name}": value for name, value in record.get("probe", {}).items()
               if name != "n" and isinstance(value, (int, float)) and not isinstance(value, bool)}
    return {tag: float(value) for tag, value in values.items() if math.isfinite(value)}


class Tracking:
    """The trackers of one run, on rank 0: `log(record)` every step, `close()` at the end (also on failure)."""

    def __init__(self, names: tuple[str, ...], output: Path, stage: str, step: int, params: dict):
        """`step`: the step the run starts from (its checkpoint's); `params`: run.json's contents."""
        self.writer = self.mlflow = None
        if "tensorboard" in names:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: TensorBoard drops what an earlier, interrupted process logged past the checkpoint
            self.writer = SummaryWriter(str(output / "tensorboard"), purge_step=step + 1 if step else None)
        if "mlflow" in names:
            self.mlflow = mlflow_run(output, stage, params)

    def log(self, record: dict, samples=None) -> None:
        """`samples`: (videos (n, f, 3, h, w) in [0, 1], prompts) to show at this step, or None."""
        values = scalars(record)
        if self.writer is not None:
            for tag, value in values.items():
                self.writer.add_scalar(tag, value, record["step"])
            for i, (video, prompt) in enumerate(zip(*samples) if samples else ()):
                self.writer.file_writer.add_summary(gif_summary(f"samples/{i}", video, prompt), record["step"])
            self.writer.flush()
        if self.mlflow is not None:
            self.mlflow.log_metrics({tag.replace("/", "."): value for tag, value in values.items()},
                                    step=record["step"])

    def close(self, failed: bool = False) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.mlflow is not None:
            self.mlflow.end_run("FAILED" if failed else "FINISHED")


def gif_summary(tag: str, video, prompt: str, fps: int = 4):
    """A TensorBoard image summary holding `video` ((f, 3, h, w) in [0, 1]) as an animated GIF, described by its
    prompt (TensorBoard's own add_video needs moviepy)."""
    from PIL import Image
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata

    frames = [Image.fromarray(frame) for frame in
              (video.float().clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=1000 // fps, loop=0)
    image = Summary.Image(height=frames[0].height, width=frames[0].width, colorspace=3,
                          encoded_image_string=buffer.getvalue())
    return Summary(value=[Summary.Value(tag=tag, image=image, metadata=SummaryMetadata(summary_description=prompt))])


def mlflow_run(output: Path, stage: str, params: dict):
    """The `mlflow` module with the run of `output` active: continued when RUN_DIR/mlflow/run_id names one, else
    a new run with `params` (run.json's settings and training section) as its parameters."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # before the import: no call home
    try:
        import mlflow
    except ImportError as error:
        raise ImportError("--tracking mlflow needs MLflow: pip install -e '.[mlflow]' (mlflow-skinny)") from error

    folder = (output / "mlflow").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    local = not os.environ.get("MLFLOW_TRACKING_URI")
    if local:
        mlflow.set_tracking_uri(f"sqlite:///{folder / 'mlflow.db'}")
    saved = folder / "run_id"
    if saved.is_file():
        mlflow.start_run(run_id=saved.read_text().strip())
        return mlflow
    name = f"lavie-{stage}"
    if mlflow.get_experiment_by_name(name) is None:
        mlflow.create_experiment(name, artifact_location=(folder / "artifacts").as_uri() if local else None)
    mlflow.set_experiment(name)
    run = mlflow.start_run(run_name=output.name, tags={"run_dir": str(output.resolve())})
    flat = {key: value for key, value in params.items() if not isinstance(value, (list, dict))}
    flat |= {f"training.{key}": value for key, value in params.get("training", {}).items()}
    mlflow.log_params({key: str(value)[:500] for key, value in flat.items()})
    saved.write_text(run.info.run_id + "\n")
    return mlflow
