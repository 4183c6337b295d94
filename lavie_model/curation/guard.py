"""Guard: each file's work in a process of its own, bounded in wall-clock time and in memory.

A file from outside can hang a decoder or ask it for more memory than the machine has. `run_guarded` runs
`function(job)` for each job in a process forked for that job alone (at most `workers` at a time), in a process
group of its own (so that an ffmpeg it starts goes with it), with:

- a wall-clock limit of `WorkLimits.floor_seconds` plus `seconds_per_second` for every second of video the file
  declares (the worker declares it with `declare_duration` once it has read the file's header; until then the
  floor alone applies). A worker past its limit is killed with its process group: "timed out after N s".
- a memory ceiling: RLIMIT_AS, the worker's address space, held to what it had when it started (a fork shares
  its parent's mappings) plus `memory_mb`. An allocation past it fails, and libraries fail in their own ways
  (a MemoryError, PyAV's ENOMEM, OpenCV's "Insufficient memory", a thread that cannot start, an abort), so the
  verdict does not rest on the error: a worker whose address space reached its ceiling (`WorkLimits.reached`: its
  VmPeak, read by the worker when it ends, and by this process while it runs), or whose work raised a
  MemoryError, is "over the memory limit of N MB", whatever it returned; its results are dropped.
- a worker that dies some other way (a decoder crash) gives "worker died: ..." with the signal.

Each failure is an `Outcome` with its `problem`, not an exception: the caller quarantines the file, removes what
its worker left, and the batch goes on with a fresh worker for the next file. An exception the function raises
for another reason (a bug, not the file) is raised here, naming the job, with the worker's traceback. No worker
outlives `run_guarded` (they are killed on the way out, and die with the process that forked them).
"""

import ctypes
import multiprocessing
import os
import resource
import signal
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import Any, Callable

CONTEXT = multiprocessing.get_context("fork")  # the worker starts with the modules of its parent, imported once
PR_SET_PDEATHSIG = 1  # prctl: the signal this process gets when the thread that forked it ends
M_ARENA_MAX = -8  # glibc's mallopt parameter: the most malloc arenas
POLL_SECONDS = 0.25  # how often the workers' peak address space is read while they run


