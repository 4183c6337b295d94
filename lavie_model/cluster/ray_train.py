"""`lavie train` on a Ray cluster: the same trainer in every worker of a Ray Train TorchTrainer.

Ray Train starts `workers` processes across the cluster's nodes and forms their process group (NCCL on GPUs,
gloo on CPUs) with RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT set, as the deepspeed launcher
would; `trainer.train` then initialises DeepSpeed on it unchanged. Rank 0's metrics and messages come back to
the caller (the job's driver) through a Ray queue, so only the driver talks to Dagster Pipes. A worker or node
that dies restarts the group (up to `retries` times), which continues from the run's last checkpoint.
"""

import threading
from dataclasses import asdict, replace
from pathlib import Path

from ..training.trainer import TrainSettings, check

RETRIES = 2  # restarts of the worker group after a worker or node dies


def _worker(config: dict) -> None:
    """One rank: `trainer.train` with rank 0's reports sent to the driver's queue."""
    import ray.train

    from ..training.checkpoint import latest_tag
    from ..training.trainer import train

    settings = TrainSettings(**config["settings"])
    if latest_tag(Path(settings.output) / "checkpoints"):  # a restart: continue from the last checkpoint
        settings = replace(settings, resume=True)
    messages = config["messages"]
    if ray.train.get_context().get_world_rank() == 0:
        train(settings, report=lambda record: messages.put(("step", record)),
              log=lambda text: messages.put(("log", text)), probe=config["probe"])
    else:
        train(settings, probe=config["probe"])


def fit(settings: TrainSettings, workers: int, use_gpu: bool | None = None, cpus_per_worker: float = 1,
        report=None, log=print, probe=None, retries: int = RETRIES) -> Path:
    """Train `settings` on `workers` ranks of the Ray cluster this process is connected to (ray.init first);
    the exported model folder. use_gpu: one GPU per rank (default: when the cluster has a GPU per rank).
    `report(record)` and `log(text)` receive rank 0's, as with `trainer.train`."""
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.util.queue import Empty, Queue

    check(settings)  # a bad setting fails here, not in every worker
    if use_gpu is None:
        use_gpu = ray.cluster_resources().get("GPU", 0) >= workers
    output = Path(settings.output).resolve()
    messages = Queue(actor_options={"num_cpus": 0})
    trainer = TorchTrainer(
        _worker,
        train_loop_config={"settings": asdict(replace(settings, output=str(output))), "messages": messages,
                           "probe": probe},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": cpus_per_worker}),
        run_config=RunConfig(name="ray_train", storage_path=str(output / "ray"),
                             failure_config=FailureConfig(max_failures=retries)))
    outcome = {}

    def run():
        try:
            trainer.fit()
        except BaseException as error:  # re-raised below, in the caller's thread
            outcome["error"] = error

    thread = threading.Thread(target=run, name="ray-train-fit", daemon=True)
    thread.start()

    def deliver(kind, value):
        if kind == "step" and report:
            report(value)
        elif kind == "log":
            log(value)

    while thread.is_alive():
        try:
            deliver(*messages.get(timeout=1))
        except Empty:
            pass
    while True:  # what rank 0 sent just before the end
        try:
            deliver(*messages.get_nowait())
        except Empty:
            break
    ray.kill(messages.actor)
    if "error" in outcome:
        raise outcome["error"]
    return output / "model"
