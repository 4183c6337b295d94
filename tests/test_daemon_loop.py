"""The loop the mission names, run by Dagster's daemon alone on the PostgreSQL instance: clips dropped into the inbox
are curated (the inbox sensor), their latents encoded, the cascade retrained on the cron's next tick, evaluated and
gated (pipelines/automation.py), with no call from the test; every hop is read back from the instance's records.
The retraining run's worker is killed on the way: the run is marked failed, its step stops its training, the
instance's run retries launch it again, and the retry trains on from the killed attempt's checkpoint."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import dagster as dg
import psutil
import pytest

from lavie_model.curation.demo_corpus import build_demo_corpus
from lavie_model.curation.lineage import lineage
from postgres import free_port

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CLIPS = ("shapes_0000", "shapes_0001", "shapes_0002", "shapes_0003")
# the cascade a few steps per stage, the base stage long enough to be killed between two checkpoints
LOOP_DEFS = """
from pipelines.definitions import definitions
from pipelines.demo import DEMO_OVERRIDES
from pipelines.evaluation import EvaluationSettings
from pipelines.training import TrainingSettings

defs = definitions(
    cron="* * * * *",
    training=TrainingSettings(max_steps={"base": int(__import__("os").environ["LOOP_BASE_STEPS"]),
                                         "interpolation": 1, "vsr": 1},
                              overrides=DEMO_OVERRIDES + ["checkpoint_every=1", "batch_size=2"]),
    evaluation_settings=EvaluationSettings(samples_per_prompt=1, validation_clips=2, base_steps=2,
                                           interpolation_steps=2, vsr_steps=2, gallery=1, score_start=False),
)
"""


class Services:
    """The code server and `dagster-daemon run`, each in its own session; `stop` kills both trees and checks that
    nothing of them is left."""

    def __init__(self, folder: Path, env: dict, webserver: bool = False):
        port, self.web_port = free_port(), free_port()
        (folder / "loop_defs.py").write_text(LOOP_DEFS)
        (folder / "workspace.yaml").write_text(textwrap.dedent(f"""\
            load_from:
              - grpc_server:
                  host: 127.0.0.1
                  port: {port}
                  location_name: lavie
            """))
        self.env, self.folder = env, folder
        self.processes = [
            subprocess.Popen([str(BIN / "dagster"), "code-server", "start", "-f", str(folder / "loop_defs.py"),
                              "-d", str(ROOT), "--host", "127.0.0.1", "--port", str(port)],
                             env=env, cwd=ROOT, start_new_session=True,
                             stdout=open(folder / "code_server.log", "w"), stderr=subprocess.STDOUT),
            subprocess.Popen([str(BIN / "dagster-daemon"), "run", "-w", str(folder / "workspace.yaml")],
                             env=env, cwd=ROOT, start_new_session=True,
                             stdout=open(folder / "daemon.log", "w"), stderr=subprocess.STDOUT)]
        if webserver:
            self.processes.append(subprocess.Popen(
                [str(BIN / "dagster-webserver"), "-w", str(folder / "workspace.yaml"), "-h", "127.0.0.1",
                 "-p", str(self.web_port)], env=env, cwd=ROOT, start_new_session=True,
                stdout=open(folder / "webserver.log", "w"), stderr=subprocess.STDOUT))

    def tree(self) -> list[psutil.Process]:
        found = []
        for process in self.processes:
            try:
                found += [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
            except psutil.NoSuchProcess:
                pass
        return found

    def stop(self) -> None:
        tree = self.tree()
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        _, alive = psutil.wait_procs(tree, timeout=20)
        for process in alive:
            process.kill()
        psutil.wait_procs(alive, timeout=10)
        for process in self.processes:
            process.wait(timeout=10)
        assert not [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]

    def logs(self) -> str:
        return "\n".join(f"--- {name}\n{(self.folder / name).read_text()[-4000:]}"
                         for name in ("code_server.log", "daemon.log", "webserver.log")
                         if (self.folder / name).is_file())


def wait_for(what: str, check, services: Services, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(2)
    pytest.fail(f"{what}: not within {timeout:.0f} s\n{services.logs()}")


def runs(instance, **filters) -> list:
    return instance.get_runs(dg.RunsFilter(**filters))


def materialized(instance, asset: str) -> list:
    return instance.fetch_materializations(dg.AssetKey(asset), limit=100).records


def drop_clips(tmp_path: Path) -> Path:
    """The demo corpus's first clips and captions in LAVIE_HOME/inbox/videos, settled; returns LAVIE_HOME."""
    build_demo_corpus(tmp_path / "corpus", n_shapes=4, n_stills=0)
    home = Path(os.environ["LAVIE_HOME"])
    inbox = home / "inbox" / "videos"
    inbox.mkdir(parents=True)
    for name in CLIPS:
        for suffix in (".mp4", ".txt"):
            copied = shutil.copy(tmp_path / "corpus" / "videos" / f"{name}{suffix}", inbox)
            os.utime(copied, (time.time() - 60, time.time() - 60))  # copied in a minute ago: settled
    return home


