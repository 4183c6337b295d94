"""Inputs from outside that try to leave their folder, block a reader, or swamp memory: symbolic links out of the
inbox or a folder named to `lavie ingest`, FIFOs and devices, captions that are huge or not UTF-8 (sidecars, caption
tables, URL tables), and training shards whose members climb out of the tar or are enormous. Each is refused or cut
with its reason; the good inputs beside it are kept. The files are real: links, FIFOs and tars made here."""

import io
import os
import signal
import struct
import subprocess
import tarfile
import time
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import imageio_ffmpeg
import pandas as pd
import psutil
import pytest

from lavie_model.curation import store
from lavie_model.curation.url_tables import read_url_table, register_url_table
from lavie_model.training.data import check_shards, raw_samples
from pipelines.cli import main as lavie
from pipelines.curation import CurationSettings, probe_and_cut, raw_videos

LONG_AGO = (1_000_000_000, 1_000_000_000)  # settled, for the inbox sensor


@contextmanager
def deadline(seconds: float):
    """Fail, rather than hang, if the block outlasts `seconds`: opening a FIFO for reading blocks until a writer
    comes, and SIGALRM interrupts that open."""

    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s: something opened a FIFO or a device for reading")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def written(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def reasons(batch) -> dict[str, str]:
    return {Path(entry["path"]).name: entry["reason"] for entry in batch.skipped}


@pytest.fixture
def hostile_folder(tmp_path):
    """A folder of "videos" (ingest hashes and copies; it does not decode) beside one outside it:
    good.mp4 and sub/inner.dat hold their own bytes; inside.mp4 links to sub/inner.dat (stays inside); passwd.mp4
    links to /etc/passwd, out.mp4 (relatively) and hop.mp4 (through inside links) to ../outside/secret.mp4,
    etc.mp4 to /etc, broken.mp4 to nothing; pipe.mp4 is a FIFO; good.txt, good.mp4's sidecar, links out."""
    folder, outside = tmp_path / "folder", tmp_path / "outside"
    written(folder / "good.mp4", b"good video bytes")
    written(folder / "sub" / "inner.dat", b"inner video bytes")
    written(outside / "secret.mp4", b"secret bytes from outside")
    written(outside / "secret.txt", b"a caption from outside")
    (folder / "inside.mp4").symlink_to("sub/inner.dat")
    (folder / "passwd.mp4").symlink_to("/etc/passwd")
    (folder / "out.mp4").symlink_to("../outside/secret.mp4")
    (folder / "sub" / "step").symlink_to("../../outside")  # a link to a folder outside, not searched
    (folder / "hop.mp4").symlink_to("sub/step/secret.mp4")
    (folder / "etc.mp4").symlink_to("/etc")
    (folder / "broken.mp4").symlink_to(tmp_path / "nowhere.mp4")
    (folder / "good.txt").symlink_to("../outside/secret.txt")
    os.mkfifo(folder / "pipe.mp4")
    return folder


def test_links_out_of_the_folder_are_refused_with_their_target_and_links_inside_kept(hostile_folder, tmp_path):
    with deadline(10):
        batch = store.ingest([hostile_folder], home=tmp_path / "home")
    assert sorted(f.name for f in batch.files) == ["good.mp4", "inside.mp4"]
    found = reasons(batch)
    inside = os.path.realpath(hostile_folder)
    assert found["passwd.mp4"] == (f"a symbolic link to /etc/passwd, outside {inside} (allow with "
                                   "follow_symlinks_outside)")
    secret = os.path.realpath(tmp_path / "outside" / "secret.mp4")
    assert found["out.mp4"].startswith(f"a symbolic link to {secret}, outside {inside}")
    assert found["hop.mp4"].startswith(f"a symbolic link to {secret}, outside")  # resolved to the end of the chain
    assert found["etc.mp4"].startswith("a symbolic link to /etc, outside")
    assert found["broken.mp4"].startswith(f"a symbolic link to {os.path.realpath(tmp_path / 'nowhere.mp4')}, outside")
    assert found["pipe.mp4"] == "not a regular file: a FIFO, left unopened"
    assert len(found) == 6  # every input accounted for: kept or skipped with its reason
    good = next(f for f in batch.files if f.name == "good.mp4")  # its sidecar links out: the caption is refused
    assert good.caption is None and good.caption_note.startswith("sidecar good.txt refused: a symbolic link to")
    stored = {Path(f.stored_path).read_bytes() for f in batch.files}
    assert stored == {b"good video bytes", b"inner video bytes"}  # nothing from outside in the store
    assert len(list((tmp_path / "home" / "store" / "videos").iterdir())) == 2


