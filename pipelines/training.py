"""Training assets (group `training`): base_model -> interpolation_model -> vsr_model, on all curated shards,
downstream of the pretrained models they start from (pipelines/pretraining.py: t2i_model, upscaler_model).

Each asset launches `lavie train` through Dagster Pipes: one rank directly, several under the deepspeed launcher, or
as a Ray job whose driver runs the ranks as Ray Train workers (TrainingSettings.launcher, docs/cluster.md); streams
its progress into the run's logs, and records the exact shards it trained on (names, SHA-256), the metrics (steps,
final_loss, samples_per_s, peak_memory_mb and skipped_clips as numeric entries, which the UI plots across
materializations) and a loss curve. The base stage starts from a folder assembled as `lavie assemble` would
from the text-to-image and upscaler models and trained video UNets where there are some (`tiny`: the shipped
tiny LaVie's base and interpolation UNets, as a user starts from the released LaVie), the rest inflated from
the 2D UNets (temporal layers new); each later stage starts from the folder the previous one exported, so the
last holds the whole trained cascade. They share the `gpu` pool (one at a time, dagster_home/dagster.yaml).
Their code version hashes the trainer and the presets, so a change to either marks them stale. Retraining is
base_model's automation condition (pipelines/automation.py): after a tick of the weekly cron, once the shards
changed. A step whose process died is retried (RETRY), resuming from the run folder's last checkpoint.
"""

import contextlib
import hashlib
import json
import os
import shlex
import sys
import threading
from importlib import resources
from pathlib import Path

import dagster as dg
import pandas as pd

from lavie_model.curation import store
from lavie_model.training.report import (
    current_shards,
    curves_png,
    fingerprint,
    loss_curve_png,
    probe_curve,
    read_metrics,
    run_figures,
)
from lavie_model.training.tracking import parse as parse_tracking
from lavie_model.cli import train_arguments
from lavie_model.training.trainer import TrainSettings, free_port, parse_set

from . import automation
from .curation import image_shards, video_shards
from .metadata import markdown_table, numbers, picture

