"""Training assets (group `training`): autoencoders -> base_model -> interpolation_model -> vsr_model, on all
curated shards.

Each asset launches `lavie train` under the deepspeed launcher through Dagster Pipes, streams its progress
into the run's logs, and records the exact shards it trained on (names, SHA-256), the metrics and a loss
curve. Each stage starts from the folder the previous one exported, so the last holds the whole trained
cascade. They share the `gpu` pool (one at a time, dagster_home/dagster.yaml). Their code version hashes the
trainer and the presets, so a change to either marks them stale. `retrain_schedule` (weekly) and
`new_shards_sensor` (off by default) retrain when the shards differ from those the models were trained on.
"""

import hashlib
import json
import sys
from importlib import resources
from pathlib import Path

import dagster as dg
import pandas as pd

from lavie_model.curation import store
from lavie_model.training.report import current_shards, fingerprint, loss_curve_png, read_metrics
from lavie_model.training.trainer import free_port

from .curation import image_shards, markdown_table, picture, video_shards

TRAIN_PIPES = Path(__file__).with_name("train_pipes.py")


def code_version() -> str:
    """A hash of the trainer's code and the presets."""
    digest = hashlib.sha256()
    for package in ("lavie_model.training", "lavie_model.configs"):
        for entry in sorted(resources.files(package).iterdir(), key=lambda e: e.name):
            if entry.name.endswith((".py", ".yaml")):
                digest.update(entry.name.encode() + entry.read_bytes())
    return digest.hexdigest()[:16]


class TrainingSettings(dg.ConfigurableResource):
    """How to train: the preset, where to start, how many ranks and nodes, how long."""

    preset: str = "tiny"
    lavie_home: str | None = None
    initial_model: str | None = None  # folder the base stage starts from; tiny: built by init-tiny when missing
    ranks: int = 1  # processes (GPUs) per node
    nodes: int = 1
    hostfile: str | None = None  # DeepSpeed hostfile for several nodes
    deepspeed_config: str | None = None
    max_steps: dict[str, int] = {}  # per stage; the preset's when absent
    overrides: list[str] = []  # `--set NAME=VALUE` entries for every stage
    gradient_checkpointing: bool = False
    vae_steps: int = 600  # tiny preset: steps to train each small autoencoder (0: keep the folder's)
    # tiny preset: least fraction of held-out shape clips whose colour the trained `vae` must reproduce
    vae_min_colour: float = 0.8

    def home(self) -> Path:
        return store.lavie_home(self.lavie_home)

    def launcher(self) -> list[str]:
        command = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(self.ranks),
                   "--master_port", str(free_port())]
        if self.hostfile:
            command += ["--hostfile", self.hostfile, "--num_nodes", str(self.nodes)]
        return command

    def start_folder(self) -> Path:
        if self.initial_model:
            return Path(self.initial_model)
        if self.preset != "tiny":
            raise dg.Failure(f"set TrainingSettings.initial_model for the {self.preset} preset: a folder built "
                             "by `lavie assemble --inflate-missing` from Stable Diffusion and the x4 upscaler")
        folder = self.home() / "models" / "tiny-init"
        if not folder.is_dir():
            from lavie_model.model_folder import init_random

            init_random(folder, "tiny")
        return folder


def trained_shards(home: Path, stage: str):
    videos = current_shards(home / "shards" / "videos")
    images = current_shards(home / "shards" / "images")
    if stage != "base":  # only the base stage trains on images
        images = images.iloc[:0]
    if videos.empty:
        raise dg.Failure(f"no video shards under {home / 'shards' / 'videos'}: curate a batch first")
    return videos, images


def previous_model(context, asset: str) -> Path:
    event = context.instance.get_latest_materialization_event(dg.AssetKey(asset))
    if event is None:
        raise dg.Failure(f"{asset} has not been materialized")
    return Path(event.asset_materialization.metadata["model_folder"].value)


