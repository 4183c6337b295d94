"""Scores, filtering and WebDataset shards on real files: shape videos, a tiny random CLIP, real tar shards."""

import hashlib
import io
import json
import math
import os
import tarfile

import av
import numpy as np
import open_clip
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import webdataset as wds
from PIL import Image
from safetensors.torch import save_file

from lavie_model.curation.clips import ClipConfig, probe_and_cut
from lavie_model.curation.demo_corpus import Scene, render, write_mp4
from lavie_model.curation.filtering import FilterConfig, decide
from lavie_model.curation.scores import TINY_CLIP, ScoreConfig, load_clip, read_clip, sample_indices, score_clips
from lavie_model.curation.shards import verify_shards, write_image_shards, write_shards
from lavie_model.curation.writer import ClipMeasure, decode_still, middle_indices

FPS, FRAMES = 10, 20
SCENES = {
    "moving_circle": Scene("circle", "red", "gray", "right", 0.15, 0.5),
    "static_circle": Scene("circle", "red", "gray", None, 0.15, 0.5),
    "moving_square": Scene("square", "blue", "white", "up", 0.15, 0.4),
}


def clip_row(clip_id, path, caption, frames=FRAMES):
    """A row of the clips table, as the clip and caption steps give it."""
    return {
        "clip_id": clip_id, "source_sha256": "0" * 64, "source_path": str(path), "shot": 0, "start_frame": 0,
        "end_frame": frames, "start_time": 0.0, "end_time": frames / FPS, "fps": float(FPS), "width": 128,
        "height": 128, "frame_count": frames, "path": str(path), "caption": caption, "caption_source": "source",
    }


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    rows = []
    for clip_id, scene in SCENES.items():
        path = folder / f"{clip_id}.mp4"
        write_mp4(render(scene, FRAMES), path, FPS)
        rows.append(clip_row(clip_id, path, scene.caption()))
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def scored(clips):
    return score_clips(clips)


# Scores


def test_motion_is_higher_for_a_moving_shape(scored):
    motion = scored.set_index("clip_id").motion
    assert motion.moving_circle > 0.05 and motion.moving_square > 0.05
    assert motion.static_circle < 0.005
    assert min(motion.moving_circle, motion.moving_square) > FilterConfig().min_motion > motion.static_circle


def test_clip_scores_have_their_shapes_and_are_reproduced(clips, scored):
    assert list(scored.clip_id) == list(clips.clip_id)
    dim = TINY_CLIP["embed_dim"]
    for row in scored.itertuples():
        assert row.clip_embedding.dtype == np.float32 and row.clip_embedding.shape == (dim,)
        assert np.linalg.norm(row.clip_embedding) == pytest.approx(1, abs=1e-5)
        assert -1 <= row.clip_score <= 1
        assert (row.width, row.height, row.duration) == (128, 128, FRAMES / FPS)
    assert set(scored.clip_model) == {"tiny-random"} and set(scored.aesthetic_model) == {"none"}
    assert scored.aesthetic.isna().all()
    again = score_clips(clips, ScoreConfig(batch_size=2))  # other batches, same numbers
    assert np.allclose(np.stack(again.clip_embedding), np.stack(scored.clip_embedding), atol=1e-6)
    assert np.allclose(again.clip_score, scored.clip_score, atol=1e-6)
    assert again.motion.tolist() == scored.motion.tolist()


def test_clip_score_is_the_mean_caption_frame_cosine(clips, scored):
    row = clips.iloc[0]
    assert sample_indices(FRAMES, 3) == [0, 10, 19]  # first, middle, last
    model, preprocess, tokenizer, _ = load_clip(ScoreConfig())
    frames, _ = read_clip(row.path, FRAMES, 3, 64)
    with torch.no_grad():
        images = F.normalize(model.encode_image(torch.stack([preprocess(frame) for frame in frames])), dim=-1)
        text = F.normalize(model.encode_text(tokenizer([row.caption])), dim=-1)[0]
    assert scored.clip_score[0] == pytest.approx(float((images @ text).mean()), abs=1e-5)
    assert np.allclose(scored.clip_embedding[0], F.normalize(images.mean(0), dim=0).numpy(), atol=1e-5)


