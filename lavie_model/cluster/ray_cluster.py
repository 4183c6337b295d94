"""Ray, the engine curation and training scale on beyond one machine (docs/cluster.md).

Nothing here is imported on the single-machine path: Ray loads only where an address is given.

- `connected(address)`: this process as a driver of the cluster at `address` for the length of a block.
- `map_tasks`: a function over jobs as Ray tasks (declared CPUs and memory, retried when a worker dies), results
  in the jobs' order, so the tables built from them are those of the local process pool.
- `check_shared_storage`: every alive node sees a folder (LAVIE_HOME) at the same path, or a clear error.
- `LocalCluster` (and `python -m lavie_model.cluster.ray_cluster [--nodes N] [--cpus C]`): a Ray cluster of one
  or more nodes on this machine, every listener on 127.0.0.1, token authentication on with a random token; for
  tests, benchmarks and trying the Ray paths out.

Ray's job API runs whatever code it is sent (CVE-2023-48022, the "ShadowRay" attacks on exposed dashboards):
a cluster started here binds to loopback and requires its token; reach a remote one through a tunnel or a
private network, with its token in RAY_AUTH_TOKEN and RAY_AUTH_MODE=token (docs/cluster.md).
"""

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from ..training.trainer import free_port

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")
# Ray binds its listeners to the machine's external address unless told the cluster is local-only; a client of a
# loopback cluster must say the same, or it dials the external address (read once, when ray is first imported).
LOCAL_ONLY = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
TASK_MEMORY = 1 << 30  # bytes declared per curation task: a clip writer's spill (256 MB) and its x264 encoder
TASK_RETRIES = 3  # times a task is run again when its worker process or node dies


def host_of(address: str) -> str:
    """The host of a Ray address: HOST:PORT, ray://HOST:PORT or http://HOST:PORT."""
    rest = address.split("://", 1)[-1]
    return rest.rsplit(":", 1)[0] if ":" in rest else rest


def is_loopback(address: str) -> bool:
    return host_of(address) in LOOPBACK_HOSTS


def become_client_of(address: str) -> None:
    """Prepare this process to talk to the cluster at `address`: for a loopback cluster, the local-only switch,
    which Ray reads when it is first imported (so call this before `import ray`)."""
    if is_loopback(address):
        os.environ.update(LOCAL_ONLY)


@contextlib.contextmanager
def connected(address: str):
    """`ray`, this process connected as a driver to the cluster at `address` (HOST:PORT from a cluster node,
    ray://HOST:10001 from outside it) for the block; disconnected after, unless it was connected before."""
    become_client_of(address)
    import ray

    if ray.is_initialized():
        yield ray
        return
    context = ray.init(address=address, log_to_driver=False, logging_level="WARNING")
    _dashboard[ray.get_runtime_context().get_job_id()] = context.dashboard_url
    try:
        yield ray
    finally:
        ray.shutdown()


def map_tasks(ray, function, jobs: list, cpus: float = 1, memory: int = TASK_MEMORY,
              retries: int = TASK_RETRIES, progress=None) -> list:
    """[function(job) for job in jobs], each call a Ray task on `cpus` CPUs and `memory` bytes, run again up to
    `retries` times if its worker dies; in the jobs' order. `progress(done, total)` after each finishes."""
    remote = ray.remote(function).options(num_cpus=cpus, memory=memory, max_retries=retries,
                                          retry_exceptions=False)
    refs = [remote.remote(job) for job in jobs]
    waiting = list(refs)
    while waiting:
        ready, waiting = ray.wait(waiting, num_returns=1)
        ray.get(ready)  # raises a task's error at once, not after the rest
        if progress:
            progress(len(refs) - len(waiting), len(refs))
    return ray.get(refs)


def _reads(path: str, token: str) -> bool:
    try:
        return Path(path).read_text() == token
    except OSError:
        return False


