"""`make ui`: the Dagster UI (`dg dev -w workspace.yaml`) on 127.0.0.1, and all of it gone within seconds of a stop.

`dg dev` (like `dagster dev`, which it runs) starts a webserver, a daemon and code servers, and stops them when
it gets SIGINT, or SIGTERM, which it maps onto SIGINT's handler. Two things defeated that:

- A program started in the background by a non-interactive shell (`make ui &` in a script, many CI and process
  runners) inherits SIGINT *ignored*. Python then installs no KeyboardInterrupt handler, Dagster maps SIGTERM
  onto that ignored disposition, and every process of the UI shrugs off both signals (they kept running after
  30 s; measured).
- Otherwise a stop takes Dagster 4 to 7 s on a busy two-core machine, past the 5 s that a person waits.

So this launcher starts `dg dev` in a session of its own with SIGINT and SIGTERM at their defaults, and on
SIGINT, SIGTERM or SIGHUP (a closed terminal) sends SIGINT to that session's process group, as Ctrl-C in a
terminal would, waits up to GRACE_S for Dagster's own shutdown, then kills whatever is left of the process tree
(it is the tree's subreaper on Linux, so no orphan escapes it), and dies of the signal it got.
"""

import argparse
import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
GRACE_S = 3.5  # Dagster's own shutdown, before the rest of the tree is killed: the whole stop stays under 5 s
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def dev_command(host: str, port: int) -> list[str]:
    """`dg dev` of this venv on workspace.yaml (`dagster dev` where dagster-dg-cli is not installed yet)."""
    bin_dir = Path(sys.executable).parent
    program = [str(bin_dir / "dg")] if (bin_dir / "dg").exists() else [str(bin_dir / "dagster")]
    return [*program, "dev", "-w", str(ROOT / "workspace.yaml"), "-h", host, "-p", str(port)]


def _become_subreaper() -> None:
    """Orphaned descendants (a server whose parent died first) become this process's children (Linux only)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass


def _reap(child: subprocess.Popen) -> None:
    """Collect exited children: adopted orphans, and `child`, whose exit code is kept."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        if pid == child.pid:
            child.returncode = os.waitstatus_to_exitcode(status)


def alive(processes) -> list[psutil.Process]:
    """Those still running (a zombie, dead but not yet reaped, is not)."""
    out = []
    for process in processes:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                out.append(process)
        except psutil.NoSuchProcess:
            pass
    return out


def _descendants() -> set[psutil.Process]:
    try:
        return set(psutil.Process().children(recursive=True))
    except psutil.NoSuchProcess:
        return set()


def stop(child: subprocess.Popen, grace_s: float = GRACE_S) -> None:
    """SIGINT to `child`'s process group, up to `grace_s` for it to finish, then SIGKILL to every descendant left."""
    tree = _descendants()
    try:
        os.killpg(child.pid, signal.SIGINT)
    except (ProcessLookupError, PermissionError):
        pass
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        _reap(child)
        tree |= _descendants()
        if not alive(tree):
            return
        time.sleep(0.05)
    for _ in range(3):  # what started during the kill is killed in the next round
        left = alive(tree | _descendants())
        if not left:
            break
        for process in left:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(left, timeout=1)
        _reap(child)
        tree |= _descendants()
    _reap(child)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.ui", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="the webserver's address (default: loopback only)")
    parser.add_argument("--port", type=int, default=3000)
    args = parser.parse_args(argv)

    received: list[int] = []
    for sig in STOP_SIGNALS:
        if sig == signal.SIGHUP and signal.getsignal(sig) == signal.SIG_IGN:
            continue  # under nohup: stay up when the terminal goes
        signal.signal(sig, lambda signum, frame: received.append(signum))
    _become_subreaper()
    env = os.environ | {"DAGSTER_HOME": os.environ.get("DAGSTER_HOME") or str(ROOT / "dagster_home")}
    # Python's own handlers become SIG_DFL in the new program, so dg dev gets working SIGINT and SIGTERM whatever
    # this process inherited; its session of its own keeps a terminal's Ctrl-C from reaching it twice.
    child = subprocess.Popen(dev_command(args.host, args.port), cwd=ROOT, env=env, start_new_session=True)
    while child.returncode is None and not received:
        time.sleep(0.1)
        _reap(child)
    stop(child, GRACE_S if received else 1.0)  # after dg dev's own exit, only stragglers are left
    if received:
        signal.signal(received[0], signal.SIG_DFL)
        os.kill(os.getpid(), received[0])  # die of the signal, as the shell or make expect of a stopped program
    code = child.returncode or 0
    return 128 - code if code < 0 else code


if __name__ == "__main__":
    sys.exit(main())