def test_clips_written_in_one_decode_give_the_scores_of_a_full_decode(tmp_path):
    """probe_and_cut measures motion and keeps the stills CLIP sees as it encodes; score_clips with them decodes no
    clip and runs no optical flow, and gives about the scores of a full decode (the writer sees the frames before
    compression)."""
    static_square = Scene("square", "blue", "white", None, 0.15, 0.4)
    frames = np.concatenate([render(SCENES["moving_circle"], 30), render(static_square, 30)])
    write_mp4(frames, tmp_path / "source.mp4", FPS)
    _, result = probe_and_cut(tmp_path / "source.mp4", tmp_path / "clips", config=ClipConfig(short_side=64),
                              measure=ScoreConfig().measure())
    assert len(result.clips) == 2 and set(result.motion) == set(result.stills) == {c.clip_id for c in result.clips}
    table = pd.DataFrame([vars(clip) for clip in result.clips]).assign(caption="a red circle on grey")
    full = score_clips(table)
    for clip in result.clips:
        os.rename(clip.path, clip.path + ".away")  # nothing is read from the clip files
    stored = score_clips(table, motion=result.motion, stills=result.stills)
    assert np.allclose(np.stack(stored.clip_embedding), np.stack(full.clip_embedding), atol=0.03)
    assert np.allclose(stored.clip_score, full.clip_score, atol=0.03)
    assert stored.motion.tolist() == [result.motion[clip.clip_id] for clip in result.clips]
    assert np.allclose(stored.motion, full.motion, rtol=0.1, atol=0.01)
    moving, static = stored.motion
    assert moving > FilterConfig().min_motion > static


def test_the_writers_stills_are_the_sampled_clip_frames(tmp_path):
    """The stills are the clip frames CLIP and the captioner sample, each closest to its own frame of the clip."""
    write_mp4(render(SCENES["moving_circle"], 40), tmp_path / "source.mp4", FPS)
    measure = ClipMeasure(score_frames=3, caption_frames=2)
    _, result = probe_and_cut(tmp_path / "source.mp4", tmp_path / "clips", config=ClipConfig(short_side=64),
                              measure=measure)
    (clip,) = result.clips
    decoded = np.stack([frame.to_ndarray(format="rgb24") for frame in av.open(clip.path).decode(video=0)])
    stills = result.stills[clip.clip_id]
    assert set(stills) == set(sample_indices(40, 3)) | set(middle_indices(40, 2)) == {0, 10, 20, 30, 39}
    for index, data in stills.items():
        still = np.asarray(decode_still(data)).astype(float)  # (h, w, 3)
        errors = ((decoded - still) ** 2).mean(axis=(1, 2, 3))  # against every frame of the clip
        assert errors.argmin() == index and 10 * np.log10(255**2 / errors[index]) > 30


def test_a_clip_without_caption_has_no_clip_score(clips):
    scores = score_clips(clips.iloc[:1].assign(caption=None))
    assert math.isnan(scores.clip_score[0]) and scores.clip_embedding[0].shape == (TINY_CLIP["embed_dim"],)


def test_clip_weights_load_from_a_local_checkpoint(clips, scored, tmp_path):
    """The tiny config registered as an open_clip model and its weights saved: the same scores come back."""
    (tmp_path / "tiny-test-clip.json").write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(tmp_path / "tiny-test-clip.json")
    torch.save(load_clip(ScoreConfig())[0].state_dict(), tmp_path / "weights.pt")
    config = ScoreConfig(clip_model="tiny-test-clip", clip_weights=str(tmp_path / "weights.pt"))
    loaded = score_clips(clips.iloc[:1], config)
    assert loaded.clip_model[0] == "tiny-test-clip:weights.pt"
    assert np.allclose(loaded.clip_embedding[0], scored.clip_embedding[0], atol=1e-6)
    assert loaded.clip_score[0] == pytest.approx(scored.clip_score[0], abs=1e-6)


def test_missing_weights_are_named(clips, tmp_path):
    with pytest.raises(FileNotFoundError, match="CLIP weights for ViT-L-14.*nothing.bin"):
        score_clips(clips, ScoreConfig(clip_weights=str(tmp_path / "nothing.bin")))
    with pytest.raises(FileNotFoundError, match="aesthetic head weights.*head.pth"):
        score_clips(clips, ScoreConfig(aesthetic_weights=str(tmp_path / "head.pth")))


