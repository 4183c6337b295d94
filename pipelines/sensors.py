"""The inbox sensor: files dropped into LAVIE_HOME/inbox/videos (or images) become a batch and a curation run."""

import json
import time

import dagster as dg

from lavie_model.curation import store

from .curation import CurationSettings, curate_images, curate_videos, image_batches, video_batches

SETTLE_SECONDS = 10  # a file modified more recently may still be being copied in: wait for the next tick
INBOXES = {"videos": (curate_videos, video_batches), "images": (curate_images, image_batches)}


@dg.sensor(jobs=[curate_videos, curate_images], minimum_interval_seconds=30)
def inbox_sensor(context: dg.SensorEvaluationContext, settings: CurationSettings) -> dg.SensorResult:
    """Ingests new inbox files as one batch per kind, adds its partition and requests its curation run.

    The cursor holds each file's size and modification time, so a file is registered once, and again
    only if it changes (the store keeps the same bytes once, whatever their name).
    """
    seen = json.loads(context.cursor) if context.cursor else {}
    requests, partitions = [], []
    for kind, (job, partitions_def) in INBOXES.items():
        inbox = settings.home() / "inbox" / kind
        if not inbox.is_dir():
            continue
        fresh = {}
        for path in sorted(p for p in inbox.rglob("*") if p.is_file() and p.suffix.lower() in store.KINDS[kind]):
            stat = path.stat()
            signature = f"{stat.st_size}:{stat.st_mtime_ns}"
            if seen.get(str(path)) != signature and time.time() - stat.st_mtime >= SETTLE_SECONDS:
                fresh[str(path)] = signature
        if not fresh:
            continue
        batch = store.ingest(list(fresh), kind=kind, home=settings.home())
        seen.update(fresh)
        for skipped in batch.skipped:
            context.log.info(f"inbox: skipped {skipped['path']}: {skipped['reason']}")
        if batch.key is not None:
            partitions.append(partitions_def.build_add_request([batch.key]))
            requests.append(dg.RunRequest(run_key=batch.key, job_name=job.name, partition_key=batch.key))
    return dg.SensorResult(run_requests=requests, dynamic_partitions_requests=partitions, cursor=json.dumps(seen))
