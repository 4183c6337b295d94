"""The curation assets end to end in real Dagster instances, on a small demo corpus and on bad input."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from test_curation_core import BAD_INPUTS, BLUE, GREEN, ODD_NAMES, decoded, solid_frames, write_video

from lavie_model.curation import store
from lavie_model.curation.captioner import CaptionerConfig
from lavie_model.curation.demo_corpus import build_demo_corpus
from lavie_model.curation.writer import middle_indices
from lavie_model.report import funnel
from pipelines.cli import main as lavie
from pipelines.curation import IMAGE_ASSETS, VIDEO_ASSETS, CurationSettings, filtered_clips, video_shards
from pipelines.definitions import defs

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
VIDEO_SELECTION = ",".join(key.to_user_string() for asset in VIDEO_ASSETS for key in asset.keys)  # curation only


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build_demo_corpus(tmp_path_factory.mktemp("corpus") / "demo", n_shapes=8, n_stills=2)


@pytest.fixture(scope="module")
def curated(corpus, tmp_path_factory):
    """A video batch ingested and curated once; the module's tests look at what it left."""
    home = tmp_path_factory.mktemp("lavie_home")
    batch = store.ingest([corpus.videos[0].parent], home=home)
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("video_batches", [batch.key])
    settings = CurationSettings(lavie_home=str(home), preset="tiny")
    result = dg.materialize(VIDEO_ASSETS, partition_key=batch.key, instance=instance,
                            resources={"settings": settings})
    return {"home": home, "batch": batch, "instance": instance, "settings": settings, "result": result}


def tables(curated):
    folder = curated["home"] / "curation" / curated["batch"].key
    return {name: pd.read_parquet(folder / f"{name}.parquet")
            for name in ("raw", "probe", "quarantine", "clips", "clip_drops", "captions", "scores", "filtered",
                         "shards")}


def test_every_input_is_accounted_for(corpus, curated):
    assert curated["result"].success
    t = tables(curated)
    assert len(t["raw"]) == len(corpus.videos)
    assert len(t["raw"]) == len(t["probe"]) + len(t["quarantine"])
    assert t["quarantine"]["name"].tolist() == [corpus.corrupt.name]
    assert t["quarantine"]["reason"].iloc[0]
    assert set(t["clips"]["source_sha256"]) | set(t["clip_drops"].get("source_sha256", [])) == set(t["probe"]["sha256"])
    assert len(t["filtered"]) == len(t["captions"]) == len(t["clips"]) == len(t["scores"])
    kept = int(t["filtered"]["keep"].sum())
    assert 0 < kept and int(t["shards"]["samples"].sum()) == kept
    dropped = t["filtered"][~t["filtered"]["keep"]]
    assert (dropped["reason"].str.len() > 0).all()
    counts = funnel(curated["home"] / "curation" / curated["batch"].key)  # as `make demo` and its report show it
    assert (counts["ingested"], counts["decodable"], counts["clips"], counts["kept"], counts["in_shards"]) == (
        len(t["raw"]), len(t["probe"]), len(t["clips"]), kept, kept)
    assert counts["quarantined"] == [(corpus.corrupt.name, t["quarantine"]["reason"].iloc[0])]


def test_checks_pass_and_metadata_is_recorded(curated):
    result = curated["result"]
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert checks == {"quarantine_fraction": True, "shards_open_and_match": True, "kept_clips_have_captions": True}
    materialization = result.asset_materializations_for_node("video_shards")[0]
    assert materialization.metadata["shards"].value >= 1
    assert materialization.metadata["previews"].value.count("data:image/gif;base64,") >= 1
    histograms = result.asset_materializations_for_node("clip_scores")[0].metadata["histograms"].value
    assert histograms.count("data:image/png;base64,") == 4
    probe_metadata = result.asset_materializations_for_node("probe_and_cut")[0].metadata
    assert "ingested" in probe_metadata["funnel"].value and probe_metadata["quarantined"].value == 1