def laion_mlp(dim):
    """The LAION aesthetic MLP's layout (linear layers at 0, 2, 4, 6, 7 with dropout between), made small."""
    return torch.nn.Sequential(
        torch.nn.Linear(dim, 32), torch.nn.Dropout(0.2), torch.nn.Linear(32, 16), torch.nn.Dropout(0.2),
        torch.nn.Linear(16, 8), torch.nn.Dropout(0.1), torch.nn.Linear(8, 4), torch.nn.Linear(4, 1))


@pytest.mark.parametrize("kind", ["linear .pth", "LAION MLP .safetensors"])
def test_aesthetic_head_scores_the_clip_embedding(clips, scored, tmp_path, kind):
    torch.manual_seed(1)
    dim = TINY_CLIP["embed_dim"]
    if kind == "linear .pth":
        head, path = torch.nn.Linear(dim, 1), tmp_path / "linear.pth"
        torch.save(head.state_dict(), path)
    else:
        head, path = laion_mlp(dim), tmp_path / "mlp.safetensors"
        save_file({f"layers.{name}": value for name, value in head.state_dict().items()}, path)
    scores = score_clips(clips, ScoreConfig(aesthetic_weights=str(path)))
    embeddings = torch.from_numpy(np.stack(scored.clip_embedding))  # (clips, dim)
    with torch.no_grad():
        expected = head.eval()(embeddings)[:, 0]
    assert np.allclose(scores.aesthetic, expected.numpy(), atol=1e-5)
    assert set(scores.aesthetic_model) == {path.name}


def test_aesthetic_head_must_fit_the_clip_model(clips, tmp_path):
    torch.save(torch.nn.Linear(768, 1).state_dict(), tmp_path / "vit_l_14.pth")
    with pytest.raises(ValueError, match="takes 768-dim embeddings; tiny-random gives 64"):
        score_clips(clips, ScoreConfig(aesthetic_weights=str(tmp_path / "vit_l_14.pth")))
    torch.save({"weight": torch.zeros(1, 64), "extra": torch.zeros(3)}, tmp_path / "odd.pth")
    with pytest.raises(ValueError, match="not a linear or LAION MLP aesthetic head"):
        score_clips(clips, ScoreConfig(aesthetic_weights=str(tmp_path / "odd.pth")))


# Filtering


def unit(*values):
    vector = np.array(values + (0.0,) * (4 - len(values)), np.float32)
    return vector / np.linalg.norm(vector)


def score_row(clip_id, motion=0.5, duration=2.0, clip_score=0.25, aesthetic=math.nan, embedding=None):
    embedding = unit(1.0) if embedding is None else embedding
    return {"clip_id": clip_id, "clip_score": clip_score, "clip_embedding": embedding, "aesthetic": aesthetic,
            "motion": motion, "width": 64, "height": 64, "duration": duration, "clip_model": "test",
            "aesthetic_model": "test"}


def tables(scores, captions=None):
    """A clips table for these score rows (plus clips with no scores row, from `captions`)."""
    captions = {row["clip_id"]: "a caption" for row in scores} | (captions or {})
    clips = pd.DataFrame([clip_row(clip_id, f"/clips/{clip_id}.mp4", caption) for clip_id, caption in captions.items()])
    return clips, pd.DataFrame(scores)


def reasons(decisions):
    return dict(zip(decisions.clip_id, decisions.reason))


