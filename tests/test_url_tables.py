"""URL tables end to end: `lavie ingest --table`, downloaded_videos against a real HTTP server on 127.0.0.1, then
the curation assets cutting one clip per span, every row accounted for, lineage back to the URL and span."""

from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from lavie_model.curation.lineage import lineage
from lavie_model.curation.url_tables import TableColumns, read_url_table, register_url_table
from pipelines.cli import main as lavie
from pipelines.curation import VIDEO_ASSETS, CurationSettings, DownloadSettings, downloaded_videos
from tests.test_curation_core import BLUE, GREEN, RED, solid_frames, write_video
from tests.test_download import Server

class Videos(Server):
    """Serves two real videos: /a.mp4, 6 s at 10 fps (2 s each of red, blue, green), and /b.mp4, 3 s of green."""

    def __init__(self, a: bytes, b: bytes):
        super().__init__(a)
        self.b = b

    def route_a(self, handler, count):
        self.send(handler, self.video)

    def route_b(self, handler, count):
        self.send(handler, self.b)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    a = write_video(root / "a.mp4", np.concatenate([solid_frames(20, RED), solid_frames(20, BLUE),
                                                    solid_frames(20, GREEN)]))
    b = write_video(root / "b.mp4", solid_frames(30, GREEN))
    return Path(a).read_bytes(), Path(b).read_bytes()


def test_a_url_table_is_downloaded_and_cut_one_clip_per_span(videos, tmp_path, capsys, data_homes):
    home = data_homes
    with Videos(*videos) as server:
        rows = [  # WebVid-like column names; spans in seconds
            (server.url("a.mp4"), "a red square", 0.0, 2.0),
            (server.url("a.mp4"), "a blue square", 2.0, 4.0),
            (server.url("a.mp4"), "a green square", 4.05, 9.0),   # runs past the end: cut at the end
            (server.url("a.mp4"), "too short", 1.0, 1.5),
            (server.url("a.mp4"), "after the end", 7.0, 8.0),
            (server.url("b.mp4"), "a whole green clip", "", ""),  # no span: shots as for files
            (server.url("missing.mp4"), "gone", 0.0, 1.0),
            (server.url("page.mp4"), "a page", 0.0, 1.0),
            ("ftp://127.0.0.1/a.mp4", "wrong scheme", 0.0, 1.0),
            (server.url("a.mp4"), "backwards", 3.0, 2.0),
            (server.url("to-other-loopback"), "redirected off the allowed server", 0.0, 1.0),
            (server.url("a.mp4").replace("127.0.0.1", "[::1]"), "loopback, not allowed", 0.0, 1.0),
        ]
        url_a = server.url("a.mp4")
        table = tmp_path / "webvid.csv"
        pd.DataFrame(rows, columns=["contentUrl", "name", "t0", "t1"]).to_csv(table, index=False)
        with pytest.raises(ValueError, match="no column 'url'"):
            read_url_table(table)
        assert lavie(["ingest", "--table", str(table), "--url-column", "contentUrl", "--caption-column", "name",
                      "--start-column", "t0", "--end-column", "t1", "--chunk-size", "100"]) == 0
        (key,) = capsys.readouterr().out.split()
        instance = dg.DagsterInstance.get()
        assert key in instance.get_dynamic_partitions("url_tables")
        fast = DownloadSettings(timeout=2.0, retries=1, backoff=0.05, allow_networks=["127.0.0.1/32"])
        settings = CurationSettings(lavie_home=str(home))
        result = dg.materialize([downloaded_videos], partition_key=key, instance=instance,
                                run_config={"ops": {"downloaded_videos": {"config": fast.model_dump()}}},
                                resources={"settings": settings})
        assert result.success
        metadata = result.asset_materializations_for_node("downloaded_videos")[0].metadata
        downloads = pd.read_parquet(home / "curation" / key / "downloads.parquet")
        assert list(downloads["row"]) == list(range(len(rows)))  # every row accounted for, in order
        reasons = dict(zip(downloads["caption"], downloads["reason"]))
        assert "HTTP 404" in reasons["gone"] and "not a video" in reasons["a page"]
        assert "not an http or https URL" in reasons["wrong scheme"] and "bad span" in reasons["backwards"]
        quarantine = pd.read_parquet(home / "curation" / key / "quarantine.parquet")
        assert sorted(quarantine["row"]) == [6, 7, 8, 9, 10, 11]
        assert "refused: 127.0.0.2 is a loopback address" in reasons["redirected off the allowed server"]
        assert "refused: ::1 is a loopback address" in reasons["loopback, not allowed"]
        batch = metadata["video_batch"].value
        assert batch in instance.get_dynamic_partitions("video_batches") and metadata["videos"].value == 2
        hits = dict(server.hits)
        assert hits["/a.mp4"] == 1  # one download per URL however many rows name it

        # a rerun fetches nothing it already has; the bytes are in a batch already
        again = dg.materialize([downloaded_videos], partition_key=key, instance=instance,
                               run_config={"ops": {"downloaded_videos": {"config": fast.model_dump()}}},
                               resources={"settings": settings})
        assert again.success and server.hits["/a.mp4"] == 1 and server.hits["/missing.mp4"] == 2
        rerun = pd.read_parquet(home / "curation" / key / "downloads.parquet")
        assert all(s.startswith("already ingested in batch") for s in rerun.loc[rerun["ok"], "status"])

    curated = dg.materialize(VIDEO_ASSETS, partition_key=batch, instance=instance,
                             resources={"settings": CurationSettings(lavie_home=str(home), preset="tiny")})
    assert curated.success
    clips = pd.read_parquet(home / "curation" / batch / "captions.parquet")
    drops = pd.read_parquet(home / "curation" / batch / "clip_drops.parquet")
    spanned = clips[clips["caption_source"] == "table span"].sort_values("start_frame")
    assert list(spanned["caption"]) == ["a red square", "a blue square", "a green square"]
    assert [(r.start_frame, r.end_frame) for r in spanned.itertuples()] == [(0, 20), (20, 40), (41, 60)]
    assert sorted(drops["reason"].str.split(":").str[0]) == ["span 7-8 s starts after the video ends (6.00 s)",
                                                             "too short"]
    whole = clips[clips["caption_source"] != "table span"]
    assert list(whole["caption"]) == ["a whole green clip"]
    kept = pd.read_parquet(home / "curation" / batch / "filtered.parquet")
    kept_spans = spanned[spanned["clip_id"].isin(kept.loc[kept["keep"].astype(bool), "clip_id"])]
    assert len(kept_spans)
    clip = kept_spans.iloc[0]
    trace = lineage(clip["clip_id"], home)
    assert trace["source_file"] == url_a
    row = ["a red square", "a blue square", "a green square"].index(clip["caption"])
    assert trace["span"].startswith(f"{rows[row][2]:g}-{rows[row][3]:g} s, row {row} of the URL table")