def train_stage(context, settings: TrainingSettings, pipes: dg.PipesSubprocessClient, stage: str,
                model: Path) -> dg.MaterializeResult:
    import torch

    home = settings.home()
    videos, images = trained_shards(home, stage)
    run_dir = home / "training" / stage / context.run_id
    command = settings.launcher() + [
        str(TRAIN_PIPES), "train", "--stage", stage, "--preset", settings.preset, "--model", str(model),
        "--videos", ",".join(videos["path"]), "--output", str(run_dir)]
    if not images.empty:
        command += ["--images", ",".join(images["path"])]
    if stage in settings.max_steps:
        command += ["--max-steps", str(settings.max_steps[stage])]
    if settings.deepspeed_config:
        command += ["--deepspeed-config", settings.deepspeed_config]
    if settings.gradient_checkpointing:
        command += ["--gradient-checkpointing"]
    for item in settings.overrides:
        command += ["--set", item]
    env = {} if torch.cuda.is_available() else {"DS_ACCELERATOR": "cpu"}
    context.log.info(f"training {stage} on {len(videos)} video and {len(images)} image shards in {run_dir}")
    reported = pipes.run(context=context, command=command, env=env).get_materialize_result()

    metrics = read_metrics(run_dir)
    shards = pd.concat([videos.assign(kind="video"), images.assign(kind="image")], ignore_index=True)
    last = metrics.iloc[-1]
    return dg.MaterializeResult(metadata={
        **(reported.metadata or {}),
        "model_folder": dg.MetadataValue.path(str(run_dir / "model")),
        "run_dir": dg.MetadataValue.path(str(run_dir)),
        "started_from": dg.MetadataValue.path(str(model)),
        "shards": markdown_table(shards[["kind", "name", "samples", "sha256"]]),
        "shard_fingerprint": fingerprint(videos, images),
        "steps": int(last["step"]),
        "final_loss": float(last["loss"]),
        "loss_curve": dg.MetadataValue.md(picture(loss_curve_png(metrics, f"{stage} loss"), "png", "loss")),
        "metrics": markdown_table(metrics.tail(10).round(6)),
        "peak_memory_mb": float(metrics["memory_mb"].max()),
        "skipped_clips": int(metrics["skipped_clips"].sum()),
    })


TRAINING = {"group_name": "training", "pool": "gpu", "code_version": code_version(), "kinds": {"pytorch"}}


COLOUR_CHECK = "colours_survive_reconstruction"


@dg.asset(deps=[video_shards, image_shards], **TRAINING,
          check_specs=[dg.AssetCheckSpec(COLOUR_CHECK, asset="autoencoders", blocking=True,
                                         description="held-out shape clips keep their colour through the vae")])
def autoencoders(context: dg.AssetExecutionContext, training: TrainingSettings) -> dg.MaterializeResult:
    """The model folder the UNets start from. The tiny preset has no pretrained VAE, so its two small
    autoencoders (`vae`, `vsr_vae`) are trained here first; pretrained ones (`paper`) are used as they are.
    The blocking check: a base UNet cannot draw colours its decoder loses, so the trained `vae` must give
    held-out clips of the demo's shapes grammar back in their colour (`vae_min_colour`; passes with nothing
    to measure when the data has no such clips)."""
    from lavie_model.training.vae import train_vae

    start = training.start_folder()
    if training.preset != "tiny" or training.vae_steps == 0:
        return dg.MaterializeResult(
            metadata={"model_folder": dg.MetadataValue.path(str(start)), "trained": False},
            check_results=[dg.AssetCheckResult(check_name=COLOUR_CHECK, passed=True,
                                               metadata={"measured": "no: autoencoders not trained here"})])
    home = training.home()
    videos, images = trained_shards(home, "base")
    output = home / "models" / f"autoencoders-{context.run_id}"
    model = start
    for component in ("vae", "vsr_vae"):
        model = train_vae(model, ",".join(videos["path"]), output, component, images=",".join(images["path"]) or None,
                          steps=training.vae_steps, preset=training.preset, log=context.log.info)
    index = json.loads((output / "model_index.json").read_text())["training"]
    fidelity = index["vae"]["fidelity"]
    colour = fidelity["colour_accuracy"]
    return dg.MaterializeResult(
        metadata={
            "model_folder": dg.MetadataValue.path(str(output)), "trained": True, "started_from": str(start),
            "shard_fingerprint": fingerprint(videos, images),
            **{f"{name}_mse": index[name]["final_mse"] for name in ("vae", "vsr_vae")},
            **{f"{name}_scaling_factor": index[name]["scaling_factor"] for name in ("vae", "vsr_vae")},
            **{f"{name}_heldout_psnr": index[name]["fidelity"]["psnr"] for name in ("vae", "vsr_vae")},
        },
        check_results=[dg.AssetCheckResult(
            check_name=COLOUR_CHECK, passed=colour is None or colour >= training.vae_min_colour,
            metadata={"shape_clips": fidelity["n"], "colour_accuracy": colour, "required": training.vae_min_colour,
                      "heldout_psnr": fidelity["psnr"]})])