def test_each_rule_drops_with_its_reason():
    clips, scores = tables([
        score_row("a_good", embedding=unit(1, 0)),
        score_row("b_still", motion=0.001, embedding=unit(0, 1)),
        score_row("c_short", duration=0.5, embedding=unit(0, 0, 1)),
        score_row("d_ugly", aesthetic=3.0, embedding=unit(0, 0, 0, 1)),
        score_row("e_unrelated", clip_score=0.1, embedding=unit(1, 1)),
        score_row("f_shaky", motion=9.0, embedding=unit(1, 0, 1)),
        score_row("g_no_aesthetic", embedding=unit(0, 1, 1)),
        score_row("h_uncaptioned", clip_score=math.nan, embedding=unit(1, 1, 1)),
    ], captions={"h_uncaptioned": None, "i_unscored": "a caption"})
    config = FilterConfig(min_clip_score=0.2, max_motion=5.0)
    decisions = decide(clips, scores, config)
    assert len(decisions) == len(clips) and list(decisions.clip_id) == sorted(clips.clip_id)
    assert reasons(decisions) == {
        "a_good": "", "g_no_aesthetic": "",
        "b_still": "motion 0.0010 < 0.01",
        "c_short": "duration 0.50 s < 1.0 s",
        "d_ugly": "aesthetic 3.00 < 4.5",
        "e_unrelated": "clip_score 0.100 < 0.2",
        "f_shaky": "motion 9.0000 > 5.0",
        "h_uncaptioned": "no caption",
        "i_unscored": "not scored",
    }
    assert decisions.keep.tolist() == [reason == "" for reason in decisions.reason]
    assert decisions.keep.dtype == bool
    all_off = FilterConfig(min_aesthetic=None, min_motion=None, min_seconds=None, dedup_similarity=None)
    assert reasons(decide(clips, scores, all_off))["b_still"] == ""


def test_several_failed_rules_are_all_named():
    clips, scores = tables([score_row("a", motion=0.0, duration=0.2)], captions={"a": ""})
    assert reasons(decide(clips, scores)) == {"a": "no caption; duration 0.20 s < 1.0 s; motion 0.0000 < 0.01"}


def test_dedup_keeps_the_first_clip_and_names_it():
    near = unit(1, 0.1)  # cosine 0.995 with unit(1)
    clips, scores = tables([
        score_row("c", embedding=near),
        score_row("a", embedding=unit(1)),
        score_row("b", embedding=unit(0, 1)),
        score_row("d_still", motion=0.0, embedding=unit(1)),
        score_row("e", embedding=unit(1, 0.3)),  # cosine 0.958: kept
    ])
    decisions = decide(clips, scores)
    assert reasons(decisions) == {
        "a": "", "b": "", "e": "",
        "c": "duplicate of a (cosine 0.9950)",
        "d_still": "motion 0.0000 < 0.01; duplicate of a (cosine 1.0000)",
    }
    shuffled = decide(clips.sample(frac=1, random_state=0), scores.sample(frac=1, random_state=1))
    pd.testing.assert_frame_equal(shuffled, decisions)  # the input's order changes nothing
    assert reasons(decide(clips, scores, FilterConfig(dedup_similarity=0.999)))["c"] == ""
    assert decide(clips, scores, FilterConfig(dedup_similarity=None)).keep.sum() == 4


def test_decide_on_real_scores_drops_the_static_clip(clips, scored):
    decisions = decide(clips, scored).set_index("clip_id")
    assert decisions.keep.moving_circle and decisions.keep.moving_square
    assert not decisions.keep.static_circle and decisions.reason.static_circle.startswith("motion ")


def test_decide_rejects_repeated_clip_ids():
    clips, scores = tables([score_row("a")])
    with pytest.raises(ValueError, match="clip ids more than once"):
        decide(pd.concat([clips, clips]), scores)


# Shards


@pytest.fixture
def samples(clips, scored):
    """Nine samples over the three real clip files, with scores, lineage and a NaN."""
    table = clips.merge(scored.drop(columns=["width", "height"]), on="clip_id")
    rows = [dict(table.iloc[index % 3], clip_id=f"clip{index:02d}", caption=f"caption {index} é")
            for index in reversed(range(9))]
    return pd.DataFrame(rows)


def read_shard(path):
    dataset = wds.WebDataset([str(path)], shardshuffle=False, nodesplitter=None, workersplitter=None)
    return list(dataset)