def test_following_links_outside_is_a_setting_and_special_files_stay_refused(hostile_folder, tmp_path):
    with deadline(10):
        batch = store.ingest([hostile_folder], home=tmp_path / "home", follow_symlinks_outside=True)
    names = {f.name for f in batch.files}
    assert {"good.mp4", "inside.mp4", "passwd.mp4"} <= names and len(names & {"out.mp4", "hop.mp4"}) == 1
    found = reasons(batch)
    assert found["pipe.mp4"] == "not a regular file: a FIFO, left unopened"
    assert found["etc.mp4"] == "not a regular file: a folder, left unopened"
    assert found["broken.mp4"].startswith("a broken symbolic link")
    assert next(f for f in batch.files if f.name == "good.mp4").caption == "a caption from outside"


def test_special_files_named_alone_are_refused_unopened(tmp_path):
    """A FIFO (blocks its reader until a writer comes) and /dev/zero (never ends), named directly or as a sidecar:
    refused from their type alone, within a deadline that a reading open would miss."""
    os.mkfifo(tmp_path / "pipe.mp4")
    written(tmp_path / "clip.mp4", b"a clip")
    os.mkfifo(tmp_path / "clip.txt")  # its sidecar caption
    with deadline(10):
        batch = store.ingest([tmp_path / "pipe.mp4", Path("/dev/zero"), tmp_path / "clip.mp4"], home=tmp_path / "h")
    found = reasons(batch)
    assert found == {"pipe.mp4": "not a regular file: a FIFO, left unopened",
                     "zero": "not a regular file: a character device, left unopened"}
    [clip] = batch.files
    assert clip.caption is None
    assert clip.caption_note == "sidecar clip.txt refused: not a regular file: a FIFO, left unopened"


def test_lavie_ingest_names_what_it_refused_and_follows_links_when_asked(hostile_folder, data_homes, capsys):
    with deadline(30):
        assert lavie(["ingest", str(hostile_folder)]) == 0
    captured = capsys.readouterr()
    assert f"passwd.mp4: a symbolic link to /etc/passwd, outside {os.path.realpath(hostile_folder)}" in captured.err
    assert "pipe.mp4: not a regular file: a FIFO, left unopened" in captured.err
    assert "caption of" in captured.err and "sidecar good.txt refused" in captured.err
    assert len(store.read_batch(captured.out.strip(), data_homes).files) == 2
    with deadline(30):
        assert lavie(["ingest", "--follow-symlinks-outside", str(hostile_folder)]) == 0
    captured = capsys.readouterr()
    assert {f.name for f in store.read_batch(captured.out.strip(), data_homes).files} >= {"passwd.mp4"}
    assert "pipe.mp4: not a regular file: a FIFO" in captured.err


def test_the_inbox_sensor_accounts_for_fifos_and_links_and_refuses_those_leaving_the_inbox(tmp_path):
    from pipelines.sensors import inbox_sensor

    home, outside = tmp_path / "home", tmp_path / "outside"
    inbox, tables = home / "inbox" / "videos", home / "inbox" / "tables"
    written(inbox / "good.mp4", b"good video bytes")
    written(inbox / "real" / "inner.dat", b"inner video bytes")
    written(outside / "secret.mp4", b"secret bytes")
    written(outside / "urls.csv", b"url,caption\nhttp://127.0.0.1:9/a.mp4,a\n")
    (inbox / "inside.mp4").symlink_to("real/inner.dat")
    (inbox / "out.mp4").symlink_to(outside / "secret.mp4")
    (inbox / "broken.mp4").symlink_to(tmp_path / "nowhere.mp4")
    os.mkfifo(inbox / "pipe.mp4")
    tables.mkdir(parents=True)
    (tables / "urls.csv").symlink_to(outside / "urls.csv")
    os.mkfifo(tables / "pipe.csv")
    for path in (inbox / "good.mp4", inbox / "real" / "inner.dat", outside / "secret.mp4", outside / "urls.csv",
                 inbox / "pipe.mp4", tables / "pipe.csv"):
        os.utime(path, LONG_AGO)  # utime on a FIFO's path opens nothing
    os.utime(inbox / "broken.mp4", LONG_AGO, follow_symlinks=False)

    def tick(settings, cursor=None):
        context = dg.build_sensor_context(instance=dg.DagsterInstance.ephemeral(), cursor=cursor,
                                          resources={"settings": settings})
        with deadline(30):
            return inbox_sensor(context)

    result = tick(CurationSettings(lavie_home=str(home)))
    [request] = result.run_requests  # the video batch; no URL table registered
    batch = store.read_batch(request.partition_key, home)
    assert sorted(f.name for f in batch.files) == ["good.mp4", "inside.mp4"]
    found = reasons(batch)
    assert found["out.mp4"].startswith(f"a symbolic link to {os.path.realpath(outside / 'secret.mp4')}, outside "
                                       f"{os.path.realpath(inbox)}")
    assert found["pipe.mp4"] == "not a regular file: a FIFO, left unopened"
    assert found["broken.mp4"].startswith("a symbolic link to")
    assert not (home / "tables").exists()
    again = tick(CurationSettings(lavie_home=str(home)), result.cursor)
    assert not again.run_requests  # each refusal is reported once, not at every tick
    allowed = tick(CurationSettings(lavie_home=str(home), follow_symlinks_outside=True))  # a fresh cursor
    keys = {r.partition_key for r in allowed.run_requests}
    assert any(key.startswith("urls-") for key in keys)  # the linked table, now followed
    [video_batch] = [key for key in keys if key.startswith("videos-")]
    assert "out.mp4" in {f.name for f in store.read_batch(video_batch, home).files}


