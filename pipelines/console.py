"""What `make demo` and `make pretrain` print: a line per step with a progress bar; everything else in a log file.

While a step runs, the process's standard output and error (and so its children's: the DeepSpeed launcher,
the trainers) go to the log, with Dagster's event log and every library's chatter; the terminal shows the
step, its progress and its time. A step that fails prints the end of its output and where the rest is.
"""

import os
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from tqdm import tqdm

TAIL_LINES = 25  # lines of the log shown when a step fails


class Console:
    def __init__(self, log_path):
        self.log_path = Path(log_path)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path.write_text("")
        sys.stdout.flush()
        self.terminal = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
        self.interactive = self.terminal.isatty()

    def print(self, text: str = "") -> None:
        self.terminal.write(text + "\n")

    @contextmanager
    def step(self, title: str, total: int | None = None, progress=None, unit: str = "step"):
        """Run the block with all output going to the log. `progress()`, polled every second, gives how much is
        done of `total` (a bar on a terminal; otherwise the step's line alone)."""
        sys.stdout.flush()
        sys.stderr.flush()
        with open(self.log_path, "a") as log:
            log.write(f"\n===== {title} =====\n")
            offset = log.tell()  # where this step's output starts
        saved = os.dup(1), os.dup(2)
        log = open(self.log_path, "a")
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        bar = tqdm(total=total, desc=f"{title:<32}", unit=unit, file=self.terminal, disable=not self.interactive,
                   bar_format="{desc} {bar:24} {n_fmt}/{total_fmt} {unit}s [{elapsed}]" if total else
                   "{desc} [{elapsed}]", dynamic_ncols=False, ncols=90)
        stop = threading.Event()

        def poll():
            while not stop.wait(1.0):
                if progress is not None:
                    bar.n = min(progress(), total or 1 << 62)
                bar.refresh()

        watcher = threading.Thread(target=poll, daemon=True)
        watcher.start()
        started, failed = time.time(), False
        try:
            yield
        except BaseException:
            failed = True
            raise
        finally:
            stop.set()
            watcher.join()
            if progress is not None and not failed:
                bar.n = min(progress(), total or 1 << 62)
            bar.close()
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            log.close()
            seconds = time.time() - started
            done = "" if progress is None or total is None else f", {min(progress(), total)}/{total} {unit}s"
            self.print(f"{'FAILED' if failed else 'done':>6}  {title} ({seconds:.0f} s{done})")
            if failed:
                with open(self.log_path, "rb") as log:
                    log.seek(offset)
                    tail = log.read().decode(errors="replace").splitlines()[-TAIL_LINES:]
                self.print("\n".join(f"        {line}" for line in tail))
                self.print(f"        the whole log: {self.log_path}")


def lines_in(path: Path) -> int:
    """Lines of a growing text file (0 while it does not exist)."""
    try:
        with open(path, "rb") as file:
            return sum(1 for _ in file)
    except FileNotFoundError:
        return 0


def training_progress(home: Path, stage: str, since: float):
    """A `progress()` for Console.step: steps logged by the newest `stage` run started after `since`."""
    def progress() -> int:
        runs = [p for p in (home / "training" / stage).glob("*") if p.is_dir() and p.stat().st_mtime >= since]
        return lines_in(max(runs, key=lambda p: p.stat().st_mtime) / "metrics.jsonl") if runs else 0

    return progress