def shard_files(folder):
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def test_shards_hold_every_sample_within_bounds(samples, tmp_path):
    shards = write_shards(samples, tmp_path, "batch", max_samples=4)
    assert shards.samples.tolist() == [4, 4, 1]
    assert shards.name.tolist() == ["batch-000000.tar", "batch-000001.tar", "batch-000002.tar"]
    keys = []
    for shard in shards.itertuples():
        assert shard.bytes == (tmp_path / shard.name).stat().st_size
        assert shard.sha256 == hashlib.sha256((tmp_path / shard.name).read_bytes()).hexdigest()
        read = [sample["__key__"] for sample in read_shard(shard.path)]
        assert (read[0], read[-1]) == (shard.first_key, shard.last_key)
        manifest = json.loads((tmp_path / shard.name).with_suffix(".json").read_text())
        assert manifest == {"name": shard.name, "samples": shard.samples, "bytes": shard.bytes,
                            "sha256": shard.sha256, "keys": read}
        keys += manifest["keys"]
    assert keys == sorted(samples.clip_id)

    one_sample = shards.bytes.max() // 4  # about one sample's bytes, so that two fit
    limit = 3 * one_sample
    by_bytes = write_shards(samples, tmp_path / "by_bytes", "batch", max_bytes=limit)
    assert (by_bytes.bytes <= limit).all() and by_bytes.samples.sum() == 9 and len(by_bytes) >= 3
    assert verify_shards(by_bytes) == []


def test_sample_contents_round_trip(samples, tmp_path):
    shards = write_shards(samples, tmp_path, "batch", max_samples=5)
    rows = samples.set_index("clip_id")
    read = [sample for path in shards.path for sample in read_shard(path)]
    assert len(read) == 9
    for sample in read:
        row = rows.loc[sample["__key__"]]
        assert {name for name in sample if not name.startswith("__")} == {"mp4", "txt", "json"}
        assert sample["mp4"] == open(row.path, "rb").read()
        assert sample["txt"].decode() == row.caption
        record = json.loads(sample["json"])
        assert "caption" not in record and record["clip_id"] == sample["__key__"]
        assert record["source_sha256"] == row.source_sha256 and record["end_frame"] == row.end_frame
        assert record["motion"] == row.motion and record["clip_score"] == row.clip_score
        assert record["aesthetic"] is None  # NaN
        assert record["clip_embedding"] == row.clip_embedding.tolist()
        assert np.array(record["clip_embedding"], np.float32).tobytes() == row.clip_embedding.tobytes()


def test_rewriting_reproduces_the_shards_and_removes_stale_ones(samples, tmp_path):
    write_shards(samples, tmp_path, "batch", max_samples=2)
    first = shard_files(tmp_path)
    assert len(first) == 10  # 5 shards and their manifests, nothing else
    (tmp_path / ".batch-000009.tar.partial").write_bytes(b"left by a crash")
    (tmp_path / "other-000007.tar").write_bytes(b"another prefix")
    write_shards(samples.sample(frac=1, random_state=0), tmp_path, "batch", max_samples=2)  # any row order
    again = shard_files(tmp_path)
    assert again.pop("other-000007.tar") == b"another prefix"
    assert again == first

    write_shards(samples.iloc[:3], tmp_path, "batch", max_samples=2)  # fewer samples: fewer shards
    names = sorted(shard_files(tmp_path))
    assert names == ["batch-000000.json", "batch-000000.tar", "batch-000001.json", "batch-000001.tar",
                     "other-000007.tar"]
    assert write_shards(samples.iloc[:0], tmp_path, "batch").empty
    assert sorted(shard_files(tmp_path)) == ["other-000007.tar"]


def test_verify_shards_reports_damage(samples, tmp_path):
    shards = write_shards(samples, tmp_path, "batch", max_samples=4)
    assert verify_shards(shards) == []

    wrong_count = shards.assign(samples=[4, 5, 1])
    assert verify_shards(wrong_count) == ["batch-000001.tar: 4 samples, the manifest says 5"]

    path = tmp_path / "batch-000000.tar"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # cut inside a member
    problems = verify_shards(shards)  # webdataset reads a cut tar without complaint, to where it ends
    assert problems == ["batch-000000.tar: sha256 differs from the manifest's",
                        "batch-000000.tar: 3 samples, the manifest says 4",
                        "batch-000000.tar: keys differ from those in batch-000000.json"]
    path.write_bytes(b"\0" * 100 + data[100:])  # a damaged first header
    assert verify_shards(shards.iloc[:1])[1].startswith("batch-000000.tar: unreadable: ")

    (tmp_path / "batch-000002.tar").unlink()
    assert verify_shards(shards.iloc[2:])[0].startswith("batch-000002.tar: missing file")