@pytest.fixture
def loop(postgres_home, tmp_path):
    home = drop_clips(tmp_path)
    # 40 base steps of 2 clips: the killed attempt (at its second checkpoint) must still be training when its step
    # notices the run died (within a few seconds), at about 0.3 s a step
    env = os.environ | {"LAVIE_AUTOMATION_INTERVAL": "5", "LOOP_BASE_STEPS": "40", "PYTHONPATH": str(ROOT)}
    services = Services(tmp_path, env)
    try:
        yield services, home
    finally:
        services.stop()


def run_worker_of(pid: int) -> psutil.Process:
    """The run worker a process descends from: the ancestor that the code server's gRPC server started."""
    chain = [psutil.Process(pid), *psutil.Process(pid).parents()]
    for process, parent in zip(chain, chain[1:]):
        if "api grpc" in " ".join(parent.cmdline()):
            return process
    raise LookupError(f"process {pid} is not under a code server")


def test_the_daemon_curates_encodes_retrains_and_gates_by_itself_and_retries_a_killed_run(loop):
    services, home = loop
    started = time.monotonic()
    hops = {}

    def hop(name):
        hops[name] = round(time.monotonic() - started)

    with dg.DagsterInstance.get() as instance:
        def succeeded(job_name):
            done = [run for run in runs(instance, statuses=[dg.DagsterRunStatus.SUCCESS]) if run.job_name == job_name]
            return done or None

        curated = wait_for("the inbox sensor's curation run", lambda: succeeded("curate_videos"), services, 300)
        hop("curated")
        assert curated[0].tags["dagster/sensor_name"] == "inbox_sensor"
        batch = curated[0].tags["dagster/partition"]
        wait_for("the latents", lambda: materialized(instance, "vsr_latent_shards")
                 and materialized(instance, "base_latent_shards"), services, 400)
        hop("latents encoded")

        # the retraining run: killed, worker and all, once its base stage has written two checkpoints
        checkpoints = home / "training" / "base"
        folder = wait_for("the base stage's second checkpoint", lambda: next(
            (run for run in checkpoints.glob("*") if len(list((run / "checkpoints").glob("step_*"))) >= 2), None),
            services, 300)
        hop("training, second checkpoint")
        def trainers():
            return [p for p in psutil.process_iter(["cmdline", "create_time", "status"])
                    if str(folder) in " ".join(p.info["cmdline"] or []) and p.info["status"] != psutil.STATUS_ZOMBIE]

        killed_run = instance.get_run_by_id(folder.name)  # the run folder is named after the run (its root)
        run_worker_of(trainers()[0].pid).kill()  # the run worker alone, as the kernel's OOM killer would
        killed_at = time.time()
        hop("run worker killed")
        wait_for("the killed run marked failed", lambda: instance.get_run_by_id(killed_run.run_id).status
                 == dg.DagsterRunStatus.FAILURE, services, 120)
        hop("marked failed")
        # its step saw the run end and stopped its training: nothing of the killed attempt trains on beside the retry
        wait_for("the killed attempt's trainer to stop", lambda: not [
            p for p in trainers() if p.info["create_time"] < killed_at],
            services, 60)
        hop("killed attempt stopped")
        retry = wait_for("its retry", lambda: runs(instance, tags={"dagster/parent_run_id": killed_run.run_id}),
                         services, 120)[0]
        hop("retry launched")
        gate = wait_for("the gate", lambda: materialized(instance, "evaluation"), services, 600)
        hop("evaluated")
        print("hops (s from the daemon's start):", json.dumps(hops))
        print("runs:", json.dumps([(run.job_name, run.status.value, round(
            (instance.get_run_record_by_id(run.run_id).end_time or 0) -
            (instance.get_run_record_by_id(run.run_id).start_time or 0))) for run in runs(instance)]))

        # the retry trained on in the killed run's folder from its last checkpoint: every step once
        assert retry.tags["dagster/root_run_id"] == killed_run.run_id
        base_event = materialized(instance, "base_model")
        assert len(base_event) == 1 and base_event[0].run_id == retry.run_id  # the killed run materialized nothing
        base = base_event[0].asset_materialization.metadata
        assert Path(base["run_dir"].value) == folder
        logged = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        steps = [entry["step"] for entry in logged if "loss" in entry]
        assert steps == sorted(set(steps)) and steps[-1] == base["steps"].value
        assert "resuming from the latest" in "".join(
            event.user_message for event in instance.all_logs(retry.run_id) if event.user_message)

        # every hop started by the daemon: the inbox sensor, then the automation sensor; none by the test
        everything = runs(instance)
        assert all(run.tags.get("dagster/sensor_name") in ("inbox_sensor", "lavie_automation") for run in everything)
        for asset in ("t2i_model", "upscaler_model", "base_latent_shards", "base_model", "interpolation_model",
                      "vsr_model", "evaluation"):
            (record,) = materialized(instance, asset)  # each once: nothing twice
            assert instance.get_run_by_id(record.run_id).tags["dagster/sensor_name"] == "lavie_automation"
        assert {"base_model", "interpolation_model", "vsr_model", "evaluation"} <= {
            key.to_user_string() for key in killed_run.asset_selection}
        assert gate[0].run_id == retry.run_id
        wait_for("the retry's end", lambda: instance.get_run_by_id(retry.run_id).is_finished, services, 120)
        keys = [dg.AssetCheckKey(dg.AssetKey("evaluation"), name) for name in ("beats_baselines", "no_regression")]
        latest = instance.event_log_storage.get_latest_asset_check_execution_by_key(keys)
        checks = {record.key.name: record for record in latest.values()}
        assert set(checks) == {"beats_baselines", "no_regression"}
        passed = all(check.status.value == "SUCCEEDED" for check in checks.values())
        assert len(materialized(instance, "promoted_model")) == (1 if passed else 0)  # promoted, or refused

        # lineage: a sample of the new batch -> its shard -> the base run that trained on it
        manifest = next((home / "shards" / "videos" / batch).glob("*.json"))
        record = lineage(json.loads(manifest.read_text())["keys"][0], home)
        assert record["batch"] == batch and {item["family"] for item in record["latents"]} == {"base", "vsr"}
        trained_on = json.loads((folder / "run.json").read_text())["videos"]
        assert hashlib.sha256(Path(record["shard"]).read_bytes()).hexdigest() in [v["sha256"] for v in trained_on]


