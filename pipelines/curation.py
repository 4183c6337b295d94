"""Curation assets (group `curation`): a batch of videos -> probe -> clips -> captions -> scores -> filter -> shards.

Every asset is partitioned by batch (a Dagster dynamic partition that `lavie ingest` or the inbox sensor
adds), calls into `lavie_model.curation`, writes its table under LAVIE_HOME/curation/BATCH/ and records
what a person would look at. Thresholds live in the `filtered_clips` config: changing them re-runs that
step and the shards, never the scores.
"""

import os
import shutil
from dataclasses import asdict, fields, replace
from pathlib import Path

import dagster as dg
import pandas as pd

from lavie_model.config import load_preset
from lavie_model.curation import store
from lavie_model.curation import url_tables as url_tables_module
from lavie_model.curation.captioner import CaptionerConfig, caption_clips
from lavie_model.curation.clips import SHOT_COLUMNS, ClipConfig, ClipRow, DropRow, remove_partial_clips
from lavie_model.curation.download import Download, DownloadConfig, download_all
from lavie_model.curation.filtering import FilterConfig, decide
from lavie_model.curation.guard import Outcome, WorkLimits, run_guarded
from lavie_model.curation.per_file import (clips_job, dropped_whole, guarded_task, probe_and_cut_job, probe_job,
                                           quarantined_row)
from lavie_model.curation.probe import ProbeConfig, ProbeResult
from lavie_model.curation.report import histogram_png, preview_gif
from lavie_model.curation.scores import ScoreConfig, score_clips
from lavie_model.curation.shards import verify_shards, write_image_shards, write_shards
from lavie_model.curation.writer import ClipMeasure

from .metadata import markdown_table, picture

video_batches = dg.DynamicPartitionsDefinition(name="video_batches")
url_tables = dg.DynamicPartitionsDefinition(name="url_tables")  # chunks of URL tables (`lavie ingest --table`)
image_batches = dg.DynamicPartitionsDefinition(name="image_batches")
# Default processes per asset that probe or cut files (CurationSettings.workers); each works on one file (a fresh
# process per file, guard.py) and holds at most writer.SPILL_MEMORY bytes of its frames (the rest on disk). They
# fork from the step's process: under Dagster's multiprocess executor they would otherwise start as the step did
# (forkserver or spawn) and each import torch again.
WORKERS = max(1, min(4, os.cpu_count() or 1))
PREVIEWS = 4  # kept clips shown as GIFs in the shards' metadata


class CurationSettings(dg.ConfigurableResource):
    """The preset whose clip sizes to produce, the data root (default $LAVIE_HOME or ./data), and the local
    weights of the scoring models (none: a tiny random CLIP and no aesthetic score, labelled so in the tables)."""

    preset: str = "tiny"
    lavie_home: str | None = None
    clip_model: str = ScoreConfig.clip_model
    clip_weights: str | None = None
    aesthetic_weights: str | None = None
    captioner_path: str | None = None  # a local transformers image-to-text model folder, for uncaptioned clips
    recaption: bool = False  # caption every clip with the captioner, not only those without a source caption
    workers: int = WORKERS  # processes per asset for probing and cutting; set it to a pod's CPUs on a cluster
    # keep a piece's H.264 packets where the source already is at the clip size and rate and the piece runs
    # keyframe to keyframe (ClipConfig.stream_copy): no encode, no generation loss, the source's bitrate
    stream_copy: bool = False
    # a Ray cluster to run the per-file work and the scoring on (HOST:PORT from a cluster node, ray://HOST:10001
    # from outside it; docs/cluster.md); empty: `workers` local processes. LAVIE_HOME must be on storage every
    # node mounts at the same path.
    ray_address: str = ""
    # the inbox sensor ingests a symbolic link whose target lies outside the inbox (by default it is refused, with
    # its target named, in the batch's skipped list); links that stay inside are always followed
    follow_symlinks_outside: bool = False
    # Limits per file (docs/guides/curation-limits.md): a file beyond one is quarantined with the limit named,
    # from its header before decoding where the header tells (ProbeConfig), else from the frames as they decode
    max_frame_pixels: int = ProbeConfig.max_frame_pixels  # width x height of a frame (default DCI 8K, 8192x4320)
    max_duration_seconds: float = ProbeConfig.max_duration_seconds  # declared or decoded (default 12 hours)
    max_frame_rate: float = ProbeConfig.max_frame_rate  # frames per second, declared or decoded
    max_streams: int = ProbeConfig.max_streams  # video, audio and subtitle streams of one file
    # Each file's work (probe and cut) runs in a process of its own (guard.py):
    timeout_floor_seconds: float = WorkLimits.floor_seconds  # wall-clock time any file may take
    timeout_per_video_second: float = WorkLimits.seconds_per_second  # more per second of video its header declares
    worker_memory_mb: int = WorkLimits.memory_mb  # address space a file's worker may add (RLIMIT_AS); 0: no limit

    def score_config(self) -> ScoreConfig:
        return ScoreConfig(clip_model=self.clip_model, clip_weights=self.clip_weights,
                           aesthetic_weights=self.aesthetic_weights)

    def home(self) -> Path:
        return store.lavie_home(self.lavie_home)

    def batch_dir(self, key: str) -> Path:
        folder = self.home() / "curation" / key
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def probe_config(self) -> ProbeConfig:
        return ProbeConfig(max_frame_pixels=self.max_frame_pixels, max_duration_seconds=self.max_duration_seconds,
                           max_frame_rate=self.max_frame_rate, max_streams=self.max_streams)

    def work_limits(self) -> WorkLimits:
        return WorkLimits(self.timeout_floor_seconds, self.timeout_per_video_second, self.worker_memory_mb)

    def clip_config(self) -> ClipConfig:
        return ClipConfig(**load_preset(self.preset)["curation"], stream_copy=self.stream_copy)

    def clip_measure(self) -> ClipMeasure:
        """What the clip writer measures and keeps for clip_scores and, given a captioner, captioned_clips."""
        caption_frames = CaptionerConfig.frames_per_clip if self.captioner_path else 0
        return replace(self.score_config().measure(), caption_frames=caption_frames)