@dg.asset(deps=[autoencoders, video_shards, image_shards], **TRAINING)
def base_model(context: dg.AssetExecutionContext, training: TrainingSettings,
               pipes: dg.PipesSubprocessClient) -> dg.MaterializeResult:
    """The base text-to-video UNet, jointly fine-tuned on video clips and images."""
    return train_stage(context, training, pipes, "base", previous_model(context, "autoencoders"))


@dg.asset(deps=[base_model, video_shards], **TRAINING)
def interpolation_model(context: dg.AssetExecutionContext, training: TrainingSettings,
                        pipes: dg.PipesSubprocessClient) -> dg.MaterializeResult:
    """The temporal interpolation UNet, started from the trained base weights."""
    return train_stage(context, training, pipes, "interpolation", previous_model(context, "base_model"))


@dg.asset(deps=[interpolation_model, video_shards], **TRAINING)
def vsr_model(context: dg.AssetExecutionContext, training: TrainingSettings,
              pipes: dg.PipesSubprocessClient) -> dg.MaterializeResult:
    """The video super-resolution UNet's temporal layers; its folder holds the whole trained cascade."""
    return train_stage(context, training, pipes, "vsr", previous_model(context, "interpolation_model"))


TRAINING_ASSETS = [autoencoders, base_model, interpolation_model, vsr_model]
# training, then evaluation and promotion (pipelines/evaluation.py), downstream of the models
train_cascade = dg.define_asset_job("train_cascade", selection=dg.AssetSelection.assets(*TRAINING_ASSETS).downstream())


def retrain_request(instance, home: Path):
    """A run request when the shards differ from those base_model last trained on, else the reason to skip."""
    videos, images = current_shards(home / "shards" / "videos"), current_shards(home / "shards" / "images")
    if videos.empty:
        return dg.SkipReason("no video shards yet")
    now = fingerprint(videos, images)
    event = instance.get_latest_materialization_event(dg.AssetKey("base_model"))
    trained_on = event.asset_materialization.metadata.get("shard_fingerprint") if event else None
    if trained_on is not None and trained_on.value == now:
        return dg.SkipReason("no new shards since the last training")
    return dg.RunRequest(run_key=f"shards-{now[:16]}")


@dg.schedule(cron_schedule="0 3 * * 1", job=train_cascade, default_status=dg.DefaultScheduleStatus.RUNNING)
def retrain_schedule(context: dg.ScheduleEvaluationContext):
    """Weekly (Monday 03:00): retrain the cascade when new shards have landed since the last training."""
    return retrain_request(context.instance, store.lavie_home())


@dg.sensor(job=train_cascade, minimum_interval_seconds=600, default_status=dg.DefaultSensorStatus.STOPPED)
def new_shards_sensor(context: dg.SensorEvaluationContext):
    """Retrain as soon as new shards land (off by default: turn it on in the UI to retrain on every batch)."""
    return retrain_request(context.instance, store.lavie_home())