def check_shared_storage(ray, folder: Path) -> int:
    """Raise naming the folder and the nodes unless every alive node reads a file written here into `folder`;
    the number of nodes checked."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    folder.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex
    marker = folder / f".ray-visible-{token}"
    marker.write_text(token)
    try:
        nodes = [node for node in ray.nodes() if node["Alive"]]
        probe = ray.remote(_reads)
        refs = [probe.options(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False))
                .remote(str(marker), token) for node in nodes]
        blind = [f"{node['NodeManagerAddress']} ({node['NodeID'][:8]})"
                 for node, seen in zip(nodes, ray.get(refs)) if not seen]
    finally:
        marker.unlink(missing_ok=True)
    if blind:
        raise FileNotFoundError(
            f"LAVIE_HOME {folder} is not visible from the Ray node(s) {', '.join(blind)}: put it on storage that every "
            "node mounts at the same path (NFS, a shared volume), see docs/cluster.md")
    return len(nodes)


_dashboard = {}  # job id: the dashboard of the cluster `connected` joined, for the state API


def tasks_retried(ray, names: list[str]) -> int | None:
    """How many attempts of this job's tasks named `names` were retries, among its last 10,000 attempts (Ray's
    state API, which hears of attempts about a second late); None where the dashboard cannot be asked."""
    job = ray.get_runtime_context().get_job_id()
    if not _dashboard.get(job):
        return None
    time.sleep(1.5)
    try:
        from ray.util.state import list_tasks

        tasks = list_tasks(address="http://" + _dashboard[job].removeprefix("http://"), filters=[("job_id", "=", job)],
                           limit=10_000, raise_on_missing_output=False)  # the API server's most
    except Exception:  # a figure for the logs, not a reason to fail the step
        return None
    return sum(1 for task in tasks if task.name in names and task.attempt_number > 0)


class LocalCluster:
    """A Ray cluster of `nodes` nodes of `cpus` CPUs each on this machine, in a process group of its own: every
    listener on 127.0.0.1, token authentication on (a random token), its log under `temp_dir` and Ray's session
    files in a short folder under /tmp, removed when it stops.

    `address` (GCS, for drivers), `dashboard` (http://..., for the job API), `env` (what a client needs in its
    environment: the token and the local-only switch), `pid`, `started_in` (seconds). Stop it with `stop()` or by
    leaving the `with` block; nothing of it is left running."""

    def __init__(self, temp_dir: Path, nodes: int = 1, cpus: int = 2, object_store_mb: int = 128,
                 timeout: float = 120):
        self.temp_dir = Path(temp_dir)
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        # Ray's sockets live under its session folder, and a Unix socket's path has at most 107 bytes
        self.session_dir = Path(tempfile.mkdtemp(prefix="lavie-ray-", dir="/tmp"))
        self.env = {**LOCAL_ONLY, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
        command = [sys.executable, "-m", "lavie_model.cluster.ray_cluster", "--serve", "--nodes", str(nodes),
                   "--cpus", str(cpus), "--object-store-mb", str(object_store_mb), "--temp-dir", str(self.session_dir)]
        started = time.perf_counter()
        self.process = subprocess.Popen(command, env=os.environ | self.env, stdout=subprocess.PIPE,
                                        stderr=open(self.temp_dir / "cluster.log", "w"), text=True,
                                        start_new_session=True)
        self.pid = self.process.pid
        ready = {}
        timer = threading.Timer(timeout, self.process.kill)
        timer.start()
        try:
            line = self.process.stdout.readline()
            ready = json.loads(line) if line.startswith("{") else {}
        finally:
            timer.cancel()
        if not ready:
            self.stop()
            log = (self.temp_dir / "cluster.log").read_text()[-3000:]
            raise RuntimeError(f"the local Ray cluster did not start within {timeout:.0f} s:\n{log}")
        self.started_in = time.perf_counter() - started
        self.address, self.dashboard = ready["address"], "http://" + ready["dashboard"]

    def stop(self, grace: float = 30) -> None:
        """SIGTERM to the cluster's process (it shuts its nodes down); then SIGKILL to whatever of its process tree
        is left after `grace` seconds, and wait until every process of it is gone."""
        import psutil

        try:
            tree = [psutil.Process(self.pid), *psutil.Process(self.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            tree = []
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        _, alive = psutil.wait_procs(tree, timeout=grace)
        for process in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        psutil.wait_procs(alive, timeout=10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        self.process.wait()
        shutil.rmtree(self.session_dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def wait_for_job_agent(cluster, timeout: float = 120) -> None:
    """Block until the head's dashboard agent has registered its address in GCS: the job API answers "No available
    agent to submit job" for the first seconds after the nodes are up (longer on a loaded machine), and a job
    submitted then fails. Raises TimeoutError after `timeout` seconds."""
    from ray._private.ray_constants import KV_NAMESPACE_DASHBOARD
    from ray._raylet import GcsClient
    from ray.dashboard.consts import DASHBOARD_AGENT_ADDR_NODE_ID_PREFIX

    gcs = GcsClient(address=cluster.address)
    key = f"{DASHBOARD_AGENT_ADDR_NODE_ID_PREFIX}{cluster.head_node.node_id}".encode()
    deadline = time.monotonic() + timeout
    while not gcs.internal_kv_get(key, namespace=KV_NAMESPACE_DASHBOARD, timeout=10):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the head's dashboard agent did not register within {timeout:.0f} s")
        time.sleep(0.2)


def serve(nodes: int, cpus: int, object_store_mb: int, temp_dir: str) -> None:
    """Run a loopback cluster until SIGTERM; print one JSON line (its addresses) once every node is up."""
    if os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") != "0" or os.environ.get("RAY_AUTH_MODE") != "token" \
            or not os.environ.get("RAY_AUTH_TOKEN"):
        raise SystemExit("--serve needs RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (else Ray listens on every interface), "
                         "RAY_AUTH_MODE=token and RAY_AUTH_TOKEN: run without --serve to have them set")
    # Ray writes the head's address to $RAY_TMPDIR/ray/ray_current_cluster (default /tmp/ray, which a fresh
    # machine lacks); keep it in this cluster's own folder, where it neither fails nor redirects other drivers
    os.environ["RAY_TMPDIR"] = temp_dir
    Path(temp_dir, "ray").mkdir(parents=True, exist_ok=True)
    from ray.cluster_utils import Cluster

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    store = object_store_mb << 20
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": cpus, "object_store_memory": store, "temp_dir": temp_dir, "include_dashboard": True,
        "dashboard_host": "127.0.0.1", "dashboard_port": 0, "ray_client_server_port": free_port(),
        "dashboard_agent_listen_port": free_port()})  # not Ray's fixed 52365: clusters side by side
    try:
        for _ in range(nodes - 1):
            cluster.add_node(num_cpus=cpus, object_store_memory=store)
        cluster.wait_for_nodes()
        wait_for_job_agent(cluster)
        print(json.dumps({"address": cluster.address, "dashboard": cluster.webui_url}), flush=True)
        stop.wait()
    finally:
        cluster.shutdown()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description="A Ray cluster on this machine, on 127.0.0.1 with token auth, until Ctrl-C; prints the settings "
                    "and the environment its clients need.")
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 1, help="CPUs per node")
    parser.add_argument("--object-store-mb", type=int, default=128)
    parser.add_argument("--temp-dir", default=None, help="the cluster log's folder (default: a new folder under /tmp)")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # LocalCluster's child process
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.nodes, args.cpus, args.object_store_mb, args.temp_dir)
        return
    temp_dir = Path(args.temp_dir or tempfile.mkdtemp(prefix="lavie-ray-"))
    with LocalCluster(temp_dir, args.nodes, args.cpus, args.object_store_mb) as cluster:
        print(f"Ray: {args.nodes} node(s) of {args.cpus} CPUs up in {cluster.started_in:.1f} s, files in {temp_dir}\n"
              f"  CurationSettings(ray_address=\"{cluster.address}\")\n"
              f"  TrainingSettings(launcher=\"ray\", ray_address=\"{cluster.dashboard}\")\n"
              "in the environment of the Dagster process (the token is this cluster's, new each start):\n"
              + "".join(f"  export {name}={value}\n" for name, value in cluster.env.items())
              + "Ctrl-C stops it.", flush=True)
        stop = threading.Event()
        for number in (signal.SIGINT, signal.SIGTERM):
            signal.signal(number, lambda *_: stop.set())
        stop.wait()


if __name__ == "__main__":
    main()