def write_table(frame: pd.DataFrame, path: Path) -> Path:
    """Write a Parquet table atomically."""
    partial = path.with_name(f".{path.name}.partial")
    frame.to_parquet(partial, index=False)
    os.replace(partial, path)
    return path


def funnel(**counts) -> dg.MetadataValue:
    return dg.MetadataValue.md(" -> ".join(f"{name} **{count}**" for name, count in counts.items()))


def reasons_table(frame: pd.DataFrame, column: str = "reason") -> dg.MetadataValue:
    """How many rows give each reason (the part before its first colon)."""
    if frame.empty:
        return dg.MetadataValue.md("none")
    counts = frame[column].str.split(":").str[0].value_counts()
    return markdown_table(pd.DataFrame({"reason": counts.index, "count": counts.values}))


class DownloadSettings(dg.Config):
    """How `downloaded_videos` fetches; defaults: lavie_model.curation.download.DownloadConfig."""

    workers: int = DownloadConfig.workers
    timeout: float = DownloadConfig.timeout
    retries: int = DownloadConfig.retries
    backoff: float = DownloadConfig.backoff
    max_bytes: int = DownloadConfig.max_bytes
    # CIDRs fetched although not public (e.g. ["10.1.2.0/24"]: a mirror of one's own); by default loopback,
    # private, link-local (169.254.169.254: a cloud node's credentials), multicast and reserved addresses are refused
    allow_networks: list[str] = list(DownloadConfig.allow_networks)


# a chunk whose download failed as a whole (its table unreachable, the disk full) is tried again later; a row that
# fails alone is retried by the downloader itself and accounted for in the chunk's table
@dg.asset(partitions_def=url_tables, group_name="curation", kinds={"parquet"},
          retry_policy=dg.RetryPolicy(max_retries=2, delay=30, backoff=dg.Backoff.EXPONENTIAL))