def test_sidecar_captions_that_are_huge_or_not_utf8_are_cut_or_left_out_with_the_reason(tmp_path):
    words = " ".join(["a", "red", "square", "moving", "left"] * 50_000).encode()
    folder = tmp_path / "in"
    written(folder / "latin1.mp4", b"video 1")
    written(folder / "latin1.txt", "un carré rouge".encode("latin-1"))
    written(folder / "huge.mp4", b"video 2")
    written(folder / "huge.txt", words[:1 << 20])  # 1 MB
    written(folder / "long.mp4", b"video 3")
    written(folder / "long.txt", words[:5000] + b"\n")  # under the file cap, over the caption cap
    written(folder / "fine.mp4", b"video 4")
    written(folder / "fine.txt", "\ufeffun carré rouge\n".encode())  # UTF-8 with a byte order mark
    batch = store.ingest([folder], home=tmp_path / "home")
    files = {f.name: f for f in batch.files}
    assert len(files) == 4 and not batch.skipped
    assert files["latin1.mp4"].caption is None
    assert files["latin1.mp4"].caption_note == ("sidecar latin1.txt: not UTF-8 (byte 0xe9 at offset 7): caption "
                                                "left out")
    huge = files["huge.mp4"]
    assert 1000 < len(huge.caption) <= store.MAX_CAPTION_CHARS and words.decode().startswith(huge.caption + " ")
    assert huge.caption_note == (f"sidecar huge.txt: a file of 1,048,576 bytes, read to 65,536: caption cut to "
                                 f"{len(huge.caption):,} characters")
    long = files["long.mp4"]
    assert len(long.caption) <= store.MAX_CAPTION_CHARS and words.decode().startswith(long.caption + " ")
    whole = len(words[:5000].decode().strip())
    assert long.caption_note == (f"sidecar long.txt: cut to {len(long.caption):,} of {whole:,} characters "
                                 "(MAX_CAPTION_CHARS)")
    assert (files["fine.mp4"].caption, files["fine.mp4"].caption_note) == ("un carré rouge", None)
    again = store.read_batch(batch.key, tmp_path / "home")
    assert {f.name: f.caption_note for f in again.files} == {name: f.caption_note for name, f in files.items()}