def graphql(port: int, query: str) -> dict:
    import urllib.request

    request = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", data=json.dumps({"query": query}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read())["data"]


@pytest.fixture
def own_postgres(tmp_path, monkeypatch):
    """A PostgreSQL server of this test's own (it stops and starts it) and DAGSTER_HOME on it, as postgres_home."""
    from postgres import postgres_server

    with postgres_server() as server:
        home = tmp_path / "dagster_home"
        home.mkdir()
        shutil.copy(ROOT / "dagster_home" / "postgres" / "dagster.yaml", home)
        for name, value in server.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("DAGSTER_HOME", str(home))
        monkeypatch.setenv("LAVIE_HOME", str(tmp_path / "data"))
        yield server


def test_the_daemon_and_the_webserver_ride_out_a_postgresql_restart(own_postgres, tmp_path):
    """PostgreSQL stops while the inbox's curation run is in progress and starts again 15 s later: the daemon and
    the webserver carry on with no manual step, and the interrupted run is accounted for (it finished, or failed
    and was retried), its batch curated once at most."""
    home = drop_clips(tmp_path)
    env = os.environ | {"LAVIE_AUTOMATION_INTERVAL": "5", "LOOP_BASE_STEPS": "1", "PYTHONPATH": str(ROOT)}
    services = Services(tmp_path, env, webserver=True)
    try:
        with dg.DagsterInstance.get() as instance:
            def curating():
                found = [run for run in runs(instance) if run.job_name == "curate_videos"]
                started = found and instance.all_logs(found[0].run_id, of_type=dg.DagsterEventType.STEP_START)
                return found[0] if started else None

            run = wait_for("the curation run's first step", curating, services, 300)
        own_postgres.stop()
        down = time.monotonic()
        time.sleep(15)
        own_postgres.start()
        up = time.time()
        timings = {"down_s": round(time.monotonic() - down)}
        with dg.DagsterInstance.get() as instance:
            def heartbeats_after_restart():
                beats = instance.get_daemon_heartbeats()
                return beats and all(beat.timestamp > up for beat in beats.values())

            wait_for("every daemon's heartbeat after the restart", heartbeats_after_restart, services, 180)
            timings["daemon_s"] = round(time.time() - up)
            assert all(process.poll() is None for process in services.processes)  # none restarted by hand
            answered = wait_for("the webserver's runs", lambda: graphql(
                services.web_port, "{ runsOrError { ... on Runs { results { runId status } } } }"), services, 60)
            timings["webserver_s"] = round(time.time() - up)
            assert run.run_id in [found["runId"] for found in answered["runsOrError"]["results"]]

            def accounted():
                record = instance.get_run_by_id(run.run_id)
                if record.status == dg.DagsterRunStatus.SUCCESS:
                    return "succeeded"
                if record.status == dg.DagsterRunStatus.FAILURE:
                    retries = runs(instance, tags={"dagster/parent_run_id": run.run_id})
                    if retries and not retries[0].is_finished:
                        return None
                    return "failed" + (f", retried: {retries[0].status.value}" if retries else "")
                return None

            outcome = wait_for("the interrupted run's outcome", accounted, services, 300)
            timings["run_accounted_s"] = round(time.time() - up)
            print("PostgreSQL restart:", outcome, json.dumps(timings))
            batch = run.tags["dagster/partition"]
            shards = [record for record in materialized(instance, "video_shards")
                      if record.asset_materialization.partition == batch]
            assert len(shards) <= 1 and (len(shards) == 1) == ("succeeded" in outcome or "SUCCESS" in outcome)
    finally:
        services.stop()