def downloaded_videos(context: dg.AssetExecutionContext, config: DownloadSettings,
                      settings: CurationSettings) -> dg.MaterializeResult:
    """A URL table chunk's videos downloaded into the store and registered as a video batch (its captions and
    spans on the files); every row's outcome in `downloads.parquet`, the failures in `quarantine.parquet`. A
    rerun fetches only what is missing."""
    key, home = context.partition_key, settings.home()
    rows = url_tables_module.read_chunk(key, home)
    folder = settings.batch_dir(key)
    previous = folder / "downloads.parquet"
    done = {}
    if previous.is_file():
        done = {r.url: Download(r.url, bool(r.ok), r.path, r.sha256, int(r.bytes), r.reason, int(r.attempts))
                for r in pd.read_parquet(previous).itertuples() if r.ok}
    problems = [url_tables_module.span_problem(start, end) for start, end in zip(rows["start"], rows["end"])]
    wanted = [url for url, problem in zip(rows["url"], problems) if problem is None]
    got = iter(download_all(wanted, home / "store" / "videos", DownloadConfig(**config.model_dump()), done,
                            progress=lambda r: context.log.info(f"{'downloaded' if r.ok else 'failed'} {r.url}"
                                                                + ("" if r.ok else f": {r.reason}"))))
    results = [Download(url, False, reason=problem) if problem else next(got)
               for url, problem in zip(rows["url"], problems)]
    table = rows.assign(**{name: [getattr(r, name) for r in results]
                           for name in ("ok", "path", "sha256", "bytes", "reason", "attempts")})
    batch, table = url_tables_module.video_batch(table, home, Path(rows["table"].iloc[0]).name)
    write_table(table.assign(run_id=context.run.run_id), previous)
    quarantine = table[~table["ok"].astype(bool)]
    write_table(quarantine[["row", "url", "reason"]].assign(run_id=context.run.run_id), folder / "quarantine.parquet")
    if batch is not None:
        (folder / "video_batch.txt").write_text(batch.key + "\n")
    # every batch the rows went into has its partition (also one a crashed run wrote but did not register)
    batches = set(table["status"].str.extract(r"in batch (\S+)$")[0].dropna())
    known = set(context.instance.get_dynamic_partitions(video_batches.name))
    if batches - known:
        context.instance.add_dynamic_partitions(video_batches.name, sorted(batches - known))
    return dg.MaterializeResult(metadata={
        "dagster/row_count": int(table["ok"].astype(bool).sum()), "rows": len(table),
        "quarantined": len(quarantine), "quarantine_reasons": reasons_table(quarantine),
        "video_batch": batch.key if batch else "none (nothing new)",
        "videos": len(batch.files) if batch else 0, "megabytes": round(float(table["bytes"].sum()) / 2**20, 2),
        "statuses": markdown_table(table["status"].str.replace(r"batch \S+", "batch", regex=True)
                                   .value_counts().rename_axis("status").reset_index()),
    })


@dg.asset(partitions_def=video_batches, group_name="curation", kinds={"parquet"})
def raw_videos(context: dg.AssetExecutionContext, settings: CurationSettings) -> dg.MaterializeResult:
    """The batch as ingested: each file's SHA-256, name, managed copy and source caption."""
    batch = store.read_batch(context.partition_key, settings.home())
    table = pd.DataFrame([asdict(f) for f in batch.files])
    path = write_table(table, settings.batch_dir(batch.key) / "raw.parquet")
    return dg.MaterializeResult(metadata={
        "dagster/row_count": len(table), "path": dg.MetadataValue.path(str(path)),
        "with_source_caption": int(table["caption"].notna().sum()),
        "megabytes": round(sum(Path(p).stat().st_size for p in table["stored_path"]) / 2**20, 2),
    })


MAX_QUARANTINE_FRACTION = 0.2  # above this, a batch warns: something upstream may be wrong


PROBED, CLIPPED = dg.AssetKey("probed_videos"), dg.AssetKey("video_clips")