@dataclass(frozen=True)
class WorkLimits:
    """The bounds on one file's work (CurationSettings: timeout_floor_seconds, timeout_per_video_second,
    worker_memory_mb). The defaults admit an 8K file on a slow core: probe and cut of 2 s of 7680x4320 H.264 took
    10.7 s and 0.5 GB of added address space on this project's 2-core machine, under load."""

    floor_seconds: float = 120.0  # every file may take this long, whatever its duration
    seconds_per_second: float = 10.0  # and this many seconds more per second of video its header declares
    memory_mb: int = 8192  # address space a worker may add to what it started with; 0: no ceiling

    def __post_init__(self):
        if self.floor_seconds <= 0 or self.seconds_per_second < 0 or self.memory_mb < 0:
            raise ValueError(f"work limits must be positive (the memory limit 0 for none), got {self}")

    def reached(self, peak: int, ceiling: int) -> bool:
        """Whether a worker's peak address space (bytes) reached its ceiling (bytes; 0: none), to within the largest
        requests that fail first (a thread's malloc arena maps 128 MB: 256 MB, or half the limit when it is
        small)."""
        return bool(ceiling) and peak >= ceiling - min(256, self.memory_mb // 2) * 2**20

    def seconds_for(self, duration: float | None) -> float:
        """The wall-clock limit of a file that declares `duration` seconds of video (None: not known yet)."""
        return self.floor_seconds + self.seconds_per_second * max(0.0, duration or 0.0)


@dataclass
class Outcome:
    value: Any = None  # what function(job) returned; None when it did not finish
    problem: str = ""  # why it did not finish: "timed out after N s", "over the memory limit of N MB", ...
    seconds: float = 0.0  # wall-clock time of the job
    # the resident memory the worker added, at its peak: VmHWM less its resident set when it started (a fork starts
    # with its parent's pages); 0 where it did not report (killed, or died)
    added_mb: float = 0.0


_reporter = None  # in a guarded worker: the pipe to the process that runs it


def declare_duration(seconds: float | None) -> None:
    """In a guarded worker, set its wall-clock limit from the seconds of video its file declares; elsewhere
    nothing (probe calls it from every decode)."""
    if _reporter is not None and seconds is not None:
        _reporter.send(("duration", float(seconds)))


def out_of_memory(error: BaseException) -> bool:
    """Whether `error` is an allocation that failed: MemoryError (PyAV's ENOMEM is one), or OpenCV's error."""
    return isinstance(error, MemoryError) or "Insufficient memory" in str(error)


@dataclass
class _Running:
    index: int
    process: Any
    started: float
    limit: float  # seconds
    ceiling: int = 0  # bytes of address space; 0: none
    peak: int = 0  # the largest VmPeak read, bytes


def run_guarded(function: Callable, jobs: list, workers: int = 1, limits: WorkLimits = WorkLimits(),
                on_start: Callable[[], None] | None = None) -> list[Outcome]:
    """[function(job) for job in jobs] as Outcomes, each job in a fresh worker process under `limits`, at most
    `workers` at a time; in the jobs' order. `on_start` runs first in each worker (e.g. to name it)."""
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    outcomes: list[Outcome | None] = [None] * len(jobs)
    waiting = list(range(len(jobs)))[::-1]
    running: dict = {}  # the pipe from a worker: _Running
    over_memory = f"over the memory limit of {limits.memory_mb} MB"
    try:
        while waiting or running:
            while waiting and len(running) < workers:
                index = waiting.pop()
                receive, send = CONTEXT.Pipe(duplex=False)
                process = CONTEXT.Process(target=_work, args=(function, jobs[index], send, limits, on_start),
                                          name=f"guarded job {index}")
                process.start()
                send.close()
                running[receive] = _Running(index, process, time.monotonic(), limits.seconds_for(None))
            soonest = min(entry.started + entry.limit for entry in running.values())
            for pipe in wait(list(running), timeout=min(POLL_SECONDS, max(0.0, soonest - time.monotonic()))):
                entry = running[pipe]
                try:
                    kind, payload, *added = pipe.recv()
                except (EOFError, OSError):  # the worker ended without a word: it died
                    entry.process.join()
                    kind, payload = (("memory", None) if limits.reached(entry.peak, entry.ceiling)
                                     else ("died", _death(entry.process.exitcode)))
                    added = []
                if kind in ("duration", "ceiling"):
                    if kind == "duration":
                        entry.limit = limits.seconds_for(payload)
                    else:
                        entry.ceiling = payload
                    continue
                running.pop(pipe)
                _end(entry.process, pipe)
                if kind == "error":
                    raise RuntimeError(f"{getattr(function, '__name__', function)} failed on job {entry.index} "
                                       f"({_describe(jobs[entry.index])}):\n{payload}")
                problem = {"done": "", "memory": over_memory, "died": payload}[kind]
                outcomes[entry.index] = Outcome(payload if kind == "done" else None, problem,
                                                time.monotonic() - entry.started, (added or [0.0])[0])
            now = time.monotonic()
            for pipe, entry in list(running.items()):
                entry.peak = max(entry.peak, _status("VmPeak", entry.process.pid) * 1024)
                if now - entry.started > entry.limit:
                    _end(entry.process, pipe)
                    running.pop(pipe)
                    limit = f"{entry.limit:.{0 if entry.limit >= 10 else 1}f}"
                    outcomes[entry.index] = Outcome(None, f"timed out after {limit} s", now - entry.started)
    finally:
        for pipe, entry in running.items():
            _end(entry.process, pipe)
    return outcomes


def _work(function, job, send, limits: WorkLimits, on_start) -> None:
    """A guarded worker: its own process group, dies with its parent, its address space capped; reports on `send`
    ("ceiling", bytes), ("duration", seconds) any number of times, then one of ("done", value), ("memory", None),
    ("error", text), each of these three with the resident memory it added at its peak, in MB."""
    global _reporter
    started_kb = _status("VmRSS")
    os.setpgid(0, 0)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:  # the parent ended before the line above
        os._exit(1)
    if on_start is not None:
        on_start()
    # one malloc arena: glibc otherwise reserves 64 MB of address space for each thread that allocates, and the
    # ceiling would track the decoder's threads rather than the memory the file needs
    libc.mallopt(M_ARENA_MAX, 1)
    ceiling = 0
    if limits.memory_mb:
        ceiling = _status("VmSize") * 1024 + limits.memory_mb * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (ceiling, resource.getrlimit(resource.RLIMIT_AS)[1]))
        send.send(("ceiling", ceiling))
    _reporter = send
    try:
        message = ("done", function(job))
    except BaseException as error:
        message = ("memory", None) if out_of_memory(error) else ("error", traceback.format_exc())
    if limits.reached(_status("VmPeak") * 1024, ceiling):
        message = ("memory", None)  # an allocation may have failed anywhere, and been taken for a broken file
    added = (_status("VmHWM") - started_kb) / 1024
    try:
        send.send((*message, added))
    except MemoryError:  # the result itself does not fit
        send.send(("memory", None, added))
    send.close()


def _status(field: str, pid: int | str = "self") -> int:
    """A field of /proc/PID/status in kB (0 where there is none)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _end(process, pipe) -> None:
    """Kill a worker's process group (itself and whatever it started), wait for it, close its pipe."""
    if process.exitcode is None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:  # not its own group yet (it had just started), or gone
            process.kill()
        except PermissionError:
            process.kill()
    process.join()
    pipe.close()


def _death(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        return f"worker died: killed by {signal.Signals(-exitcode).name}"
    return f"worker died: exit status {exitcode} before it reported"


def _describe(job) -> str:
    text = repr(job)
    return text if len(text) <= 200 else text[:200] + "..."