def test_shards_are_reproducible_and_lineage_is_complete(curated):
    import json
    import tarfile

    before = tables(curated)["shards"]
    again = dg.materialize([filtered_clips, video_shards], partition_key=curated["batch"].key,
                           instance=curated["instance"], resources={"settings": curated["settings"]})
    assert again.success
    after = tables(curated)["shards"]
    assert before["sha256"].tolist() == after["sha256"].tolist()  # same keys, same bytes, no duplicates
    with tarfile.open(after["path"].iloc[0]) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(".json"))
        lineage = json.loads(tar.extractfile(member).read())
    for field in ("source_sha256", "source_path", "start_time", "end_time", "batch", "caption_source",
                  "clip_score", "motion"):
        assert field in lineage, field
    assert "run_id" not in lineage  # run ids live in the tables, so reruns give identical shards


@dg.op
def idle():
    pass


@dg.job
def busy_job():
    idle()


def test_probe_and_clips_materialized_apart_give_the_tables_of_one_decode(corpus, curated, tmp_path):
    """probed_videos alone (probe and shots), then video_clips alone (a decode of its own, cutting at the stored
    shots): the same probe, clip, drop, motion and stills tables as the curated batch's one decode. The partial
    clips of a killed worker are kept while another run of the batch is in progress, and removed after."""
    home = tmp_path / "home"
    batch = store.ingest([corpus.videos[0].parent], home=home)
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("video_batches", [batch.key])
    settings = CurationSettings(lavie_home=str(home), preset="tiny")
    killed = home / "clips" / batch.key / ".cutting-killed"  # partial clips of a worker killed mid-file
    killed.mkdir(parents=True)
    (killed / "000000_000020.mp4").write_bytes(b"\0" * 100)
    busy = instance.create_run_for_job(busy_job, tags={"dagster/partition": batch.key},
                                       status=dg.DagsterRunStatus.STARTED)  # another run of the batch, cutting
    removed = []
    for selection in (["raw_videos", "probed_videos"], ["video_clips"], ["video_clips"]):
        result = dg.materialize(VIDEO_ASSETS, selection=selection, partition_key=batch.key, instance=instance,
                                resources={"settings": settings})
        assert result.success
        assert {m.asset_key.to_user_string() for m in result.get_asset_materialization_events()} == set(selection)
        if selection == ["video_clips"]:
            (clipped,) = result.get_asset_materialization_events()
            removed.append((clipped.materialization.metadata["stale_partials_removed"].value, killed.exists()))
            instance.report_run_failed(busy)  # it ends: the folder is stale now
    assert removed == [(0, True), (1, False)]
    apart, together = home / "curation" / batch.key, curated["home"] / "curation" / curated["batch"].key
    for name, drop in (("probe", ["run_id", "path"]), ("clips", ["run_id", "path", "source_path"]),
                       ("clip_drops", ["source_path"]), ("motion", []), ("stills", [])):
        first, second = (pd.read_parquet(folder / f"{name}.parquet").drop(columns=drop) for folder in (apart, together))
        pd.testing.assert_frame_equal(first, second, check_exact=True)


def test_a_new_threshold_reruns_only_the_filter(curated):
    folder = curated["home"] / "curation" / curated["batch"].key
    scores_written = (folder / "scores.parquet").stat().st_mtime_ns
    strict = {"ops": {"filtered_clips": {"config": {"min_motion": 1e9}}}}
    result = dg.materialize([filtered_clips, video_shards], partition_key=curated["batch"].key,
                            instance=curated["instance"], resources={"settings": curated["settings"]},
                            run_config=strict, raise_on_error=False)
    assert (folder / "scores.parquet").stat().st_mtime_ns == scores_written
    decisions = pd.read_parquet(folder / "filtered.parquet")
    assert not decisions["keep"].any() and decisions["reason"].str.contains("motion").all()
    assert result.success  # an empty set of shards is still a consistent one
    dg.materialize([filtered_clips, video_shards], partition_key=curated["batch"].key,
                   instance=curated["instance"], resources={"settings": curated["settings"]})