@dg.multi_asset(
    name="probe_and_cut", partitions_def=video_batches, group_name="curation", can_subset=True,
    specs=[
        dg.AssetSpec(PROBED, deps=[raw_videos], kinds={"parquet"}, skippable=True, description=(
            "Every file decode-validated with PyAV, its PySceneDetect shots found in the same decode; unusable "
            "ones go to the quarantine table with a reason.")),
        dg.AssetSpec(CLIPPED, deps=[PROBED], kinds={"parquet"}, skippable=True, description=(
            "The shots cut into windows of at most max_seconds, written frame-accurately at the preset's size and "
            "rate, with each clip's motion measured and the frames CLIP and the captioner look at kept as stills as "
            "it is encoded.")),
    ],
    check_specs=[dg.AssetCheckSpec("quarantine_fraction", asset=PROBED,
                                   description=f"Warns above {MAX_QUARANTINE_FRACTION:.0%} quarantined.")],
)
def probe_and_cut(context: dg.AssetExecutionContext, settings: CurationSettings):
    """probed_videos and video_clips. Materialized together, each file is decoded once: probe, shot detection,
    cutting, encoding, motion and the stills all ride on the same decode. video_clips alone cuts again from the
    stored probe table (its shots, unless the detector's settings have changed); probed_videos alone only probes.
    Before cutting, partial clips that a killed worker left behind are removed. Each file's work runs under the
    settings' limits (guard.py); a file that breaks one is quarantined (or, cut alone, dropped whole) with the
    reason, what its worker wrote is removed, and the batch goes on."""
    folder = settings.batch_dir(context.partition_key)
    config, measure, probe_config = settings.clip_config(), settings.clip_measure(), settings.probe_config()
    out_dir = settings.home() / "clips" / context.partition_key
    raw = pd.read_parquet(folder / "raw.parquet")
    spans = dict(zip(raw["sha256"], raw["spans"])) if "spans" in raw else {}
    results = None
    removed = remove_stale_partials(context, out_dir) if CLIPPED in context.selected_asset_keys else 0
    if PROBED in context.selected_asset_keys:
        if CLIPPED in context.selected_asset_keys:
            jobs = [(path, sha, out_dir, config, measure, url_tables_module.spans_of(spans.get(sha)), probe_config)
                    for path, sha in zip(raw["stored_path"], raw["sha256"])]
            outcomes = per_file(context, settings, probe_and_cut_job, jobs)
            rows = [outcome.value[0] if outcome.value else quarantined_row(path, sha, outcome.problem, config)
                    for outcome, path, sha in zip(outcomes, raw["stored_path"], raw["sha256"])]
            results = [outcome.value[1] if outcome.value else None for outcome in outcomes]
            removed += sum(remove_partial_clips(out_dir, path, sha) for outcome, path, sha
                           in zip(outcomes, raw["stored_path"], raw["sha256"]) if outcome.problem)
        else:
            outcomes = per_file(context, settings, probe_job, [(path, probe_config, config, sha)
                                                            for path, sha in zip(raw["stored_path"], raw["sha256"])])
            rows = [outcome.value or quarantined_row(path, sha, outcome.problem, config)
                    for outcome, path, sha in zip(outcomes, raw["stored_path"], raw["sha256"])]
        yield from _probed(context, folder, raw, rows, engine(settings), outcomes)
    if CLIPPED in context.selected_asset_keys:
        if results is None:
            probed = pd.read_parquet(folder / "probe.parquet").drop(columns=["name", "run_id"])
            jobs = [(row, out_dir, config, measure, url_tables_module.spans_of(spans.get(row["sha256"])))
                    for row in probed.to_dict("records")]
            outcomes = per_file(context, settings, clips_job, jobs)
            results = [outcome.value or dropped_whole(row, outcome.problem)
                       for outcome, (row, *_) in zip(outcomes, jobs)]
            removed += sum(remove_partial_clips(out_dir, row["path"], row["sha256"])
                           for outcome, (row, *_) in zip(outcomes, jobs) if outcome.problem)
        if settings.ray_address:  # partial clips of tasks whose worker died (their retries wrote the clips)
            removed += remove_stale_partials(context, out_dir)
        yield _clipped(context, folder, [result for result in results if result is not None], measure, removed,
                       engine(settings))


IN_PROGRESS = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
               dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]


def remove_stale_partials(context: dg.AssetExecutionContext, out_dir: Path) -> int:
    """Remove the `.cutting-*` folders (partial clips) that a worker killed mid-file left in the batch's clips
    folder, unless another run of the batch is in progress (its workers may be cutting into them); how many."""
    runs = context.instance.get_run_ids(dg.RunsFilter(statuses=IN_PROGRESS,
                                                      tags={"dagster/partition": context.partition_key}))
    if any(run_id != context.run_id for run_id in runs) or not out_dir.is_dir():
        return 0
    stale = list(out_dir.glob(".cutting-*"))
    for partial in stale:
        shutil.rmtree(partial, ignore_errors=True)
    return len(stale)


def per_file(context, settings: CurationSettings, function, jobs: list) -> list[Outcome]:
    """function(job) for each file's job under the settings' work limits (guard.py), as Outcomes in the jobs' order:
    in up to `settings.workers` processes forked from this one, a fresh one per file, or, with a Ray address, each
    job a Ray task that runs it the same way in a process forked from its Ray worker (a task whose Ray worker dies
    is retried by Ray; a file that breaks a limit is an outcome with its problem, not a retry). Logs each problem."""
    limits = settings.work_limits()
    if settings.ray_address:
        outcomes = in_workers(context, settings, guarded_task(function), [(job, limits) for job in jobs])
    else:
        outcomes = run_guarded(function, jobs, settings.workers, limits)
    for outcome, job in zip(outcomes, jobs):
        if outcome.problem:
            path = job[0]["path"] if isinstance(job[0], dict) else job[0]
            context.log.warning(f"{function.__name__}: {path}: {outcome.problem}")
    return outcomes


