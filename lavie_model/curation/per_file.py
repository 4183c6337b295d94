"""The per-file work of the probe_and_cut step (pipelines/curation.py), as plain functions of picklable jobs that
return table rows: run in guarded worker processes (guard.py) forked from the step, or as Ray tasks. No Dagster
here. The names `probe_and_cut_job`, `probe_job` and `clips_job` are the Ray tasks' names (and their workers'
titles).
"""

import functools
import sys
from dataclasses import asdict, fields
from pathlib import Path

from .clips import ClipConfig, DropRow, make_clips, probe_with_shots, shot_row, stored_shots
from .clips import probe_and_cut as probe_and_cut_file
from .guard import Outcome, run_guarded
from .probe import ProbeConfig, ProbeResult


def probe_job(args) -> dict:
    return probe_with_shots(*args)


def probe_and_cut_job(args) -> tuple[dict, tuple | None]:
    path, sha256, out_dir, config, measure, spans = args[:6]
    probe_config = args[6] if len(args) > 6 else ProbeConfig()  # benchmarks/curation.py passes the first six
    row, result = probe_and_cut_file(path, out_dir, probe_config, config, measure, sha256, spans)
    return row, (_plain(result) if row["ok"] else None)


def quarantined_row(path: str, sha256: str, problem: str, config: ClipConfig) -> dict:
    """The probe row of a file whose work broke a limit of guard.py (`problem` says which)."""
    size = Path(path).stat().st_size if Path(path).is_file() else 0
    return shot_row(ProbeResult(str(path), sha256, size, ok=False, reason=problem), None, config)


def dropped_whole(row: dict, problem: str) -> tuple:
    """The clip results of a probed file whose cutting broke a limit of guard.py: one drop row for all of it."""
    drop = DropRow(row["sha256"], row["path"], 0, 0, int(row["frame_count"] or 0), 0.0, float(row["duration"] or 0),
                   problem)
    return [], [asdict(drop)], [], [], 0


def clips_job(args) -> tuple:
    row, out_dir, config, measure, spans = args
    probed = ProbeResult(**{f.name: row[f.name] for f in fields(ProbeResult)})
    return _plain(make_clips(probed, out_dir, config, stored_shots(row, config), spans, measure))


def _plain(result) -> tuple[list[dict], list[dict], list[dict], list[dict], int]:
    """A ClipsResult as table rows (clips, drops, each clip's motion, each still) and the number of clips
    stream-copied."""
    return ([asdict(c) for c in result.clips], [asdict(d) for d in result.drops],
            [{"clip_id": clip_id, "motion": value} for clip_id, value in result.motion.items()],
            [{"clip_id": clip_id, "frame": frame, "jpeg": data}
             for clip_id, stills in result.stills.items() for frame, data in sorted(stills.items())],
            len(result.copied))


def guarded_task(function):
    """A Ray task that runs function(job) under the limits given with it, in a process forked for it (guard.py);
    it keeps `function`'s name, which is the task's name and its Ray worker's process title."""

    @functools.wraps(function)
    def task(args) -> Outcome:
        job, limits = args
        return run_guarded(function, [job], 1, limits, on_start=_retitle)[0]

    return task


def _retitle() -> None:
    """Name a guarded worker forked from a Ray worker apart from it (the fork inherits the title ray::TASK)."""
    raylet = sys.modules.get("ray._raylet")
    if raylet is not None:
        raylet.setproctitle("lavie guarded file worker")