TRAIN_PIPES = Path(__file__).with_name("train_pipes.py")
LAUNCHERS = ("deepspeed", "ray")


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
    # The 2D models the cascade starts from: Stable Diffusion 1.4 and x4 upscaler folders (paper: required;
    # tiny: the shipped stand-ins, lavie_model/pretrained/tiny, when not given).
    sd: str | None = None
    upscaler: str | None = None
    pretrain: bool = False  # tiny: train the stand-ins from random weights here (make pretrain) instead
    # tiny: inflate every video UNet from the stand-ins (as the paper starts from Stable Diffusion) instead of
    # starting base and interpolation from the shipped tiny LaVie
    inflate: bool = False
    initial_model: str | None = None  # folder the base stage starts from instead of one assembled from them
    ranks: int = 1  # processes (GPUs) per node
    nodes: int = 1
    # how the ranks start: "deepspeed" (its launcher, here) or "ray" (a Ray job on the cluster at ray_address whose
    # driver runs nodes x ranks Ray Train workers; docs/cluster.md)
    launcher: str = "deepspeed"
    ray_address: str = ""  # the Ray dashboard's job API, http://HOST:8265; its token in RAY_AUTH_TOKEN
    # deepspeed, several nodes: a hostfile listing them, and this launcher's place among them; every node runs its
    # own launcher (one asset run here, the others through the scheduler, e.g. srun), no ssh
    hostfile: str | None = None
    node_rank: int = 0
    master_addr: str | None = None  # the address of node 0, where the ranks meet
    master_port: int = 29500
    deepspeed_config: str | None = None
    max_steps: dict[str, int] = {}  # per stage (and t2i, upscaler, autoencoders); the preset's when absent
    overrides: list[str] = []  # `--set NAME=VALUE` entries for every cascade stage
    gradient_checkpointing: bool = False
    # LoRA: a rank per stage trains an adapter of that stage instead of its weights (`lavie train --lora`); and
    # the layers it adapts (lavie_model.finetune.lora.TARGETS, or a regex)
    lora_rank: dict[str, int] = {}
    lora_targets: str = "attention"
    zero_stage: int = 2  # DeepSpeed ZeRO stage, 2 or 3
    offload_optimizer: bool = False  # the optimizer states in CPU memory
    offload_params: bool = False  # ZeRO-3: the weights in CPU memory
    # read the latent shards (group `latents`, LAVIE_HOME/latents) where they match the model; pixels otherwise
    latents: bool = True
    # memory per rank the run must fit, GiB, checked with `lavie plan` before launching (0: the GPU's memory with
    # CUDA, else the memory available on this machine)
    memory_limit_gb: float = 0.0
    # least fraction of held-out shape clips whose colour the text-to-image model's `vae` must reproduce
    vae_min_colour: float = 0.8
    # where each run logs its steps besides metrics.jsonl, to watch it train: tensorboard (RUN_DIR/tensorboard),
    # mlflow (MLFLOW_TRACKING_URI, else RUN_DIR/mlflow), both comma-separated, or none (lavie_model.training.tracking)
    tracking: str = "tensorboard"

    def home(self) -> Path:
        return store.lavie_home(self.lavie_home)

    def launch_command(self) -> list[str]:
        """What starts this node's ranks: one rank on one node runs directly (the trainer sets the environment the
        launcher would, and no launcher and launch processes start, each importing torch and DeepSpeed first);
        more under the deepspeed launcher, with several nodes `--no_ssh`: one launcher per node."""
        if self.ranks == 1 and self.nodes == 1:
            return [sys.executable]
        command = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(self.ranks)]
        if self.nodes > 1:
            if not (self.hostfile and self.master_addr):
                raise dg.Failure("several nodes with the deepspeed launcher need TrainingSettings.hostfile and "
                                 ".master_addr (node 0's address); or use launcher='ray'", allow_retries=False)
            return command + ["--hostfile", self.hostfile, "--num_nodes", str(self.nodes), "--no_ssh",
                              "--node_rank", str(self.node_rank), "--master_addr", self.master_addr,
                              "--master_port", str(self.master_port)]
        return command + ["--master_port", str(free_port())]

    def pretrained(self) -> dict[str, Path]:
        """{"sd": folder, "upscaler": folder}: the 2D models given, or the preset's shipped stand-ins."""
        if self.sd or self.upscaler:
            if not (self.sd and self.upscaler):
                raise dg.Failure("set both TrainingSettings.sd and TrainingSettings.upscaler, or neither",
                                 allow_retries=False)
            return {"sd": Path(self.sd), "upscaler": Path(self.upscaler)}
        from lavie_model.tiny.stand_ins import shipped

        try:
            return shipped(self.preset)
        except FileNotFoundError as error:
            raise dg.Failure(f"{error}; or set TrainingSettings.sd and .upscaler (Stable Diffusion 1.4 and x4 "
                             "upscaler folders in diffusers layout)", allow_retries=False) from error


    def video_unets(self) -> dict[str, Path]:
        """{"base": folder, "interpolation": folder}: the trained video UNets the cascade starts from, the shipped
        tiny LaVie's where the preset ships one and the 2D models are its shipped stand-ins; {} (every video UNet
        inflated) with `inflate`, `pretrain`, or `sd`/`upscaler` given."""
        if self.inflate or self.pretrain or self.sd or self.upscaler:
            return {}
        from lavie_model.tiny.stand_ins import shipped_lavie

        try:
            return shipped_lavie(self.preset)
        except FileNotFoundError:
            return {}