def in_workers(context, settings: CurationSettings, function, jobs: list) -> list:
    """[function(job) for job in jobs] as Ray tasks on the cluster at `settings.ray_address` (retried when a worker
    dies), in the jobs' order."""
    from lavie_model.cluster.ray_cluster import check_shared_storage, connected, map_tasks, tasks_retried

    with connected(settings.ray_address) as ray:
        nodes = check_shared_storage(ray, settings.home())
        step = max(1, len(jobs) // 10)
        results = map_tasks(ray, function, jobs, progress=lambda done, total: (done % step == 0 or done == total) and
                            context.log.info(f"{function.__name__}: {done} of {total} done on Ray"))
        retried = tasks_retried(ray, [function.__name__])
    context.log.info(f"{function.__name__}: {len(jobs)} Ray tasks on {nodes} nodes at {settings.ray_address}, "
                     + ("retries unknown (no dashboard)" if retried is None else f"{retried} retried"))
    return results


def engine(settings: CurationSettings) -> str:
    """Where a step's per-file work ran, for its metadata."""
    return f"ray at {settings.ray_address}" if settings.ray_address else f"{settings.workers} local processes"


def _probed(context: dg.AssetExecutionContext, folder: Path, raw: pd.DataFrame, rows, ran_on: str,
            outcomes: list[Outcome]):
    table = pd.DataFrame(list(rows), columns=[f.name for f in fields(ProbeResult)] + list(SHOT_COLUMNS))
    table = table.assign(name=raw["name"].values, run_id=context.run.run_id)
    write_table(table[table["ok"]], folder / "probe.parquet")
    quarantine = table[~table["ok"]][["sha256", "name", "path", "reason", "run_id"]]
    write_table(quarantine, folder / "quarantine.parquet")
    usable = table[table["ok"]]
    fraction = len(quarantine) / max(1, len(raw))
    yield dg.MaterializeResult(asset_key=PROBED, metadata={
        "dagster/row_count": len(usable), "quarantined": len(quarantine),
        "funnel": funnel(ingested=len(raw), decodable=len(usable)),
        "quarantine_reasons": reasons_table(quarantine),
        "hours": round(float(usable["duration"].sum()) / 3600, 4), "engine": ran_on,
        # the most resident memory a file's worker added (guard.Outcome.added_mb), and the longest file's seconds
        "worker_peak_added_mb": round(max((o.added_mb for o in outcomes), default=0.0), 1),
        "longest_file_seconds": round(max((o.seconds for o in outcomes), default=0.0), 2),
    })
    yield dg.AssetCheckResult(
        asset_key=PROBED, check_name="quarantine_fraction", passed=fraction <= MAX_QUARANTINE_FRACTION,
        severity=dg.AssetCheckSeverity.WARN, metadata={"fraction": round(fraction, 4)})


def _clipped(context: dg.AssetExecutionContext, folder: Path, results: list[tuple], measure: ClipMeasure,
             removed: int, ran_on: str) -> dg.MaterializeResult:
    # Explicit columns: a batch with no usable file still gives well-formed (empty) tables downstream.
    clips = pd.DataFrame([c for cs, *_ in results for c in cs], columns=[f.name for f in fields(ClipRow)])
    clips = clips.assign(run_id=context.run.run_id)
    drops = pd.DataFrame([d for _, ds, *_ in results for d in ds], columns=[f.name for f in fields(DropRow)])
    motion = pd.DataFrame([m for _, _, ms, *_ in results for m in ms], columns=["clip_id", "motion"])
    motion = motion.assign(motion_size=measure.motion_size, motion_pairs=measure.motion_pairs)
    stills = pd.DataFrame([s for *_, ss, _ in results for s in ss], columns=["clip_id", "frame", "jpeg"])
    probed = pd.read_parquet(folder / "probe.parquet")
    write_table(clips, folder / "clips.parquet")
    write_table(drops, folder / "clip_drops.parquet")
    write_table(motion, folder / "motion.parquet")
    write_table(stills, folder / "stills.parquet")
    return dg.MaterializeResult(asset_key=CLIPPED, metadata={
        "dagster/row_count": len(clips), "dropped_pieces": len(drops),
        "still_megabytes": round(float(stills["jpeg"].map(len).sum()) / 2**20, 3),
        "stale_partials_removed": removed, "engine": ran_on,
        "stream_copied": sum(copied for *_, copied in results),
        "funnel": funnel(decodable=len(probed), clips=len(clips)),
        "drop_reasons": reasons_table(drops),
        "clip_hours": round(float((clips["end_time"] - clips["start_time"]).sum()) / 3600, 4) if len(clips) else 0.0,
    })


@dg.asset(partitions_def=video_batches, group_name="curation", deps=[CLIPPED], kinds={"parquet"})
def captioned_clips(context: dg.AssetExecutionContext, settings: CurationSettings) -> dg.MaterializeResult:
    """Each clip with a caption: its source video's, or the captioner's where there is none (or for all clips
    with `recaption`); the caption's origin is recorded."""
    folder = settings.batch_dir(context.partition_key)
    clips = pd.read_parquet(folder / "clips.parquet")
    raw = pd.read_parquet(folder / "raw.parquet")
    table = clips.merge(raw[["sha256", "caption", "caption_source"]], left_on="source_sha256", right_on="sha256",
                        how="left").drop(columns=["sha256"])
    if "spans" in raw:  # clips cut from a URL table's spans take their span's caption
        spans = dict(zip(raw["sha256"], raw["spans"]))
        for index, clip in table.iterrows():
            found = url_tables_module.spans_of(spans.get(clip["source_sha256"]))
            if found and found[clip["shot"]]["caption"]:
                table.loc[index, ["caption", "caption_source"]] = [found[clip["shot"]]["caption"], "table span"]
    table["caption_source"] = table["caption_source"].where(table["caption"].notna(), None)
    wanted = table["caption"].isna() | settings.recaption
    if settings.captioner_path and wanted.any():
        config = CaptionerConfig(model_path=settings.captioner_path)
        generated = batched(context, settings, _caption_chunk, table[wanted], config.batch_size * CHUNK_BATCHES, config,
                            stored_stills(folder))
        table.loc[wanted, ["caption", "caption_source"]] = generated[["caption", "caption_source"]].to_numpy()
    write_table(table, folder / "captions.parquet")
    return dg.MaterializeResult(metadata={
        "dagster/row_count": len(table), "without_caption": int(table["caption"].isna().sum()),
        "caption_sources": dg.MetadataValue.json(table["caption_source"].value_counts(dropna=False).to_dict()),
    })


@dg.asset(partitions_def=video_batches, group_name="curation", deps=[captioned_clips], kinds={"parquet"})
def clip_scores(context: dg.AssetExecutionContext, settings: CurationSettings) -> dg.MaterializeResult:
    """CLIP text-frame similarity and image embedding, aesthetic score, motion, resolution, duration."""
    folder = settings.batch_dir(context.partition_key)
    clips = pd.read_parquet(folder / "captions.parquet")
    config = settings.score_config()
    scores = batched(context, settings, _score_chunk, clips, max(1, config.batch_size // config.frames_per_clip)
                     * CHUNK_BATCHES, config, stored_motion(folder, config), stored_stills(folder))
    write_table(scores, folder / "scores.parquet")
    summary = scores[["clip_score", "aesthetic", "motion", "duration"]].describe().round(4)
    plots = " ".join(picture(histogram_png(scores[name], name), "png", name)
                     for name in ("clip_score", "aesthetic", "motion", "duration"))
    return dg.MaterializeResult(metadata={
        "dagster/row_count": len(scores), "summary": markdown_table(summary.reset_index()),
        "histograms": dg.MetadataValue.md(plots),
    })


CHUNK_BATCHES = 32  # model batches per Ray task of scoring or captioning (each task loads the model once)


def batched(context, settings: CurationSettings, function, clips: pd.DataFrame, rows_per_chunk: int, config,
            *by_clip: dict) -> pd.DataFrame:
    """function((clips, config, *by_clip)) in this process, or, with a Ray address, over chunks of
    `rows_per_chunk` clips as Ray tasks, concatenated in order. `by_clip`: clip_id-keyed inputs. The tables come
    out identical: a chunk is a multiple of the model's batch, so every forward pass sees the rows it sees here,
    and each task computes on as many torch threads as this process (a different count rounds differently)."""
    if not settings.ray_address or clips.empty:
        return function((clips, config, *by_clip))
    import torch

    jobs = []
    for start in range(0, len(clips), rows_per_chunk):
        chunk = clips.iloc[start:start + rows_per_chunk]
        jobs.append((function, torch.get_num_threads(),
                     (chunk, config, *({key: values[key] for key in chunk["clip_id"] if key in values}
                                       for values in by_clip))))
    return pd.concat(in_workers(context, settings, _in_threads, jobs), ignore_index=True)


def _in_threads(job):
    import torch

    function, threads, args = job
    torch.set_num_threads(threads)
    return function(args)


def _score_chunk(args) -> pd.DataFrame:
    return score_clips(*args)


def _caption_chunk(args) -> pd.DataFrame:
    return caption_clips(*args)


def stored_motion(folder: Path, config: ScoreConfig) -> dict[str, float]:
    """The motion video_clips measured while writing each clip, where it used `config`'s settings."""
    path = folder / "motion.parquet"
    if not path.exists():
        return {}
    table = pd.read_parquet(path)
    table = table[(table["motion_size"] == config.motion_size) & (table["motion_pairs"] == config.motion_pairs)]
    return dict(zip(table["clip_id"], table["motion"]))


def stored_stills(folder: Path) -> dict[str, dict[int, bytes]]:
    """The stills video_clips kept of each clip (clip frame: JPEG)."""
    path = folder / "stills.parquet"
    stills = {}
    if path.exists():
        for row in pd.read_parquet(path).itertuples():
            stills.setdefault(row.clip_id, {})[row.frame] = row.jpeg
    return stills


class FilterSettings(dg.Config):
    """Thresholds of the per-clip decision; None turns a rule off. Defaults: lavie_model.curation.filtering."""

    min_clip_score: float | None = FilterConfig.min_clip_score
    min_aesthetic: float | None = FilterConfig.min_aesthetic
    min_motion: float | None = FilterConfig.min_motion
    max_motion: float | None = FilterConfig.max_motion
    min_seconds: float | None = FilterConfig.min_seconds
    dedup_similarity: float | None = FilterConfig.dedup_similarity


@dg.asset(partitions_def=video_batches, group_name="curation", deps=[clip_scores], kinds={"parquet"})
def filtered_clips(context: dg.AssetExecutionContext, config: FilterSettings,
                   settings: CurationSettings) -> dg.MaterializeResult:
    """A keep/drop decision per clip with every reason for a drop; re-runs cheaply when thresholds change."""
    folder = settings.batch_dir(context.partition_key)
    clips = pd.read_parquet(folder / "captions.parquet")
    scores = pd.read_parquet(folder / "scores.parquet")
    decisions = decide(clips, scores, FilterConfig(**config.model_dump()))
    write_table(decisions.assign(run_id=context.run.run_id), folder / "filtered.parquet")
    kept = int(decisions["keep"].sum())
    return dg.MaterializeResult(metadata={
        "dagster/row_count": kept, "dropped": len(decisions) - kept,
        "funnel": funnel(clips=len(clips), kept=kept), "drop_reasons": reasons_table(decisions[~decisions["keep"]]),
        "thresholds": dg.MetadataValue.json(config.model_dump()),
    })


SHARD_CHECKS = [
    dg.AssetCheckSpec("shards_open_and_match", asset="video_shards", blocking=True,
                      description="Every shard opens with webdataset and holds the samples the filter kept."),
    dg.AssetCheckSpec("kept_clips_have_captions", asset="video_shards", blocking=True,
                      description="No kept clip lacks a caption."),
]


@dg.asset(partitions_def=video_batches, group_name="curation", deps=[filtered_clips], kinds={"webdataset"},
          check_specs=SHARD_CHECKS)
def video_shards(context: dg.AssetExecutionContext, settings: CurationSettings) -> dg.MaterializeResult:
    """The kept clips as WebDataset shards ({key}.mp4, .txt, .json with lineage and scores), written atomically."""
    key = context.partition_key
    folder = settings.batch_dir(key)
    samples = kept_samples(folder, key)
    out_dir = settings.home() / "shards" / "videos" / key
    shards = write_shards(samples, out_dir, prefix=key)
    write_table(shards, folder / "shards.parquet")
    problems = verify_shards(shards)
    held = int(shards["samples"].sum()) if len(shards) else 0
    if held != len(samples):
        problems.append(f"shards hold {held} samples, the filter kept {len(samples)}")
    uncaptioned = samples.loc[samples["caption"].isna() | (samples["caption"].str.strip() == ""), "clip_id"].tolist()
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": held, "shards": len(shards), "path": dg.MetadataValue.path(str(out_dir)),
            "shard_list": markdown_table(shards[["name", "samples", "bytes", "sha256"]]) if len(shards) else "none",
            "hours": round(float(samples["duration"].sum()) / 3600, 4) if len(samples) else 0.0,
            "previews": dg.MetadataValue.md("\n\n".join(
                f"{picture(preview_gif(row.path), 'gif', row.clip_id)} {row.caption}"
                for row in samples.head(PREVIEWS).itertuples()) or "no clip kept"),
        },
        check_results=[
            dg.AssetCheckResult(check_name="shards_open_and_match", passed=not problems,
                                metadata={"problems": dg.MetadataValue.json(problems)}),
            dg.AssetCheckResult(check_name="kept_clips_have_captions", passed=not uncaptioned,
                                metadata={"uncaptioned": dg.MetadataValue.json(uncaptioned)}),
        ],
    )