def test_caption_and_url_table_cells_that_are_huge_or_not_utf8_do_not_stop_the_table(tmp_path):
    huge = b" ".join([b"word"] * 250_000)  # a 1.25 MB cell (the csv module's default field limit is 128 kB)
    written(tmp_path / "a.mp4", b"video a")
    written(tmp_path / "b.mp4", b"video b")
    written(tmp_path / "c.mp4", b"video c")
    captions = written(tmp_path / "captions.csv",
                       b"path,caption\na.mp4,un carr\xe9 rouge\nb.mp4," + huge + b"\nc.mp4,a blue square\n")
    batch = store.ingest([tmp_path / name for name in ("a.mp4", "b.mp4", "c.mp4")], home=tmp_path / "home",
                         captions=captions)
    files = {f.name: f for f in batch.files}
    assert (files["a.mp4"].caption, files["a.mp4"].caption_note) == (
        None, "captions table: not UTF-8 (byte 0xe9 at offset 7): caption left out")
    assert len(files["b.mp4"].caption) <= store.MAX_CAPTION_CHARS and files["b.mp4"].caption_source == str(captions)
    assert files["b.mp4"].caption_note.startswith(f"captions table: cut to {len(files['b.mp4'].caption):,} of "
                                                  f"{len(huge):,} characters")
    assert (files["c.mp4"].caption, files["c.mp4"].caption_note) == ("a blue square", None)

    table = written(tmp_path / "urls.csv", b"url,caption\nhttp://127.0.0.1:9/caf\xe9.mp4,un carr\xe9 rouge\n"
                    b"http://127.0.0.1:9/b.mp4," + huge + b"\nhttp://127.0.0.1:9/c.mp4,a blue square\n")
    rows = read_url_table(table)
    assert list(rows["url"]) == ["http://127.0.0.1:9/caf%E9.mp4", "http://127.0.0.1:9/b.mp4",
                                 "http://127.0.0.1:9/c.mp4"]
    assert rows["caption"][0] == "" and rows["caption_note"][0].startswith("not UTF-8 (byte 0xe9 at offset 7)")
    assert len(rows["caption"][1]) <= store.MAX_CAPTION_CHARS and rows["caption_note"][1].startswith("cut to")
    assert (rows["caption"][2], rows["caption_note"][2]) == ("a blue square", None)
    [key] = register_url_table(table, tmp_path / "home")  # a chunk table holds no undecodable text
    assert pd.read_parquet(tmp_path / "home" / "tables" / f"{key}.parquet")["caption_note"].notna().sum() == 2


def tar_of(path: Path, members) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def header_only_tar(path: Path, name: str, size: int) -> Path:
    """A tar whose one member's header declares `size` bytes and holds none: it costs nothing to make, and
    reading the member would try to take it all."""
    info = tarfile.TarInfo(name)
    info.size = size
    path.write_bytes(info.tobuf(format=tarfile.GNU_FORMAT))
    return path


@pytest.fixture
def hostile_shards(tmp_path):
    good = [("000.mp4", b"mp4 bytes"), ("000.txt", b"a red square"), ("000.json", b"{}")]
    return {
        "good": tar_of(tmp_path / "good.tar", good),
        "climbs": tar_of(tmp_path / "climbs.tar", good + [("../evil.txt", b"out of the shard")]),
        "deep": tar_of(tmp_path / "deep.tar", good + [("001/../../evil.txt", b"out of the shard")]),
        "absolute": tar_of(tmp_path / "absolute.tar", good + [("/abs.txt", b"anywhere")]),
        "enormous": header_only_tar(tmp_path / "enormous.tar", "001.mp4", 300 << 30),
        "big": tar_of(tmp_path / "big.tar", good + [("001.mp4", b"\0" * (1 << 20))]),
    }


def test_shard_members_with_absolute_or_climbing_names_or_too_many_bytes_are_refused_by_name(hostile_shards,
                                                                                             monkeypatch):
    check_shards([hostile_shards["good"], hostile_shards["big"]])  # 1 MB is under the default limit
    assert [s["__key__"] for s in raw_samples(hostile_shards["good"])] == ["000"]
    expected = {
        "climbs": "member '../evil.txt' refused: a path with '..'",
        "deep": "member '001/../../evil.txt' refused: a path with '..'",
        "absolute": "member '/abs.txt' refused: an absolute path",
        "enormous": "member '001.mp4' refused: 322,122,547,200 bytes, over the limit of 268,435,456 (raise it "
                    "with LAVIE_MAX_MEMBER_MB)",
    }
    for name, message in expected.items():
        shard = hostile_shards[name]
        for read in (lambda: check_shards([hostile_shards["good"], shard]), lambda: list(raw_samples(shard))):
            with pytest.raises(ValueError) as error:
                read()
            assert str(error.value) == f"shard {shard}: {message}"
    monkeypatch.setenv("LAVIE_MAX_MEMBER_MB", "0.5")  # the limit is a setting, read in every process
    with pytest.raises(ValueError, match=r"member '001.mp4' refused: 1,048,576 bytes, over the limit of 524,288"):
        check_shards([hostile_shards["big"]])
    with pytest.raises(ValueError, match=r"member '001.mp4' refused: 1,048,576 bytes"):
        list(raw_samples(hostile_shards["big"]))