def test_verify_shards_reports_a_sample_without_caption(tmp_path):
    path = tmp_path / "hand-000000.tar"
    with tarfile.open(path, "w") as tar:
        for name, data in (("k.mp4", b"video"), ("k.json", b"{}")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (tmp_path / "hand-000000.json").write_text(json.dumps({"keys": ["k"]}))
    shards = pd.DataFrame([{"name": path.name, "path": str(path), "samples": 1,
                            "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}])
    assert verify_shards(shards) == ["hand-000000.tar: sample k has no .txt"]


def test_shards_refuse_bad_samples(samples, tmp_path):
    with pytest.raises(ValueError, match="without dots or slashes"):
        write_shards(samples.assign(clip_id=[f"clip.{index}" for index in range(9)]), tmp_path, "batch")
    with pytest.raises(ValueError, match="more than once"):
        write_shards(samples.assign(clip_id="same"), tmp_path, "batch")
    with pytest.raises(ValueError, match="without a caption"):
        write_shards(samples.assign(caption=" "), tmp_path, "batch")
    with pytest.raises(FileNotFoundError, match="gone.mp4"):
        write_shards(samples.assign(path=str(tmp_path / "gone.mp4")), tmp_path, "batch")
    assert list(tmp_path.iterdir()) == []


def test_image_shards_copy_jpegs_and_re_encode_the_rest(tmp_path):
    photo = np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8)
    Image.fromarray(photo).save(tmp_path / "photo.jpg", quality=80)
    transparent = np.zeros((30, 20, 4), np.uint8)  # fully transparent black
    transparent[:10, :, 3] = 255  # the top third opaque black
    Image.fromarray(transparent).save(tmp_path / "logo.png")
    samples = pd.DataFrame([
        {"key": "photo", "path": str(tmp_path / "photo.jpg"), "caption": "noise", "width": 60},
        {"key": "logo", "path": str(tmp_path / "logo.png"), "caption": "a black bar", "width": 20},
    ])
    shards = write_image_shards(samples, tmp_path / "shards", "images")
    assert verify_shards(shards) == []
    read = {sample["__key__"]: sample for sample in read_shard(shards.path[0])}
    assert list(read) == ["logo", "photo"]
    assert read["photo"]["jpg"] == (tmp_path / "photo.jpg").read_bytes()
    logo = np.asarray(Image.open(io.BytesIO(read["logo"]["jpg"])))
    assert logo.shape == (30, 20, 3)
    assert logo[:8].max() < 30 and logo[12:].min() > 225  # opaque black stays, transparent becomes white
    assert json.loads(read["logo"]["json"]) == {"key": "logo", "path": str(tmp_path / "logo.png"), "width": 20}
    assert read["logo"]["txt"] == b"a black bar"
    again = write_image_shards(samples, tmp_path / "again", "images")
    assert again.sha256.tolist() == shards.sha256.tolist()


def test_a_crash_mid_shard_leaves_no_partial_shard_and_a_rerun_completes(tmp_path):
    """Kill a shard-writing process (SIGKILL) mid-way: visible shards are whole; a rerun completes cleanly."""
    import signal
    import subprocess
    import sys
    import time

    from lavie_model.curation.shards import verify_shards, write_shards

    media = tmp_path / "media"
    media.mkdir()
    rows = []
    for index in range(40):
        path = media / f"clip{index:02d}.mp4"
        path.write_bytes(os.urandom(4 << 20))  # large enough that writing takes a while
        rows.append({"clip_id": f"clip{index:02d}", "path": str(path), "caption": f"clip number {index}"})
    table = tmp_path / "samples.parquet"
    pd.DataFrame(rows).to_parquet(table)
    out = tmp_path / "shards"
    script = ("import pandas as pd; from lavie_model.curation.shards import write_shards; "
              f"write_shards(pd.read_parquet({str(table)!r}), {str(out)!r}, 'batch', max_samples=2)")
    process = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.time() + 60
    while not list(out.glob("batch-*.tar")) and time.time() < deadline and process.poll() is None:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    visible = sorted(out.glob("batch-*.tar"))
    assert 0 < len(visible) < 20, "the kill should land mid-way"
    for shard in visible:  # whole: every sample's three members are there
        with tarfile.open(shard) as tar:
            assert len(tar.getnames()) == 6
    shards = write_shards(pd.read_parquet(table), out, "batch", max_samples=2)
    assert len(shards) == 20 and verify_shards(shards) == []
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporary file left