def kept_samples(folder: Path, batch: str) -> pd.DataFrame:
    """One row per kept clip with its caption, lineage (source, time range, batch) and scores.

    The Dagster run ids stay in the tables, not in the shards, so that re-materializing a batch
    reproduces its shards byte for byte.
    """
    clips = pd.read_parquet(folder / "captions.parquet").drop(columns=["run_id"])
    scores = pd.read_parquet(folder / "scores.parquet").drop(columns=["width", "height"], errors="ignore")
    decisions = pd.read_parquet(folder / "filtered.parquet").drop(columns=["run_id"])
    table = clips.merge(scores, on="clip_id").merge(decisions, on="clip_id")
    kept = table.loc[table["keep"].astype(bool)]  # an empty object column would otherwise select columns
    return kept.assign(batch=batch).drop(columns=["keep", "reason"]).reset_index(drop=True)


@dg.asset(partitions_def=image_batches, group_name="curation", kinds={"parquet"})
def raw_images(context: dg.AssetExecutionContext, settings: CurationSettings) -> dg.MaterializeResult:
    """An image batch as ingested: each file's SHA-256, name, managed copy and caption."""
    batch = store.read_batch(context.partition_key, settings.home())
    table = pd.DataFrame([asdict(f) for f in batch.files])
    write_table(table, settings.batch_dir(batch.key) / "raw.parquet")
    return dg.MaterializeResult(metadata={
        "dagster/row_count": len(table), "without_caption": int(table["caption"].isna().sum()),
    })