def test_images_become_image_text_shards(corpus, tmp_path):
    batch = store.ingest([corpus.images[0].parent], kind="images", home=tmp_path)
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("image_batches", [batch.key])
    result = dg.materialize(IMAGE_ASSETS, partition_key=batch.key, instance=instance,
                            resources={"settings": CurationSettings(lavie_home=str(tmp_path))})
    assert result.success
    shards = pd.read_parquet(tmp_path / "curation" / batch.key / "shards.parquet")
    assert int(shards["samples"].sum()) == len(corpus.images)


def test_ingest_stores_each_content_once(corpus, tmp_path):
    videos = corpus.videos[0].parent
    first = store.ingest([videos], home=tmp_path)
    assert len(first.files) == len(corpus.videos)
    assert all(Path(f.stored_path).name.startswith(f.sha256) for f in first.files)
    assert sum(f.caption is not None for f in first.files) == len(corpus.videos)
    copy = tmp_path / "copies" / "same bytes, new name 'é' $(touch pwned).mp4"
    copy.parent.mkdir()
    shutil.copy(corpus.videos[3], copy)
    again = store.ingest([videos, copy, tmp_path / "missing.mp4"], home=tmp_path)
    assert again.key is None and not again.files
    reasons = [s["reason"] for s in again.skipped]
    assert sum(r.startswith("already ingested in batch") for r in reasons) == len(corpus.videos) + 1
    assert "no such file" in reasons
    assert not (Path.cwd() / "pwned").exists()


def test_lavie_ingest_registers_a_partition(corpus, tmp_path, monkeypatch, capsys, data_homes):
    captions = tmp_path / "captions.csv"
    captions.write_text(f"path,caption\n{corpus.images[0]},a photo given by a captions file\n")
    assert lavie(["ingest", "--images", "--captions", str(captions), str(corpus.images[0])]) == 0
    key = capsys.readouterr().out.strip()
    assert key.startswith("images-")
    assert key in dg.DagsterInstance.get().get_dynamic_partitions("image_batches")
    batch = store.read_batch(key)
    assert batch.files[0].caption == "a photo given by a captions file"
    assert batch.files[0].caption_source == str(captions)
    assert lavie(["ingest", "--images", str(corpus.images[0])]) == 0
    assert "nothing new to ingest" in capsys.readouterr().err
    monkeypatch.delenv("DAGSTER_HOME")
    assert lavie(["ingest", str(corpus.videos[1])]) == 1
    assert "DAGSTER_HOME is not set" in capsys.readouterr().err


def test_the_inbox_sensor_registers_new_files_once(corpus, tmp_path):
    from pipelines.sensors import inbox_sensor

    inbox = tmp_path / "inbox" / "videos"
    inbox.mkdir(parents=True)
    for source in corpus.videos[:2]:
        target = inbox / source.name
        shutil.copy(source, target)
        os.utime(target, (1_000_000_000, 1_000_000_000))  # settled long ago
    instance = dg.DagsterInstance.ephemeral()
    settings = CurationSettings(lavie_home=str(tmp_path))
    first = inbox_sensor(dg.build_sensor_context(instance=instance, resources={"settings": settings}))
    assert [r.partition_key for r in first.run_requests] == [first.dynamic_partitions_requests[0].partition_keys[0]]
    assert first.run_requests[0].job_name == "curate_videos"
    assert len(store.read_batch(first.run_requests[0].partition_key, tmp_path).files) == 2
    again = inbox_sensor(dg.build_sensor_context(instance=instance, cursor=first.cursor,
                                                 resources={"settings": settings}))
    assert not again.run_requests and not again.dynamic_partitions_requests
    shutil.copy(corpus.videos[2], inbox / "late.mp4")  # just written: left for a later tick
    later = inbox_sensor(dg.build_sensor_context(instance=instance, cursor=again.cursor,
                                                 resources={"settings": settings}))
    assert not later.run_requests