def run_on_ray(context, settings: TrainingSettings, arguments: list[str]) -> dg.MaterializeResult:
    """Submit the trainer as a Ray job through Dagster Pipes (dagster-ray's PipesRayJobClient): its driver runs
    `nodes x ranks` Ray Train workers and reports back; the job is stopped if the Dagster run is."""
    if not settings.ray_address:
        raise dg.Failure("launcher='ray' needs TrainingSettings.ray_address: the cluster's dashboard, http://HOST:8265",
                         allow_retries=False)
    from lavie_model.cluster.ray_cluster import become_client_of

    become_client_of(settings.ray_address)
    from dagster_ray import PipesRayJobClient

    entrypoint = [sys.executable, str(TRAIN_PIPES), "--ray-workers", str(settings.nodes * settings.ranks), *arguments]
    client = PipesRayJobClient(address=settings.ray_address, poll_interval=1)
    context.log.info(f"submitting to Ray at {settings.ray_address}: {shlex.join(entrypoint)}")
    # Ray's job API takes the entrypoint as one command line: every argument quoted
    return client.run(context=context, submit_job_params={"entrypoint": shlex.join(entrypoint),
                                                           "entrypoint_num_cpus": 0}).get_materialize_result()


def trained_shards(home: Path, stage: str):
    videos = current_shards(home / "shards" / "videos")
    images = current_shards(home / "shards" / "images")
    if stage not in ("base", "t2i", "upscaler"):  # the video stages after base train on clips only
        images = images.iloc[:0]
    if videos.empty:
        raise dg.Failure(f"no video shards under {home / 'shards' / 'videos'}: curate a batch first",
                         allow_retries=False)
    return videos, images


def previous_model(context, asset: str) -> Path:
    event = context.instance.get_latest_materialization_event(dg.AssetKey(asset))
    if event is None:
        raise dg.Failure(f"{asset} has not been materialized", allow_retries=False)
    return Path(event.asset_materialization.metadata["model_folder"].value)


@contextlib.contextmanager
def ended_with_the_run(context, poll: float = 2):
    """Watch the run while its training runs: once the instance records the run as finished (its run worker died
    and the code server marked it failed, or it was cancelled) while this step still trains, kill the step's
    processes, so that no orphan trains on beside the run's retry in the same folder; and if the training ends
    after its run did, record nothing (the retry exports the run folder's last checkpoint), so that nothing is
    materialized twice."""
    import psutil

    done = threading.Event()

    def ended() -> bool:
        run = context.instance.get_run_by_id(context.run.run_id)
        return run is not None and run.is_finished

    def stop(doing: str):
        print(f"run {context.run.run_id} ended while its step {doing}: stopping the step", file=sys.stderr, flush=True)
        for child in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
        os._exit(1)

    def watch():
        while not done.wait(poll):
            if ended() and not done.is_set():
                stop("trains")

    watcher = threading.Thread(target=watch, daemon=True, name="ended-with-the-run")
    watcher.start()
    try:
        yield
    finally:
        done.set()
    if ended():
        stop("finished training")