def test_lavie_train_refuses_a_shard_from_elsewhere_before_training(hostile_shards, tiny_folder, tmp_path, capsys):
    from lavie_model.cli import main

    for name in ("climbs", "enormous"):
        args = ["train", "--stage", "base", "--model", str(tiny_folder), "--videos",
                f"{hostile_shards['good']},{hostile_shards[name]}", "--output", str(tmp_path / "run")]
        assert main(args) == 1
        assert f"shard {hostile_shards[name]}: member" in capsys.readouterr().err
        assert not (tmp_path / "run").exists()  # nothing started


# Videos that are enormous, lie in their headers, or hold a worker too long or with too much memory (issue 38 items 1
# and 2): each quarantined with its reason through the real probe_and_cut step, the good files of its batch kept.

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()
X264 = ("-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p")


def lavfi(path: Path, source: str, *arguments: str) -> Path:
    """A video from one of ffmpeg's generated sources (an argument list, no shell)."""
    subprocess.run([FFMPEG, "-y", "-loglevel", "error", "-f", "lavfi", "-i", source, *X264, *arguments, str(path)],
                   check=True, capture_output=True)
    return path


def declaring(source: Path, seconds: float, path: Path) -> Path:
    """A Matroska file whose Segment Duration (the header's) says `seconds`, its frames unchanged."""
    data = bytearray(source.read_bytes())
    at = data.find(b"\x44\x89\x88")  # the Duration element, an 8-byte float in TimecodeScale units (ms)
    assert at > 0, f"no 8-byte Duration element in {source}"
    struct.pack_into(">d", data, at + 3, seconds * 1000.0)
    return written(path, bytes(data))


def many_streams(source: Path, count: int, path: Path) -> Path:
    """`source`'s video stream `count` times over in one Matroska file."""
    maps = [argument for _ in range(count) for argument in ("-map", "0:v")]
    subprocess.run([FFMPEG, "-y", "-loglevel", "error", "-i", str(source), *maps, "-c", "copy", str(path)],
                   check=True, capture_output=True)
    return path


def curate(home: Path, files: list[Path], **settings) -> dict:
    """`files` ingested as a batch and taken through raw_videos and probe_and_cut (probed_videos and video_clips)
    with `settings`; the tables, the clip files, the run's metadata and its wall time."""
    batch = store.ingest(files, home=home)
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("video_batches", [batch.key])
    started = time.perf_counter()
    result = dg.materialize([raw_videos, probe_and_cut], partition_key=batch.key, instance=instance,
                            resources={"settings": CurationSettings(lavie_home=str(home), preset="tiny", **settings)})
    seconds = time.perf_counter() - started
    assert result.success
    folder = home / "curation" / batch.key
    tables = {name: pd.read_parquet(folder / f"{name}.parquet") for name in ("raw", "probe", "quarantine", "clips")}
    names = dict(zip(tables["raw"]["sha256"], tables["raw"]["name"]))
    metadata = {event.asset_key.path[-1]: event.materialization.metadata
                for event in result.get_asset_materialization_events()}
    clip_dir = home / "clips" / batch.key
    return {"tables": tables, "names": names, "metadata": metadata, "seconds": seconds,
            "reasons": {row.name: row.reason for row in tables["quarantine"].itertuples()},
            "clip_files": sorted(path.name for path in clip_dir.iterdir()) if clip_dir.is_dir() else []}


def assert_accounted_for(curated: dict, kept: set[str]) -> None:
    """Every file kept or quarantined; the kept ones (by name) have clips; no clip file outside the clips table,
    no partial folder left."""
    tables = curated["tables"]
    assert set(tables["probe"]["name"]) == kept
    assert len(tables["probe"]) + len(tables["quarantine"]) == len(tables["raw"])
    assert {curated["names"][sha] for sha in tables["clips"]["source_sha256"]} == kept
    assert curated["clip_files"] == sorted(Path(path).name for path in tables["clips"]["path"])


