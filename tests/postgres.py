"""A throwaway PostgreSQL server for a test: its own data folder, 127.0.0.1 on a free port, trust auth.

PostgreSQL refuses to run as root, so as root the server runs as the `postgres` user (in a folder it owns).
The programs come from PATH or Debian's /usr/lib/postgresql/VERSION/bin (`apt-get install postgresql`).
"""

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

INSTALL = "apt-get install postgresql (Debian's package; .ci/run installs it where it is missing)"


def program(name: str) -> str:
    """The path of PostgreSQL's `name` (initdb, pg_ctl); a failed test naming the package where it is missing."""
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)),
                                       None)
    if found is None:
        pytest.fail(f"PostgreSQL's `{name}` was not found on PATH or under /usr/lib/postgresql/*/bin: {INSTALL}",
                    pytrace=False)
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def postgres_server(db_name: str = "dagster"):
    """Start a PostgreSQL server with an empty database `db_name`; yields the DAGSTER_PG_* environment that
    dagster_home/postgres/dagster.yaml reads. Stops the server (fast shutdown) and removes its folder after."""
    import psycopg2

    initdb, pg_ctl = program("initdb"), program("pg_ctl")
    as_root = os.geteuid() == 0
    run_as = ["runuser", "-u", "postgres", "--"] if as_root else []
    user = "postgres" if as_root else os.environ.get("USER", "postgres")
    folder = Path(tempfile.mkdtemp(prefix="lavie-postgres-"))  # under /tmp: reachable by the postgres user
    data = folder / "data"
    if as_root:
        shutil.chown(folder, "postgres", "postgres")
    port = free_port()

    def run(*command):
        done = subprocess.run(run_as + list(command), capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}"

    run(initdb, "-D", str(data), "-A", "trust", "-U", user, "--no-sync", "-E", "UTF8")

    def start():  # only loopback TCP, and the Unix socket in the server's own folder
        run(pg_ctl, "-D", str(data), "-l", str(folder / "server.log"), "-w", "-t", "60",
            "-o", f"-h 127.0.0.1 -p {port} -k {folder} -c fsync=off", "start")

    start()
    try:
        with contextlib.closing(psycopg2.connect(host="127.0.0.1", port=port, user=user, dbname="postgres")) as c:
            c.autocommit = True
            c.cursor().execute(f'CREATE DATABASE "{db_name}"')
        yield Server({"DAGSTER_PG_HOST": "127.0.0.1", "DAGSTER_PG_PORT": str(port), "DAGSTER_PG_USER": user,
                      "DAGSTER_PG_PASSWORD": "", "DAGSTER_PG_DB": db_name},
                     start=start, stop=lambda: run(pg_ctl, "-D", str(data), "-m", "fast", "-w", "-t", "60", "stop"))
    finally:
        pid = (data / "postmaster.pid").read_text().split()[0] if (data / "postmaster.pid").is_file() else None
        if pid:
            run(pg_ctl, "-D", str(data), "-m", "fast", "-w", "-t", "60", "stop")
        shutil.rmtree(folder, ignore_errors=True)
        deadline = time.time() + 10  # the server removes its pid file just before it exits
        while pid and running(pid) and time.time() < deadline:
            time.sleep(0.1)
        assert not (pid and running(pid)), f"the PostgreSQL server (pid {pid}) is still running after pg_ctl stop"


class Server(dict):
    """The DAGSTER_PG_* environment of a running server, and `stop()` and `start()` to take it down and up again."""

    def __init__(self, env: dict, start, stop):
        super().__init__(env)
        self.start, self.stop = start, stop


def running(pid: str) -> bool:
    """Whether process `pid` exists and is not a zombie."""
    try:
        return Path("/proc", pid, "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False