def train_stage(context, settings: TrainingSettings, pipes: dg.PipesSubprocessClient, stage: str,
                model: Path) -> dg.MaterializeResult:
    import torch

    if settings.launcher not in LAUNCHERS:
        raise dg.Failure(f"TrainingSettings.launcher is {settings.launcher!r}; choose one of {', '.join(LAUNCHERS)}",
                         allow_retries=False)
    home = settings.home()
    tracked = parse_tracking(settings.tracking)
    videos, images = trained_shards(home, stage)
    # a retried run (the instance's run retries) trains on in the folder of the run it retries, from its checkpoint
    run_dir = home / "training" / stage / context.run.tags.get("dagster/root_run_id", context.run.run_id)
    resume = (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").iterdir())
    run = run_settings(settings, stage, model, videos, images, run_dir, resume)
    planned = check_plan(context, settings, run)
    if resume:
        context.log.info(f"{run_dir} holds checkpoints of an earlier attempt: resuming from the latest")
    arguments = train_arguments(run)  # the trainer's process reads `run` back from them (cli.train_settings)
    context.log.info(f"training {stage} on {len(videos)} video and {len(images)} image shards in {run_dir}")
    if settings.launcher == "ray":
        reported = run_on_ray(context, settings, arguments)
    else:
        env = {} if torch.cuda.is_available() else {"DS_ACCELERATOR": "cpu"}
        command = settings.launch_command() + [str(TRAIN_PIPES)] + arguments
        context.log.info(f"launcher (node {settings.node_rank} of {settings.nodes}): {shlex.join(command)}")
        with ended_with_the_run(context):
            reported = pipes.run(context=context, command=command, env=env).get_materialize_result()

    metrics = read_metrics(run_dir)
    run = json.loads((run_dir / "run.json").read_text())
    shards = pd.concat([videos.assign(kind="video"), images.assign(kind="image")], ignore_index=True)
    curve = probe_curve(metrics)
    probes = {"held_out_curve": markdown_table(pd.DataFrame(curve)),
              "held_out_plot": dg.MetadataValue.md(picture(curves_png({stage: curve}), "png", "held-out scores")),
              **{f"held_out_{name}": value for name, value in curve[-1].items() if name != "step"}} if curve else {}
    return dg.MaterializeResult(metadata={
        **(reported.metadata or {}),
        "model_folder": dg.MetadataValue.path(str(run_dir / "model")),
        "run_dir": dg.MetadataValue.path(str(run_dir)),
        # what the run logged to watch it train: RUN_DIR/tensorboard (tensorboard --logdir), RUN_DIR/mlflow
        **{name: dg.MetadataValue.path(str(run_dir / name)) for name in tracked},
        "started_from": dg.MetadataValue.path(str(model)),
        "shards": markdown_table(shards[["kind", "name", "samples", "sha256"]]),
        "shard_fingerprint": fingerprint(videos, images),
        # steps, final_loss, samples_per_s, peak_memory_mb, skipped_clips: numbers the UI plots across runs
        **numbers(run_figures(metrics)),
        "loss_curve": dg.MetadataValue.md(picture(loss_curve_png(metrics, f"{stage} loss"), "png", "loss")),
        "metrics": markdown_table(metrics.tail(10).round(6)),
        **({"planned_memory_mb": dg.MetadataValue.float(planned / 2**20)} if planned else {}),
        "inputs": f"{run['inputs']}: {run['why']}",
        **probes,
    })


def memory_limit(settings: TrainingSettings) -> tuple[float, str]:
    """Bytes per rank a run may use, and what they are: TrainingSettings.memory_limit_gb, else the GPU's memory,
    else the memory available on this machine."""
    import torch

    if settings.memory_limit_gb:
        return settings.memory_limit_gb * 2**30, f"TrainingSettings.memory_limit_gb ({settings.memory_limit_gb:g})"
    if torch.cuda.is_available():
        return torch.cuda.get_device_properties(0).total_memory, torch.cuda.get_device_name(0)
    available = next(int(line.split()[1]) * 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                     if line.startswith("MemAvailable:"))
    return available / settings.ranks, "the memory available on this machine, per rank"


def run_settings(settings: TrainingSettings, stage: str, model: Path, videos: pd.DataFrame, images: pd.DataFrame,
                 run_dir: Path, resume: bool) -> TrainSettings:
    """The settings of one stage's run: what its memory plan reads and its `lavie train` process runs."""
    latents = settings.home() / "latents"
    return TrainSettings(
        stage=stage, model=str(model), videos=",".join(videos["path"]), output=str(run_dir), preset=settings.preset,
        images=None if images.empty else ",".join(images["path"]), max_steps=settings.max_steps.get(stage),
        resume=resume, deepspeed_config=settings.deepspeed_config, overrides=parse_set(settings.overrides),
        gradient_checkpointing=settings.gradient_checkpointing,
        latents=str(latents) if settings.latents and latents.is_dir() else None,
        lora_rank=settings.lora_rank.get(stage, 0), lora_targets=settings.lora_targets, zero_stage=settings.zero_stage,
        offload_optimizer=settings.offload_optimizer, offload_params=settings.offload_params,
        tracking=settings.tracking)


def check_plan(context, settings: TrainingSettings, run: TrainSettings) -> int | None:
    """`lavie plan` for the run about to launch; fails naming the setting to change when it cannot fit. Returns
    the planned peak per rank, in bytes (None for the tiny world's stand-ins, t2i and upscaler: no plan)."""
    import torch

    stage = run.stage
    if stage not in ("base", "interpolation", "vsr"):
        return None
    from lavie_model.finetune.plan import plan, render

    # a Ray job's ranks run on the cluster's GPUs, whatever this machine has
    cuda = torch.cuda.is_available() or settings.launcher == "ray"
    result = plan(run, "cuda" if cuda else "cpu", settings.ranks * settings.nodes)
    if settings.launcher == "ray" and not settings.memory_limit_gb:
        context.log.info(f"memory plan (set memory_limit_gb to check it against the cluster's GPUs):\n"
                         f"{render(result)}")
        return result.total
    limit, name = memory_limit(settings)
    text = render(result, limit, name)
    if not result.fits(limit):
        raise dg.Failure(f"the {stage} run would not fit, so nothing was launched:\n{text}", allow_retries=False)
    context.log.info(f"memory plan:\n{text}")
    return result.total


# a step whose process died (a rank killed, a node lost) is tried again, resuming from its run's last checkpoint
RETRY = dg.RetryPolicy(max_retries=2, delay=10, backoff=dg.Backoff.EXPONENTIAL)
TRAINING = {"group_name": "training", "pool": "gpu", "code_version": code_version(), "kinds": {"pytorch"},
            "retry_policy": RETRY}


def initial_cascade(context, settings: TrainingSettings) -> Path:
    """The folder the base stage starts from: TrainingSettings.initial_model, or one assembled from the latest
    t2i_model and upscaler_model and the trained video UNets of `video_unets` (the other stages' UNets inflated
    from the 2D UNets, temporal layers new)."""
    if settings.initial_model:
        return Path(settings.initial_model)
    from lavie_model.model_folder import assemble

    output = settings.home() / "models" / f"cascade-init-{context.run.run_id}"
    if not output.is_dir():
        unets = settings.video_unets()
        context.log.info("the cascade starts from " + (", ".join(f"{stage}: {folder}" for stage, folder in unets.items())
                                                       or "video UNets inflated from the 2D models"))
        assemble(output, previous_model(context, "t2i_model"), previous_model(context, "upscaler_model"),
                 base=unets.get("base"), interpolation=unets.get("interpolation"), inflate_missing=True,
                 preset=settings.preset)
    return output


@dg.asset(deps=["t2i_model", "upscaler_model", video_shards, image_shards, "base_latent_shards", "image_latent_shards"],
          **TRAINING)  # its automation condition, retraining on a cron, is given in pipelines/definitions.py
def base_model(context: dg.AssetExecutionContext, training: TrainingSettings,
               pipes: dg.PipesSubprocessClient) -> dg.MaterializeResult:
    """The base text-to-video UNet: a trained one (the shipped tiny LaVie's) or the text-to-image UNet inflated
    (temporal layers new), jointly fine-tuned on video clips and images."""
    return train_stage(context, training, pipes, "base", initial_cascade(context, training))


@dg.asset(deps=[base_model, video_shards, "base_latent_shards"],
          automation_condition=automation.with_parent("base_model"), **TRAINING)
def interpolation_model(context: dg.AssetExecutionContext, training: TrainingSettings,
                        pipes: dg.PipesSubprocessClient) -> dg.MaterializeResult:
    """The temporal interpolation UNet, fine-tuned from a trained one where the cascade has it, else started from
    the trained base weights."""
    return train_stage(context, training, pipes, "interpolation", previous_model(context, "base_model"))


@dg.asset(deps=[interpolation_model, video_shards, "vsr_latent_shards"],
          automation_condition=automation.with_parent("interpolation_model"), **TRAINING)
def vsr_model(context: dg.AssetExecutionContext, training: TrainingSettings,
              pipes: dg.PipesSubprocessClient) -> dg.MaterializeResult:
    """The video super-resolution UNet's temporal layers; its folder holds the whole trained cascade."""
    return train_stage(context, training, pipes, "vsr", previous_model(context, "interpolation_model"))


TRAINING_ASSETS = [base_model, interpolation_model, vsr_model]
# training, then evaluation and promotion (pipelines/evaluation.py), downstream of the models
train_cascade = dg.define_asset_job("train_cascade", selection=dg.AssetSelection.assets(*TRAINING_ASSETS).downstream())