@pytest.fixture(scope="module")
def good_videos(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("good")
    return [lavfi(folder / "good_a.mp4", "testsrc2=size=160x120:rate=10:duration=2"),
            lavfi(folder / "good_b.mp4", "testsrc2=size=320x240:rate=25:duration=2")]


def test_files_beyond_a_limit_are_quarantined_from_their_header_with_the_limit_named(good_videos, tmp_path):
    folder = tmp_path / "hostile"
    folder.mkdir()
    huge = lavfi(folder / "huge.mp4", "color=c=blue:size=12000x12000:rate=1:duration=1", "-crf", "51")
    one_second = lavfi(folder / "one_second.mkv", "testsrc2=size=160x120:rate=25:duration=1")
    hours = declaring(one_second, 2 * 3600, folder / "declares_2h.mkv")
    too_long = declaring(one_second, 20 * 3600, folder / "declares_20h.mkv")
    fast = lavfi(folder / "fast.mp4", "testsrc2=size=64x64:rate=2000:duration=1")
    streams = many_streams(one_second, 70, folder / "streams.mkv")
    one_second.unlink()
    assert 100_000 < huge.stat().st_size < 1_000_000  # a few hundred kB that decode to 216 MB a frame
    curated = curate(tmp_path / "home", [*good_videos, folder])
    print(f"\nheader limits: {len(curated['tables']['raw'])} files in {curated['seconds']:.1f} s, a worker added at "
          f"most {curated['metadata']['probed_videos']['worker_peak_added_mb'].value} MB")
    assert curated["reasons"] == {
        "huge.mp4": "frame too large: 12000x12000 = 144,000,000 pixels, over max_frame_pixels = 35,389,440",
        "declares_20h.mkv": "too long: the header declares 72,000 s, over max_duration_seconds = 43,200",
        "declares_2h.mkv": "inconsistent header: it declares 7,200.00 s of video, 1.00 s decode",
        "fast.mp4": "frame rate too high: the header declares 2,000.0 fps, over max_frame_rate = 1,000",
        "streams.mkv": "too many streams: 70, over max_streams = 64",
    }
    assert_accounted_for(curated, {"good_a.mp4", "good_b.mp4"})
    # the figure docs/guides/curation-limits.md states: the 12000x12000 header alone decodes a 216 MB frame
    assert curated["metadata"]["probed_videos"]["worker_peak_added_mb"].value < 512


def test_limits_are_settings_that_admit_what_they_name(good_videos, tmp_path):
    one_second = lavfi(tmp_path / "one_second.mkv", "testsrc2=size=160x120:rate=25:duration=1")
    streams = many_streams(one_second, 70, tmp_path / "streams.mkv")
    curated = curate(tmp_path / "home", [good_videos[1], streams], max_streams=70, max_frame_pixels=320 * 240 - 1)
    assert curated["reasons"] == {
        "good_b.mp4": "frame too large: 320x240 = 76,800 pixels, over max_frame_pixels = 76,799"}
    assert_accounted_for(curated, {"streams.mkv"})


def test_a_decode_past_its_time_or_memory_limit_is_quarantined_its_worker_replaced_and_the_batch_goes_on(
        good_videos, tmp_path):
    """Limits low enough for ordinary files to break them, one limit per batch (a file that breaks both may meet
    either first): 1.5 s plus 0.01 s per second of video (the good files take a fraction of a second, 90 s of
    640x360 about 3 s), then 160 MB with the frame-size limit lifted, against a 12000x12000 frame (one decoded
    frame alone needs 216 MB; an 8K file's peak sat near the ceiling and was sometimes kept)."""
    folder = tmp_path / "heavy"
    folder.mkdir()
    lavfi(folder / "long.mp4", "testsrc2=size=640x360:rate=25:duration=90")
    huge = lavfi(folder / "huge.mp4", "color=c=green:size=12000x12000:rate=1:duration=1", "-crf", "51")
    before = {process.pid for process in psutil.Process().children(recursive=True)}
    timed = curate(tmp_path / "timed", [good_videos[0], folder / "long.mp4"], timeout_floor_seconds=1.5,
                   timeout_per_video_second=0.01, workers=2)
    capped = curate(tmp_path / "capped", [good_videos[1], huge], max_frame_pixels=10**9, worker_memory_mb=160,
                    workers=2)
    print(f"\ntime limit: {timed['seconds']:.1f} s, memory limit: {capped['seconds']:.1f} s")
    assert timed["reasons"] == {"long.mp4": "timed out after 2.4 s"}
    assert capped["reasons"] == {"huge.mp4": "over the memory limit of 160 MB"}
    for curated, kept in ((timed, good_videos[0].name), (capped, good_videos[1].name)):
        assert_accounted_for(curated, {kept})  # the killed workers' partial clips are gone
    assert {process.pid for process in psutil.Process().children(recursive=True)} <= before  # no worker left
    assert timed["metadata"]["video_clips"]["stale_partials_removed"].value >= 1
