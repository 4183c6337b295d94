"""The inbox sensor: files dropped into LAVIE_HOME/inbox/videos (or images) become a batch and a curation run; URL
tables dropped into inbox/tables become downloads, then curation runs."""

import json
import os
import stat
import time
from pathlib import Path

import dagster as dg

from lavie_model.curation import store
from lavie_model.curation.url_tables import register_url_table

from .curation import (CurationSettings, curate_images, curate_videos, download_videos, image_batches, url_tables,
                       video_batches)

SETTLE_SECONDS = 10  # a file modified more recently may still be being copied in: wait for the next tick
INBOXES = {"videos": (curate_videos, video_batches), "images": (curate_images, image_batches)}
TABLE_SUFFIXES = (".csv", ".tsv", ".parquet")


def settled(inbox: Path, suffixes, seen: dict) -> dict[str, str]:
    """{path: size and mtime} of the inbox's entries of these suffixes that are new or changed and settled: every
    one but folders, so that ingest accounts for links and special files too (it refuses them, unopened); a
    link's signature is its target's (its own when broken)."""
    fresh = {}
    for path in sorted(p for p in inbox.rglob("*") if p.suffix.lower() in suffixes):
        try:
            info = os.lstat(path)
        except OSError:
            continue  # gone since listed
        if stat.S_ISDIR(info.st_mode):
            continue
        if stat.S_ISLNK(info.st_mode):
            try:
                info = os.stat(path)  # stat only: nothing is opened
            except OSError:
                pass  # a broken link keeps its own; ingest reports it
        signature = f"{info.st_size}:{info.st_mtime_ns}"
        if seen.get(str(path)) != signature and time.time() - info.st_mtime >= SETTLE_SECONDS:
            fresh[str(path)] = signature
    return fresh


@dg.sensor(jobs=[curate_videos, curate_images, download_videos], minimum_interval_seconds=30,
           default_status=dg.DefaultSensorStatus.RUNNING)
def inbox_sensor(context: dg.SensorEvaluationContext, settings: CurationSettings) -> dg.SensorResult:
    """Ingests new inbox files as one batch per kind, adds its partition and requests its curation run; a URL
    table dropped into inbox/tables (columns url, caption, optionally start and end) is registered as url_tables
    partitions whose downloads it requests, and once a chunk's download has made its video batch, that batch's
    curation.

    The cursor holds each file's size and modification time, so a file is registered once, and again
    only if it changes (the store keeps the same bytes once, whatever their name), and the table chunks
    whose video batch is still to come.
    """
    cursor = json.loads(context.cursor) if context.cursor else {}
    if "files" not in cursor:  # a cursor from before URL tables: the files alone
        cursor = {"files": cursor, "pending": []}
    seen, pending = cursor["files"], cursor["pending"]
    requests, partitions = [], []
    home = settings.home()
    for kind, (job, partitions_def) in INBOXES.items():
        inbox = home / "inbox" / kind
        if not inbox.is_dir():
            continue
        fresh = settled(inbox, store.KINDS[kind], seen)
        if not fresh:
            continue
        batch = store.ingest(list(fresh), kind=kind, home=home, within=inbox,
                             follow_symlinks_outside=settings.follow_symlinks_outside)
        seen.update(fresh)
        for skipped in batch.skipped:
            context.log.info(f"inbox: skipped {skipped['path']}: {skipped['reason']}")
        for file in batch.files:
            if file.caption_note:
                context.log.info(f"inbox: caption of {file.source_path}: {file.caption_note}")
        if batch.key is not None:
            partitions.append(partitions_def.build_add_request([batch.key]))
            requests.append(dg.RunRequest(run_key=batch.key, job_name=job.name, partition_key=batch.key))
    tables = home / "inbox" / "tables"
    for path, signature in (settled(tables, TABLE_SUFFIXES, seen) if tables.is_dir() else {}).items():
        seen[path] = signature
        problem = store.input_problem(Path(path), tables, settings.follow_symlinks_outside)
        if problem:
            context.log.warning(f"inbox: URL table {path} not registered: {problem}")
            continue
        try:
            keys = register_url_table(path, home)
        except (ValueError, OSError) as error:
            context.log.warning(f"inbox: URL table {path} not registered: {error}")
            continue
        partitions.append(url_tables.build_add_request(keys))
        requests += [dg.RunRequest(run_key=key, job_name=download_videos.name, partition_key=key) for key in keys]
        pending += [key for key in keys if key not in pending]
    for key in list(pending):  # downloads done: curate the batch they made
        made = home / "curation" / key / "video_batch.txt"
        if made.is_file():
            batch = made.read_text().strip()
            requests.append(dg.RunRequest(run_key=f"{key}:{batch}", job_name=curate_videos.name, partition_key=batch))
            pending.remove(key)
    return dg.SensorResult(run_requests=requests, dynamic_partitions_requests=partitions,
                           cursor=json.dumps({"files": seen, "pending": pending}))
