"""Ray: a real two-node cluster on 127.0.0.1 (token auth on), curation and training on it beside the local paths.

The tests share one cluster (module scope, one xdist group); the last one stops it and checks that nothing of it
is left: no process, no /dev/shm file.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import psutil
import pytest
import torch
from safetensors.torch import load_file

from lavie_model.cluster.ray_cluster import LocalCluster
from lavie_model.curation import store
from lavie_model.curation.demo_corpus import build_demo_corpus
from lavie_model.curation.shards import write_image_shards
from pipelines.curation import VIDEO_ASSETS, CurationSettings
from pipelines.training import TrainingSettings, base_model
from tests.test_training import clean_env
from tests.test_training_assets import curated_home

pytestmark = pytest.mark.xdist_group("ray")
LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}
TABLES = ("probe", "quarantine", "clips", "clip_drops", "motion", "captions", "scores", "filtered", "shards")


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """Two Ray nodes of one CPU each on this machine; this process a client of it (its token in the environment)."""
    shm = set(os.listdir("/dev/shm"))
    saved = dict(os.environ)
    cluster = LocalCluster(tmp_path_factory.mktemp("ray"), nodes=2, cpus=1)
    cluster.tree = [psutil.Process(cluster.pid), *psutil.Process(cluster.pid).children(recursive=True)]
    cluster.shm = shm
    os.environ.update(cluster.env)
    yield cluster
    cluster.stop()
    os.environ.clear()
    os.environ.update(saved)


def listening(processes) -> set[str]:
    return {c.laddr.ip for p in processes if p.is_running() for c in p.net_connections("inet") if c.status == "LISTEN"}


def test_the_cluster_listens_on_loopback_only_and_wants_its_token(ray_cluster):
    tree = [psutil.Process(ray_cluster.pid), *psutil.Process(ray_cluster.pid).children(recursive=True)]
    addresses = listening(tree)
    assert addresses and addresses <= LOOPBACK, addresses
    assert ray_cluster.dashboard.startswith("http://127.0.0.1:")
    with pytest.raises(urllib.error.HTTPError) as refused:  # the job API without the token
        urllib.request.urlopen(ray_cluster.dashboard + "/api/jobs/", timeout=10)
    assert refused.value.code in (401, 403)
    request = urllib.request.Request(ray_cluster.dashboard + "/api/jobs/",
                                     headers={"Authorization": f"Bearer {ray_cluster.env['RAY_AUTH_TOKEN']}"})
    assert urllib.request.urlopen(request, timeout=10).status == 200


def plain(value):
    """Nested arrays as nested lists (their values exact), so that cells compare as plain values."""
    if isinstance(value, np.ndarray):
        return [plain(item) for item in value.tolist()] if value.dtype == object else value.tolist()
    return [plain(item) for item in value] if isinstance(value, list) else value


def comparable(table: pd.DataFrame) -> pd.DataFrame:
    """A table without the run that wrote it, its array cells as their exact values in text."""
    table = table.drop(columns=["run_id"], errors="ignore")
    for column in table.columns:
        if table[column].map(lambda cell: isinstance(cell, np.ndarray)).any():
            table[column] = table[column].map(lambda cell: repr(plain(cell)))
    return table


def kill_first_task(name: str, killed: list, stop: threading.Event) -> None:
    """SIGKILL the first Ray worker seen running task `name` (its process title is ray::NAME)."""
    while not stop.is_set() and not killed:
        for process in psutil.process_iter(["pid", "cmdline"]):
            if process.info["cmdline"] and process.info["cmdline"][0].startswith(f"ray::{name}"):
                time.sleep(0.3)  # well into the file
                os.kill(process.info["pid"], signal.SIGKILL)
                killed.append(process.info["pid"])
                return
        time.sleep(0.02)


def test_curation_on_ray_gives_the_local_pools_tables_and_shards_though_a_worker_dies(ray_cluster, tmp_path):
    corpus = build_demo_corpus(tmp_path / "corpus" / "demo", n_shapes=6, n_stills=0)
    home = tmp_path / "home"
    batch = store.ingest([corpus.videos[0].parent], home=home)
    folder = home / "curation" / batch.key
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("video_batches", [batch.key])

        def curate(**settings):
            return dg.materialize(VIDEO_ASSETS, partition_key=batch.key, instance=instance, resources={
                "settings": CurationSettings(lavie_home=str(home), preset="tiny", workers=2, **settings)})

        assert curate().success
        local = {name: comparable(pd.read_parquet(folder / f"{name}.parquet")) for name in TABLES}
        killed, stop = [], threading.Event()
        killer = threading.Thread(target=kill_first_task, args=("probe_and_cut_job", killed, stop))
        killer.start()
        try:
            result = curate(ray_address=ray_cluster.address)
        finally:
            stop.set()
            killer.join()
        assert result.success and killed, "no Ray worker was caught cutting"
        logs = [e.user_message for e in instance.all_logs(result.run_id)]
    assert any(m.startswith("probe_and_cut_job: ") and m.endswith("on 2 nodes at " + ray_cluster.address + ", 1 retried")
               for m in logs), [m for m in logs if "Ray tasks" in m]
    for name in TABLES:
        pd.testing.assert_frame_equal(comparable(pd.read_parquet(folder / f"{name}.parquet")), local[name],
                                      obj=name)
    raw = pd.read_parquet(folder / "raw.parquet")
    assert len(raw) == len(local["probe"]) + len(local["quarantine"]) == len(corpus.videos)
    assert not list((home / "clips" / batch.key).glob(".cutting-*"))  # the killed task's partial clips are gone
    clipped = next(e for e in result.get_asset_materialization_events() if e.asset_key.path[-1] == "video_clips")
    assert clipped.materialization.metadata["engine"].value == f"ray at {ray_cluster.address}"


@pytest.mark.skipif(not shutil.which("unshare") or os.geteuid() != 0, reason="needs unshare and root (a mount namespace)")
def test_a_lavie_home_that_the_nodes_cannot_see_is_refused_by_name(ray_cluster, tmp_path):
    """A driver whose LAVIE_HOME is a tmpfs mounted in its own mount namespace: the nodes cannot see it."""
    private = tmp_path / "private"
    private.mkdir()
    script = ("from pathlib import Path\nfrom lavie_model.cluster.ray_cluster import check_shared_storage, connected\n"
              f"with connected({ray_cluster.address!r}) as ray:\n"
              f"    print(check_shared_storage(ray, Path({str(private)!r})))\n")
    command = ["unshare", "-m", "sh", "-c", 'mount -t tmpfs tmpfs "$1" && exec "$2" -c "$3"', "sh", str(private),
               sys.executable, script]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert f"LAVIE_HOME {private} is not visible from the Ray node(s) 127.0.0.1" in done.stderr
    assert done.stderr.count("127.0.0.1 (") == 2  # both nodes named
    shared = subprocess.run([sys.executable, "-c", script.replace("private", "shared")], capture_output=True,
                            text=True, timeout=120)
    assert shared.stdout.strip() == "2", shared.stderr[-2000:]


def unet(folder: Path) -> dict:
    return load_file(next((folder / "unet_base").glob("*.safetensors")))


def kill_a_rank_after_the_first_checkpoint(runs: Path, killed: list, stop: threading.Event) -> None:
    """SIGKILL a Ray Train worker once a run under `runs` has written its first checkpoint."""
    while not stop.is_set() and not killed:
        if list(runs.glob("*/checkpoints/latest")):
            for process in psutil.process_iter(["pid", "cmdline"]):
                if process.info["cmdline"] and process.info["cmdline"][0].startswith("ray::RayTrainWorker"):
                    os.kill(process.info["pid"], signal.SIGKILL)
                    killed.append(process.info["pid"])
                    return
        time.sleep(0.05)


def test_the_ray_launcher_trains_as_the_deepspeed_launcher_through_pipes_and_a_killed_rank(ray_cluster, tiny_folder,
                                                                                          tmp_path, monkeypatch):
    """Two ranks on the two Ray nodes, one killed after the first checkpoint (the group restarts and continues from
    it), against two ranks under the deepspeed launcher, uninterrupted: the same weights and losses."""
    for name, value in clean_env().items():
        monkeypatch.setenv(name, value)
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    home = curated_home(tmp_path / "home")
    image = home / "clips" / "red.png"  # a second image, so that each of two ranks has one
    write_image_shards(pd.DataFrame([{"key": "red2", "path": str(image), "caption": "red again"}]),
                       home / "shards" / "images" / "images-b2", "images-b2")
    common = {"lavie_home": str(home), "initial_model": str(tiny_folder), "max_steps": {"base": 4},
              "overrides": ["image_frames=1", "batch_size=1", "evaluate_every=0", "log_every=1",
                            "checkpoint_every=2"]}
    runs, steps, killed, stop = {}, {}, [], threading.Event()
    with dg.instance_for_test() as instance:
        for launcher, extra in (("deepspeed", {"ranks": 2}),
                                ("ray", {"nodes": 2, "ranks": 1, "ray_address": ray_cluster.dashboard})):
            killer = threading.Thread(target=kill_a_rank_after_the_first_checkpoint,
                                      args=(home / "training" / "base", killed, stop))
            if launcher == "ray":
                killer.start()
            try:
                result = dg.materialize([base_model], instance=instance, resources={
                    "training": TrainingSettings(launcher=launcher, **common, **extra),
                    "pipes": dg.PipesSubprocessClient()})
            finally:
                stop.set() if launcher == "ray" else None
            assert result.success, launcher
            runs[launcher] = result.get_asset_materialization_events()[0].materialization.metadata
            # rank 0's steps reached the run's log through Pipes, whatever the workers printed
            steps[launcher] = [json.loads(e.user_message[5:])["step"] for e in instance.all_logs(result.run_id)
                               if e.user_message.startswith("step {")]
            if launcher == "deepspeed":  # the killer waits for the Ray run's checkpoint, not this one's
                for old in (home / "training" / "base").iterdir():
                    (old / "checkpoints" / "latest").rename(old / "checkpoints" / "latest.done")
    assert killed, "no Ray Train worker was killed"
    assert steps["deepspeed"] == [1, 2, 3, 4]
    # the restarted ranks continued from the checkpoint at step 2 (a step after it may come twice), not from step 0
    assert set(steps["ray"]) == {1, 2, 3, 4} and steps["ray"][-1] == 4
    assert steps["ray"].count(1) == steps["ray"].count(2) == 1
    ray_run, ds_run = runs["ray"], runs["deepspeed"]
    assert ray_run["steps"].value == ds_run["steps"].value == 4
    assert ray_run["final_loss"].value == pytest.approx(ds_run["final_loss"].value, rel=1e-5)
    assert ray_run["loss_curve"].value.startswith("![loss](data:image/png;base64,")
    assert "Ray Job ID" in ray_run  # the Pipes client's, beside the trainer's own report
    a, b = unet(Path(ray_run["model_folder"].value)), unet(Path(ds_run["model_folder"].value))
    assert set(a) == set(b) and all(torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6) for k in a)
    summary = json.loads((Path(ray_run["run_dir"].value) / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["weights_in_sync"]


def test_stopping_the_cluster_leaves_no_process_and_no_shared_memory_file(ray_cluster):
    ray_cluster.stop()
    left = [p.pid for p in ray_cluster.tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not left
    # what tests running beside this one make there: DeepSpeed's buffers (unlinked as they start), PostgreSQL's
    # segments (tests/postgres.py) and Python's multiprocessing semaphores (Dagster's executors)
    others = ("deepspeed_allreduce_buffer_", "PostgreSQL.", "sem.mp-")
    new = {name for name in set(os.listdir("/dev/shm")) - ray_cluster.shm if not name.startswith(others)}
    assert not new
