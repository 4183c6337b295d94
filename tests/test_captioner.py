"""Captions on real files: a tiny random captioner saved offline, loaded like a real one, on two tiny clips."""

import av
import numpy as np
import pandas as pd
import pytest

from lavie_model.curation.captioner import CaptionerConfig, build_tiny_captioner, caption_clips
from lavie_model.curation.demo_corpus import write_mp4
from lavie_model.curation.writer import encode_still


@pytest.fixture(scope="module")
def captioner(tmp_path_factory):
    return build_tiny_captioner(tmp_path_factory.mktemp("tiny-captioner"))


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    rows = []
    for index, colour in enumerate([(220, 30, 30), (30, 30, 220)]):
        frames = np.empty((8, 32, 32, 3), np.uint8)
        frames[:] = colour
        for frame_index in range(8):  # a white block sliding right
            frames[frame_index, 8:16, frame_index * 2:frame_index * 2 + 8] = 255
        path = folder / f"clip{index}.mp4"
        write_mp4(frames, path, fps=8)
        rows.append({"clip_id": f"clip{index}", "path": str(path), "frame_count": 8})
    return pd.DataFrame(rows)


def test_one_caption_per_clip_deterministic(captioner, clips):
    config = CaptionerConfig(model_path=str(captioner), batch_size=1, max_new_tokens=8)
    first = caption_clips(clips, config)
    assert list(first.columns) == ["clip_id", "caption", "caption_source"]
    assert first["clip_id"].tolist() == ["clip0", "clip1"]
    assert all(isinstance(c, str) and c for c in first["caption"])
    assert set(first["caption_source"]) == {f"captioner:{captioner.name}"}
    pd.testing.assert_frame_equal(first, caption_clips(clips, config))


def test_several_frames_join_distinct_captions(captioner, clips):
    config = CaptionerConfig(model_path=str(captioner), frames_per_clip=3, max_new_tokens=8)
    captions = caption_clips(clips, config)
    assert len(captions) == 2
    for caption in captions["caption"]:
        parts = caption.split("; ")
        assert all(parts) and len(parts) == len(set(parts)) <= 3


def test_the_writers_stills_stand_in_for_the_clip_frames(captioner, clips):
    """Stills holding a clip's frames are captioned without reading the clip (swapped stills swap the captions);
    a clip whose stills lack a frame is decoded as without stills."""
    config = CaptionerConfig(model_path=str(captioner), max_new_tokens=8)
    middles = {}
    for row in clips.itertuples():
        with av.open(row.path) as container:
            middles[row.clip_id] = {4: encode_still(list(container.decode(video=0))[4])}  # the middle of 8 frames
    gone = clips.assign(path=[path + ".missing" for path in clips["path"]])
    kept = caption_clips(gone, config, middles)
    swapped = caption_clips(gone, config, {"clip0": middles["clip1"], "clip1": middles["clip0"]})
    assert kept["caption"].tolist() == swapped["caption"].tolist()[::-1]
    assert kept["caption"].nunique() == 2  # the two clips' captions differ, so the swap shows
    partial = caption_clips(clips, CaptionerConfig(model_path=str(captioner), frames_per_clip=2, max_new_tokens=8),
                            middles)
    pd.testing.assert_frame_equal(partial, caption_clips(clips, CaptionerConfig(
        model_path=str(captioner), frames_per_clip=2, max_new_tokens=8)))


def test_missing_model_path(tmp_path, clips):
    missing = tmp_path / "no-such-model"
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        caption_clips(clips, CaptionerConfig(model_path=str(missing)))


def test_batches_that_split_a_clips_frames_caption_as_one_frame_at_a_time(captioner, clips):
    """Frames are read as batches fill: a batch may end inside a clip's frames, and each caption still goes to
    its own clip."""
    def captions(batch_size):
        config = CaptionerConfig(model_path=str(captioner), frames_per_clip=3, batch_size=batch_size,
                                 max_new_tokens=8)
        return caption_clips(clips, config)

    pd.testing.assert_frame_equal(captions(2), captions(1))  # batches (0, 0), (0, 1), (1, 1) of clip rows