def test_lavie_lineage_traces_a_sample_to_its_source(curated, monkeypatch, capsys):
    from lavie_model.cli import main

    monkeypatch.setenv("LAVIE_HOME", str(curated["home"]))
    t = tables(curated)
    kept = t["filtered"][t["filtered"]["keep"]].iloc[0]
    clip = t["captions"].set_index("clip_id").loc[kept["clip_id"]]
    assert main(["lineage", kept["clip_id"]]) == 0
    out = capsys.readouterr().out
    for text in (clip["source_path"], clip["source_sha256"], curated["batch"].key, clip["run_id"], kept["run_id"],
                 f"{clip['start_time']:.3f}-{clip['end_time']:.3f} s", "kept", "motion"):
        assert str(text) in out, text
    assert main(["lineage", "no-such-key"]) == 1
    assert "no shard" in capsys.readouterr().err


def test_uncaptioned_clips_get_the_captioners_caption(corpus, tmp_path):
    from lavie_model.curation.captioner import build_tiny_captioner
    from pipelines.curation import captioned_clips, probe_and_cut, raw_videos

    video = tmp_path / "inputs" / "no caption.mp4"
    video.parent.mkdir()
    shutil.copy(corpus.videos[5], video)  # no sidecar .txt beside it
    batch = store.ingest([video], home=tmp_path / "home")
    assert batch.files[0].caption is None
    captioner = build_tiny_captioner(tmp_path / "captioner")
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("video_batches", [batch.key])
    settings = CurationSettings(lavie_home=str(tmp_path / "home"), captioner_path=str(captioner))
    assert dg.materialize([raw_videos, probe_and_cut, captioned_clips], partition_key=batch.key,
                          instance=instance, resources={"settings": settings}).success
    captions = pd.read_parquet(tmp_path / "home" / "curation" / batch.key / "captions.parquet")
    assert len(captions) >= 1
    stills = pd.read_parquet(tmp_path / "home" / "curation" / batch.key / "stills.parquet")
    for clip in captions.itertuples():  # the writer kept the captioner's frame of every clip
        frames = set(stills.loc[stills["clip_id"] == clip.clip_id, "frame"])
        assert set(middle_indices(clip.frame_count, CaptionerConfig.frames_per_clip)) <= frames
    assert (captions["caption_source"] == f"captioner:{Path(captioner).name}").all()
    assert captions["caption"].str.len().gt(0).all()