def test_register_url_table_splits_chunks_by_content(tmp_path):
    table = tmp_path / "t.parquet"
    pd.DataFrame({"url": [f"https://example.invalid/{i}.mp4" for i in range(5)],
                  "caption": [f"clip {i}" for i in range(5)]}).to_parquet(table)
    keys = register_url_table(table, tmp_path / "home", TableColumns(), chunk_size=2)
    assert len(keys) == 3 and len(set(keys)) == 3
    assert register_url_table(table, tmp_path / "home", TableColumns(), chunk_size=2) == keys  # same rows, same keys
    chunk = pd.read_parquet(tmp_path / "home" / "tables" / f"{keys[-1]}.parquet")
    assert list(chunk["row"]) == [4] and chunk["start"].isna().all()
    bad = tmp_path / "bad.csv"
    bad.write_text("url,caption,start\nhttps://example.invalid/a.mp4,a,1\n")
    with pytest.raises(ValueError, match="spans need both"):
        read_url_table(bad)


def test_a_table_dropped_into_the_inbox_is_downloaded_then_curated(videos, tmp_path):
    import os

    from pipelines.sensors import inbox_sensor

    inbox = tmp_path / "inbox" / "tables"
    inbox.mkdir(parents=True)
    settings = CurationSettings(lavie_home=str(tmp_path))
    instance = dg.DagsterInstance.ephemeral()
    with Videos(*videos) as server:
        table = inbox / "urls.csv"
        pd.DataFrame({"url": [server.url("b.mp4")], "caption": ["a green clip"]}).to_csv(table, index=False)
        os.utime(table, (1_000_000_000, 1_000_000_000))  # settled long ago
        first = inbox_sensor(dg.build_sensor_context(instance=instance, resources={"settings": settings}))
        (request,) = first.run_requests
        assert request.job_name == "download_videos"
        assert first.dynamic_partitions_requests[0].partition_keys == [request.partition_key]
        instance.add_dynamic_partitions("url_tables", [request.partition_key])
        waiting = inbox_sensor(dg.build_sensor_context(instance=instance, cursor=first.cursor,
                                                       resources={"settings": settings}))
        assert not waiting.run_requests  # the download has not run yet
        allowed = {"ops": {"downloaded_videos": {"config": {"allow_networks": ["127.0.0.1/32"]}}}}
        assert dg.materialize([downloaded_videos], partition_key=request.partition_key, instance=instance,
                              run_config=allowed, resources={"settings": settings}).success
    then = inbox_sensor(dg.build_sensor_context(instance=instance, cursor=waiting.cursor,
                                                resources={"settings": settings}))
    (curate,) = then.run_requests
    assert curate.job_name == "curate_videos" and curate.partition_key in instance.get_dynamic_partitions("video_batches")
    assert not inbox_sensor(dg.build_sensor_context(instance=instance, cursor=then.cursor,
                                                    resources={"settings": settings})).run_requests