@dg.asset(partitions_def=image_batches, group_name="curation", deps=[raw_images], kinds={"webdataset"},
          check_specs=[dg.AssetCheckSpec("image_shards_open_and_match", asset="image_shards", blocking=True)])
def image_shards(context: dg.AssetExecutionContext, settings: CurationSettings) -> dg.MaterializeResult:
    """Captioned images as image-text WebDataset shards ({key}.jpg, .txt, .json); uncaptioned ones are listed."""
    key = context.partition_key
    folder = settings.batch_dir(key)
    raw = pd.read_parquet(folder / "raw.parquet")
    captioned = raw[raw["caption"].notna()]
    samples = captioned.rename(columns={"sha256": "image_id", "stored_path": "path"}).assign(batch=key)
    out_dir = settings.home() / "shards" / "images" / key
    shards = write_image_shards(samples, out_dir, prefix=key, key="image_id")
    write_table(shards, folder / "shards.parquet")
    problems = verify_shards(shards)
    held = int(shards["samples"].sum()) if len(shards) else 0
    if held != len(samples):
        problems.append(f"shards hold {held} samples, {len(samples)} images have captions")
    return dg.MaterializeResult(
        metadata={"dagster/row_count": held, "shards": len(shards), "path": dg.MetadataValue.path(str(out_dir)),
                  "without_caption": dg.MetadataValue.json(raw.loc[raw["caption"].isna(), "name"].tolist())},
        check_results=[dg.AssetCheckResult(check_name="image_shards_open_and_match", passed=not problems,
                                           metadata={"problems": dg.MetadataValue.json(problems)})],
    )


VIDEO_ASSETS = [raw_videos, probe_and_cut, captioned_clips, clip_scores, filtered_clips, video_shards]
IMAGE_ASSETS = [raw_images, image_shards]
URL_ASSETS = [downloaded_videos]
curate_videos = dg.define_asset_job("curate_videos", selection=VIDEO_ASSETS)
curate_images = dg.define_asset_job("curate_images", selection=IMAGE_ASSETS)
download_videos = dg.define_asset_job("download_videos", selection=URL_ASSETS)