def test_a_batch_of_only_bad_files_still_succeeds(corpus, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    shutil.copy(corpus.corrupt, bad / corpus.corrupt.name)
    (bad / "empty.mp4").write_bytes(b"")
    (bad / "noise.mp4").write_bytes(os.urandom(5000))
    batch = store.ingest([bad], home=tmp_path / "home")
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("video_batches", [batch.key])
    result = dg.materialize(VIDEO_ASSETS, partition_key=batch.key, instance=instance,
                            resources={"settings": CurationSettings(lavie_home=str(tmp_path / "home"))})
    assert result.success
    folder = tmp_path / "home" / "curation" / batch.key
    assert len(pd.read_parquet(folder / "quarantine.parquet")) == 3
    assert len(pd.read_parquet(folder / "shards.parquet")) == 0
    checks = {c.check_name: (c.passed, c.severity) for c in result.get_asset_check_evaluations()}
    assert checks["quarantine_fraction"] == (False, dg.AssetCheckSeverity.WARN)


def test_bad_input_through_the_curation_job(tmp_path, monkeypatch):
    """Every kind of bad input, odd names and a duplicate in one batch: the run succeeds and accounts for all."""
    monkeypatch.chdir(tmp_path)  # a name run by a shell would leave `pwned` here
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for kind, (make, _) in BAD_INPUTS.items():
        make(inputs / f"{kind}.mp4")
    uhd = write_video(inputs / "uhd.mp4", solid_frames(5, GREEN, width=3840, height=2160), fps=5)  # 1 s
    vfr = write_video(inputs / "vfr.mp4", solid_frames(30, GREEN), times_ms=np.cumsum([0] + [50, 150] * 15)[:30])
    upright = solid_frames(20, BLUE)
    upright[:, :24, :24] = (255, 255, 0)  # a yellow marker in the stored frame's top-left corner
    rotated = write_video(inputs / "rotated.mp4", upright, rotation=90)
    for index, name in enumerate(ODD_NAMES):  # distinct bytes each, or ingestion would keep one of them
        write_video(inputs / name, solid_frames(20, (40 + 30 * index, 200 - 20 * index, 90)))
    copy = shutil.copyfile(inputs / ODD_NAMES[0], inputs / "z, the same bytes again.mp4")  # found after it
    for path in (uhd, vfr, rotated, *(inputs / name for name in ODD_NAMES)):
        path.with_suffix(".txt").write_text(f"a test video named {path.name}")  # a sidecar caption
    home = tmp_path / "home"
    batch = store.ingest([inputs], home=home)
    assert batch.skipped == [{"path": str(copy), "reason": "same bytes as another file of this batch"}]
    assert len(list(inputs.glob("*.mp4"))) == len(batch.files) + len(batch.skipped)

    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("video_batches", [batch.key])
    result = defs.resolve_job_def("curate_videos").execute_in_process(
        instance=instance, partition_key=batch.key,
        run_config={"resources": {"settings": {"config": {"lavie_home": str(home)}}}})
    assert result.success

    folder = home / "curation" / batch.key
    t = {name: pd.read_parquet(folder / f"{name}.parquet")
         for name in ("raw", "probe", "quarantine", "clips", "clip_drops", "captions", "scores", "filtered", "shards")}
    assert len(t["raw"]) == len(batch.files) == len(t["quarantine"]) + len(t["probe"])
    reasons = dict(zip(t["quarantine"]["name"], t["quarantine"]["reason"]))
    assert sorted(reasons) == sorted(f"{kind}.mp4" for kind in BAD_INPUTS)
    for kind, (_, reason) in BAD_INPUTS.items():
        assert reasons[f"{kind}.mp4"].startswith(reason), reasons[f"{kind}.mp4"]
    # every decodable file ends as clips or drop rows with a reason, which together cover all its frames
    assert sorted(t["probe"]["name"]) == sorted(["uhd.mp4", "vfr.mp4", "rotated.mp4", *ODD_NAMES])
    assert (t["clip_drops"]["reason"].str.len() > 0).all()
    pieces = pd.concat([t["clips"], t["clip_drops"]])
    for source in t["probe"].itertuples():
        ranges = sorted(pieces.loc[pieces["source_sha256"] == source.sha256, ["start_frame", "end_frame"]]
                        .itertuples(index=False))
        assert ranges[0][0] == 0 and ranges[-1][1] == source.frame_count, source.name
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:])), source.name
    assert len(t["captions"]) == len(t["scores"]) == len(t["filtered"]) == len(t["clips"])
    dropped = t["filtered"][~t["filtered"]["keep"]]
    assert (dropped["reason"].str.len() > 0).all()
    assert int(t["shards"]["samples"].sum()) == int(t["filtered"]["keep"].sum())

    clips = t["clips"].merge(t["probe"][["sha256", "name"]], left_on="source_sha256", right_on="sha256")
    assert set(clips["name"]) == set(t["probe"]["name"])
    uhd_clips = clips[clips["name"] == "uhd.mp4"]
    assert {(row.width, row.height) for row in uhd_clips.itertuples()} == {(114, 64)}  # the tiny preset's 64 px
    turned = clips[clips["name"] == "rotated.mp4"]
    assert {(row.width, row.height) for row in turned.itertuples()} == {(64, 86)}  # portrait, as displayed
    pixels = decoded(turned["path"].iloc[0])[0].to_ndarray(format="rgb24")
    assert np.abs(pixels[-4:, :4].mean((0, 1)) - (255, 255, 0)).max() < 40  # the marker turned to bottom-left
    assert not list(tmp_path.rglob("pwned")) and not (ROOT / "pwned").exists()


def test_two_batches_curate_at_once_under_the_multiprocess_executor(corpus, tmp_path, monkeypatch):
    """Two `dagster asset materialize` runs, one per partition, at the same time in an instance configured
    by the project's dagster.yaml; each runs every asset in a step process of the multiprocess executor."""
    dagster_home, home = tmp_path / "dagster_home", tmp_path / "home"
    dagster_home.mkdir()
    shutil.copy(ROOT / "dagster_home" / "dagster.yaml", dagster_home)
    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home))
    monkeypatch.setenv("LAVIE_HOME", str(home))
    shapes = [video for video in corpus.videos if video.name.startswith("shapes_000")][:2]
    keys = [store.ingest([video], home=home).key for video in shapes]
    instance = dg.DagsterInstance.get()
    assert instance.get_concurrency_config().run_queue_config.max_concurrent_runs == 2
    instance.add_dynamic_partitions("video_batches", keys)

    runs = []
    for key in keys:
        with open(tmp_path / f"{key}.log", "w") as log:
            runs.append(subprocess.Popen([str(BIN / "dagster"), "asset", "materialize", "-m", "pipelines.definitions",
                                          "--select", VIDEO_SELECTION, "--partition", key],
                                         cwd=ROOT, stdout=log, stderr=subprocess.STDOUT))
    for run, key in zip(runs, keys):
        assert run.wait(timeout=600) == 0, (tmp_path / f"{key}.log").read_text()[-3000:]
    records = instance.get_run_records()
    assert sorted(record.dagster_run.tags["dagster/partition"] for record in records) == sorted(keys)
    first, second = records
    assert first.start_time < second.end_time and second.start_time < first.end_time  # they overlapped
    for record in records:
        assert record.dagster_run.status == dg.DagsterRunStatus.SUCCESS
        workers = instance.all_logs(record.dagster_run.run_id, of_type=dg.DagsterEventType.STEP_WORKER_STARTED)
        assert len(workers) == len(VIDEO_ASSETS)  # each asset ran in its own process
    for key in keys:
        folder = home / "curation" / key
        assert len(pd.read_parquet(folder / "clips.parquet")) > 0
        kept = int(pd.read_parquet(folder / "filtered.parquet")["keep"].sum())
        assert int(pd.read_parquet(folder / "shards.parquet")["samples"].sum()) == kept


def test_the_local_pool_neither_imports_nor_starts_ray(corpus, tmp_path):
    """The single-machine default pays nothing for the Ray backend: a batch curated with the local pool, in a fresh
    process that loaded the whole code location, leaves `ray` unimported."""
    script = f"""
import sys
import dagster as dg
from lavie_model.curation import store
from pipelines.definitions import defs
from pipelines.curation import VIDEO_ASSETS, CurationSettings
from pathlib import Path
batch = store.ingest([Path({str(corpus.videos[0].parent)!r})], home=Path({str(tmp_path / "home")!r}))
instance = dg.DagsterInstance.ephemeral()
instance.add_dynamic_partitions("video_batches", [batch.key])
result = dg.materialize(VIDEO_ASSETS, partition_key=batch.key, instance=instance,
                        resources={{"settings": CurationSettings(lavie_home={str(tmp_path / "home")!r})}})
assert result.success
print(sorted(name for name in sys.modules if name.split(".")[0] in ("ray", "dagster_ray")))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env=os.environ | {"LAVIE_HOME": str(tmp_path / "home")})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
