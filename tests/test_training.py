"""The trainer: real DeepSpeed engines (CPU, gloo), real WebDataset shards, the tiny preset."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from PIL import Image

from lavie_model.cli import main
from lavie_model.config import load_preset
from lavie_model.curation.shards import write_image_shards, write_shards
from lavie_model.models import UNet3DConditionModel
from lavie_model.models.unet_3d_vsr import is_temporal
from lavie_model.training.data import StageData, TrainingStream, collate, consumer_stream, expand_shards, raw_samples
from lavie_model.training.stages import load_parts, load_unet, sample_generators, stage_data, training_loss
from lavie_model.training.trainer import override
from lavie_model.video import write_video

LAVIE = [sys.executable, "-m", "lavie_model.cli"]
COLOURS = {"red": (1.0, 0.1, 0.1), "blue": (0.1, 0.2, 1.0), "yellow": (1.0, 0.9, 0.1)}


def moving_square(colour, direction: int, frames: int = 16, size: int = 64) -> torch.Tensor:
    """(f, 3, size, size) in [0, 1]: a coloured square crossing a gray background left or right."""
    video = torch.full((frames, 3, size, size), 0.5)
    for i in range(frames):
        left = 4 + i * 2 if direction > 0 else size - 20 - i * 2
        video[i, :, 24:40, left:left + 16] = torch.tensor(colour)[:, None, None]
    return video


@pytest.fixture(scope="session")
def shards(tmp_path_factory):
    """Two video shards (6 clips of 16 frames, 1 clip of 4 frames too short for any stage) and an image shard."""
    root = tmp_path_factory.mktemp("training-data")
    rows = []
    for i, (name, colour) in enumerate([*COLOURS.items()] * 2):
        direction = 1 if i < 3 else -1
        path = write_video(moving_square(colour, direction), root / f"clip{i}.mp4", fps=8)
        rows.append({"clip_id": f"clip{i:02d}", "path": str(path), "frame_count": 16,
                     "caption": f"a {name} square moving {'right' if direction > 0 else 'left'}"})
    short = write_video(moving_square(COLOURS["red"], 1, frames=4), root / "short.mp4", fps=8)
    rows.append({"clip_id": "short", "path": str(short), "frame_count": 4, "caption": "a short clip"})
    write_shards(pd.DataFrame(rows), root / "videos", "videos", max_samples=4)
    images = []
    for i, (name, colour) in enumerate(COLOURS.items()):
        path = root / f"image{i}.png"
        Image.new("RGB", (80, 64), tuple(int(255 * c) for c in colour)).save(path)
        images.append({"key": f"image{i}", "path": str(path), "caption": f"a {name} picture"})
    write_image_shards(pd.DataFrame(images), root / "images", "images")
    return {"videos": str(root / "videos"), "images": str(root / "images")}


def clean_env() -> dict:
    """This environment without a launcher's rank variables, so that each run picks its own port."""
    names = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    return {k: v for k, v in os.environ.items() if k not in names} | {"OMP_NUM_THREADS": "1"}


def train_args(stage, model, videos, output, steps, *extra):
    return ["train", "--stage", stage, "--model", str(model), "--videos", videos, "--output", str(output),
            "--max-steps", str(steps), *extra]


def run_lavie(args, timeout=300):
    done = subprocess.run(LAVIE + args, env=clean_env(), capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def tensorboard_scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} of the run's TensorBoard event files, read back as TensorBoard reads them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def logged(log: list[dict], name: str) -> list[tuple[int, float]]:
    """[(step, value)] of a metrics.jsonl field, as float32 (TensorBoard's scalar type)."""
    return [(r["step"], float(np.float32(r[name]))) for r in log]


def tensorboard_tags_over_http(logdir: Path) -> dict:
    """`tensorboard --logdir` started headless on 127.0.0.1: the scalar tags its HTTP API lists (stopped after)."""
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([str(Path(sys.executable).parent / "tensorboard"), "--logdir", str(logdir), "--host",
                               "127.0.0.1", "--port", str(port), "--load_fast", "false", "--reload_interval", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            assert server.poll() is None, "tensorboard exited"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/plugin/scalars/tags", timeout=10) as answer:
                    tags = json.loads(answer.read())
                if tags:
                    return tags
            except OSError:
                pass
            time.sleep(1)
        raise AssertionError("tensorboard listed no scalars within 2 minutes")
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def unet_weights(folder: Path, name: str) -> dict:
    from safetensors.torch import load_file

    return load_file(folder / name / "diffusion_pytorch_model.safetensors")


def fixed_batch_loss(model_folder, stage, shards, unet) -> float:
    """The loss of `unet` on one fixed batch, averaged over 4 fixed noise draws (no caption dropping)."""
    parts = load_parts(model_folder, stage)
    data = stage_data(stage, load_preset("tiny"), parts.vae_scale)
    data.text_drop = 0.0
    stream = TrainingStream(expand_shards(shards["videos"]), data, seed=7, shuffle_buffer=1)
    batch = collate([example for example, _ in zip(stream, range(2))])
    with torch.no_grad():
        return float(np.mean([training_loss(unet, parts, batch, sample_generators(11, 0, 2 * k, 2)).item()
                              for k in range(4)]))


@pytest.mark.parametrize("stage", ["base", "interpolation", "vsr"])
def test_each_stage_trains_on_the_demo_shards_and_its_loss_falls(stage, tiny_folder, demo_shards, tmp_path):
    run = tmp_path / "run"
    extra = ["--set", "learning_rate=0.001", "--set", "warmup_steps=1", "--set", "ema_decay=0.5",
             "--set", "text_drop=0"]
    if stage == "base":
        extra += ["--images", demo_shards["images"], "--set", "image_frames=2"]
    run_lavie(train_args(stage, tiny_folder, demo_shards["videos"], run, 6, *extra))

    log = metrics(run)
    assert [r["step"] for r in log] == list(range(1, 7))
    assert all(np.isfinite(r["loss"]) and r["grad_norm"] > 0 and r["skipped_clips"] >= 0 for r in log)
    exported = run / "model"
    name = f"unet_{stage}"
    index = json.loads((exported / "model_index.json").read_text())
    assert index["_training"][stage]["steps"] == 6
    before = load_unet(tiny_folder, stage).eval()
    after = type(before).from_pretrained(exported / name).eval()
    loss_before = fixed_batch_loss(tiny_folder, stage, demo_shards, before)
    assert fixed_batch_loss(tiny_folder, stage, demo_shards, after) < loss_before
    if stage == "vsr":  # the upscaler's 2D weights stay frozen
        start, end = unet_weights(tiny_folder, name), unet_weights(exported, name)
        assert all(torch.equal(start[k], end[k]) for k in start if not is_temporal(k))
        assert any(not torch.equal(start[k], end[k]) for k in start if is_temporal(k))


@pytest.mark.parametrize("stage, tracking", [("t2i", "tensorboard"), ("upscaler", "tensorboard,mlflow")])
def test_each_stand_in_pretrains_on_stills_and_is_probed_on_held_out_ones(stage, tracking, stand_ins, demo_shards,
                                                                          tmp_path):
    """`lavie train --stage t2i|upscaler`: the 2D stand-in of a Stable Diffusion-layout folder trains on frames of
    the clips, images and rendered stills, each with its own caption and timestep; every `evaluate_every` steps
    its EMA weights are scored on the held-out prompts (t2i) or stills (upscaler). Every step is in TensorBoard's
    event files as in metrics.jsonl (and in MLflow's store with `--tracking mlflow`)."""
    folder = stand_ins["sd" if stage == "t2i" else "upscaler"]
    run = tmp_path / "run"
    run_lavie(train_args(stage, folder, demo_shards["videos"], run, 4, "--images", demo_shards["images"],
                         "--set", "batch_size=2", "--set", "evaluate_every=2", "--set", "warmup_steps=1",
                         "--tracking", tracking))
    log = metrics(run)
    assert [r["step"] for r in log] == [1, 2, 3, 4] and all(np.isfinite(r["loss"]) for r in log)
    probes = [r["probe"] for r in log if "probe" in r]
    assert len(probes) == 2  # steps 2 and 4
    if stage == "t2i":
        assert all(0 <= p["colour"] <= 1 and 0 <= p["background"] <= 1 and p["n"] == 48 for p in probes)
    else:
        assert all(p["psnr"] > 0 and p["psnr_bicubic"] > 20 and p["n"] == 24 for p in probes)

    scalars = tensorboard_scalars(run)
    for name in ("loss", "lr", "grad_norm", "samples_per_s", "memory_mb", "skipped_clips"):
        assert scalars[f"train/{name}"] == logged(log, name), name
    probed = [r for r in log if "probe" in r]
    for name in ("colour", "background") if stage == "t2i" else ("psnr", "psnr_bicubic"):
        assert scalars[f"probe/{name}"] == [(r["step"], float(np.float32(r["probe"][name]))) for r in probed]
    if stage == "t2i":  # a few of the probe's samples, as GIFs at each probed step
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0})
        events.Reload()
        assert {f"samples/{i}" for i in range(4)} <= set(events.Tags()["images"])
        shown = events.Images("samples/0")
        assert [e.step for e in shown] == [2, 4] and all(e.encoded_image_string[:4] == b"GIF8" for e in shown)
    if stage == "t2i":  # TensorBoard itself, headless, lists them
        assert {"train/loss", "train/lr", "probe/colour"} <= set(tensorboard_tags_over_http(run / "tensorboard")["."])
    if "mlflow" in tracking:
        import mlflow

        client = mlflow.MlflowClient(f"sqlite:///{run / 'mlflow' / 'mlflow.db'}")
        recorded = client.get_run((run / "mlflow" / "run_id").read_text().strip())
        assert recorded.info.status == "FINISHED" and recorded.data.params["stage"] == stage
        history = client.get_metric_history(recorded.info.run_id, "train.loss")
        assert [(m.step, m.value) for m in history] == [(r["step"], r["loss"]) for r in log]
    run_info = json.loads((run / "run.json").read_text())
    assert run_info["training"]["rendered_frames"] == 2  # the preset's pretraining section, under --set
    keys = [key for line in (run / "samples-rank0.jsonl").read_text().splitlines() for key in json.loads(line)["keys"]]
    assert len(keys) == 8
    before = UNet2DConditionModel.from_pretrained(folder / "unet")
    after = UNet2DConditionModel.from_pretrained(run / "model" / "unet")
    assert json.loads((run / "model" / "model_index.json").read_text())["_training"][stage]["steps"] == 4
    assert any(not torch.equal(a, b) for a, b in zip(before.state_dict().values(), after.state_dict().values()))
    assert StableDiffusionPipeline.from_pretrained(run / "model", safety_checker=None) if stage == "t2i" else True


def test_stills_batches_give_every_still_its_own_caption_and_leave_out_held_out_combinations(stand_ins, tmp_path):
    """A t2i example: one frame of a clip, M images and R rendered stills; captions of held-out combinations
    (scenes.HELD_OUT) never reach the stand-ins, from the clips, the images or the renderer."""
    from lavie_model.training.scenes import is_held_out

    root = tmp_path / "data"
    root.mkdir()
    rows = []
    for i, caption in enumerate(["a red circle moving left on a gray background",  # held out: red circle gray
                                 "a red circle moving left on a white background"]):
        path = write_video(moving_square(COLOURS["red"], 1), root / f"c{i}.mp4", fps=8)
        rows.append({"clip_id": f"c{i}", "path": str(path), "frame_count": 16, "caption": caption})
    write_shards(pd.DataFrame(rows), root / "videos", "videos")
    data = StageData("t2i", 1, 1, (32, 32), image_frames=0, rendered_frames=3, held_out=True)
    examples = [e for e, _ in zip(TrainingStream(expand_shards(str(root / "videos")), data, seed=0, shuffle_buffer=1),
                                  range(6))]
    assert {e["key"] for e in examples} == {"c1"}
    assert all(e["frames"].shape == (1, 3, 32, 32) and e["images"].shape == (3, 3, 32, 32) for e in examples)
    captions = [c for e in examples for c in e["image_captions"]]
    assert len(set(captions)) > 3 and not any(is_held_out(c) for c in captions)
    assert examples[0]["image_keys"][0].startswith("rendered/0/0/")
    parts = load_parts(stand_ins["sd"], "t2i")
    unet = load_unet(stand_ins["sd"], "t2i")
    batch = collate(examples[:2])
    loss = training_loss(unet, parts, batch, sample_generators(0, 0, 0, 2), snr_gamma=5.0)
    assert loss.ndim == 0 and torch.isfinite(loss)


def test_clips_too_short_for_a_stage_are_skipped_and_counted(shards):
    data = StageData("base", num_frames=8, frame_stride=1, size=(64, 64))
    examples = [example for example, _ in zip(TrainingStream(expand_shards(shards["videos"]), data, seed=0,
                                                             shuffle_buffer=1), range(12))]
    assert "short" not in {e["key"] for e in examples}
    assert sum(e["skipped"] for e in examples) >= 1  # the 4-frame clip, seen at least once in 12 examples


def kill_after(steps: int, args: list[str], run: Path) -> None:
    """Start `lavie ARGS` and SIGKILL it once `run` has logged `steps` steps."""
    process = subprocess.Popen(LAVIE + args, env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        if (run / "metrics.jsonl").is_file() and len(metrics(run)) >= steps:
            break
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL


def test_resume_after_sigkill_equals_an_uninterrupted_run(tiny_folder, shards, tmp_path):
    common = ["--set", "checkpoint_every=2", "--images", shards["images"], "--set", "image_frames=1"]
    whole = tmp_path / "whole"
    run_lavie(train_args("base", tiny_folder, shards["videos"], whole, 4, *common))

    broken = tmp_path / "broken"
    kill_after(3, train_args("base", tiny_folder, shards["videos"], broken, 50, *common), broken)
    assert (broken / "checkpoints" / "latest").read_text().strip() == "step_00000002"
    # TensorBoard kept what the killed run flushed: every step it logged (the last perhaps not yet)
    killed, flushed = metrics(broken), tensorboard_scalars(broken)["train/loss"]
    assert len(flushed) >= len(killed) - 1 and flushed == logged(killed, "loss")[:len(flushed)]

    run_lavie(train_args("base", tiny_folder, shards["videos"], broken, 4, *common, "--resume"))
    assert [r["loss"] for r in metrics(broken)] == [r["loss"] for r in metrics(whole)]
    # the resumed run purged the steps past its checkpoint from TensorBoard's view, as from metrics.jsonl
    assert tensorboard_scalars(broken)["train/loss"] == logged(metrics(whole), "loss")
    assert (broken / "samples-rank0.jsonl").read_text() == (whole / "samples-rank0.jsonl").read_text()
    a, b = unet_weights(whole / "model", "unet_base"), unet_weights(broken / "model", "unet_base")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert sorted(p.name for p in (broken / "checkpoints").glob("step_*")) == ["step_00000002", "step_00000004"]

    # an attempt that trained to its last step but died before exporting (a retried Dagster run): resumed, it
    # exports its last checkpoint, training nothing more
    shutil.rmtree(broken / "model")
    done = run_lavie(train_args("base", tiny_folder, shards["videos"], broken, 4, *common, "--resume"))
    assert "reached step 4 of 4 before it stopped: exporting its last checkpoint" in done.stdout + done.stderr
    assert [r["loss"] for r in metrics(broken)] == [r["loss"] for r in metrics(whole)]
    c = unet_weights(broken / "model", "unet_base")
    assert all(torch.equal(a[k], c[k]) for k in a)


def test_two_ranks_see_different_samples_and_keep_identical_weights(tiny_folder, shards, tmp_path):
    run = tmp_path / "run"
    first_shard = str(sorted(Path(shards["videos"]).glob("*.tar"))[0])  # 4 clips: each rank takes every other one
    port = 29500 + os.getpid() % 1000
    launcher = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2", "--master_port", str(port),
                "--module", "lavie_model.cli"]
    done = subprocess.run(launcher + train_args("base", tiny_folder, first_shard, run, 2),
                          env=clean_env() | {"DS_ACCELERATOR": "cpu"}, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # each rank unlinked its DeepSpeed all-reduce buffer (67 MB of /dev/shm, which DeepSpeed leaves behind)
    assert not list(Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{port}_*"))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["weights_in_sync"]
    assert summary["rank_fingerprints"][0] == summary["rank_fingerprints"][1]
    seen = [[json.loads(line)["keys"] for line in (run / f"samples-rank{r}.jsonl").read_text().splitlines()]
            for r in (0, 1)]
    for step0, step1 in zip(*seen):
        assert not set(step0) & set(step1)
    assert set(seen[0][0]) | set(seen[1][0]) == {"clip00", "clip01", "clip02", "clip03"}


def test_each_consumer_reads_its_own_shards_and_every_sample_once_per_epoch(shards):
    videos = expand_shards(shards["videos"])  # 2 shards, 7 samples
    firsts = []
    for consumer in (0, 1):
        shard = videos[int(np.random.default_rng(np.random.SeedSequence([3, 0])).permutation(2)[consumer])]
        count = len(list(raw_samples(shard)))
        stream = consumer_stream(videos, seed=3, consumer=consumer, consumers=2, buffer=1)
        firsts.append({next(stream)["__key__"] for _ in range(count)})
    assert not firsts[0] & firsts[1]
    assert firsts[0] | firsts[1] == {f"clip{i:02d}" for i in range(6)} | {"short"}
    three = [{next(consumer_stream(videos, 3, c, 3, 1))["__key__"]} for c in range(3)]  # fewer shards: by sample
    assert len(set.union(*three)) == 3


def test_gradient_accumulation_matches_one_larger_batch(tiny_folder, shards, tmp_path):
    common = ["--set", "text_drop=0", "--set", "learning_rate=0.0001", "--set", "shuffle_buffer=1"]
    accumulated, single = tmp_path / "accumulated", tmp_path / "single"
    run_lavie(train_args("interpolation", tiny_folder, shards["videos"], accumulated, 1, *common,
                         "--set", "batch_size=2", "--set", "gradient_accumulation=2"))
    run_lavie(train_args("interpolation", tiny_folder, shards["videos"], single, 1, *common,
                         "--set", "batch_size=4", "--set", "gradient_accumulation=1"))
    a, b = metrics(accumulated)[0], metrics(single)[0]
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
    keys = [json.loads((run / "samples-rank0.jsonl").read_text())["keys"] for run in (accumulated, single)]
    assert keys[0] == keys[1]
    wa, wb = unet_weights(accumulated / "model", "unet_interpolation"), unet_weights(single / "model",
                                                                                      "unet_interpolation")
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-6


def test_joint_batches_give_images_their_own_captions_and_no_temporal_attention(tiny_folder, shards):
    parts = load_parts(tiny_folder, "base")
    data = StageData("base", num_frames=4, frame_stride=2, size=(64, 64), image_frames=3)
    stream = TrainingStream(expand_shards(shards["videos"]), data, seed=0,
                            images=expand_shards(shards["images"]), shuffle_buffer=4)
    batch = collate([example for example, _ in zip(stream, range(2))])
    assert batch["frames"].shape == (2, 4, 3, 64, 64) and batch["images"].shape == (2, 3, 3, 64, 64)
    assert all(len(captions) == 3 and all(c.endswith("picture") for c in captions)
               for captions in batch["image_captions"])
    assert all(c.startswith("a ") and "square" in c for c in batch["caption"])

    unet = load_unet(tiny_folder, "base").eval()
    seen = {}

    def record(module, args, kwargs):
        seen.update(text=args[2].shape, images=kwargs.get("num_image_frames"))

    unet.register_forward_pre_hook(record, with_kwargs=True)
    with torch.no_grad():
        training_loss(unet, parts, batch, sample_generators(0, 0, 0, 2))
    assert seen == {"text": (2, 7, 77, 64), "images": 3}  # one text per frame: 4 video frames + 3 images

    # image frames skip temporal attention: changing them leaves the video frames' output as it was
    for block in unet.modules():  # give the zero-initialised temporal projections weights, as training would
        if hasattr(block, "attn_temp"):
            torch.nn.init.normal_(block.attn_temp.to_out[0].weight, std=0.2)
    latents = torch.randn(1, 4, 7, 32, 32)
    text = torch.randn(1, 7, 77, 64)
    with torch.no_grad():
        out = unet(latents, 10, text, num_image_frames=3).sample
        changed = latents.clone()
        changed[:, :, 4:] = torch.randn(1, 4, 3, 32, 32)
        out2 = unet(changed, 10, text, num_image_frames=3).sample
        video_changed = latents.clone()
        video_changed[:, :, 0] += 1
        out3 = unet(video_changed, 10, text, num_image_frames=3).sample
    assert torch.allclose(out[:, :, :4], out2[:, :, :4], atol=1e-5)
    assert not torch.allclose(out[:, :, 4:], out2[:, :, 4:], atol=1e-3)
    assert not torch.allclose(out[:, :, 1:4], out3[:, :, 1:4], atol=1e-4)  # video frames do attend to each other
    assert torch.allclose(out[:, :, 4:], out3[:, :, 4:], atol=1e-5)


@pytest.mark.parametrize("change, message", [
    ({"--model": "missing-folder"}, "model folder not found"),
    ({"--videos": "nowhere/videos-{000000..000003}.tar"}, "no video shards found at nowhere/videos-{000000..000003}"),
    ({"--images": "nowhere/images.tar"}, "no image shards found at nowhere/images.tar"),
    ({"--stage": "upscale"}, "unknown stage 'upscale'"),
    ({"--set": "batch_sise=2"}, "unknown training settings: batch_sise"),
    ({"--set": "learning_rate=fast"}, "training setting learning_rate: expected a number, got 'fast'"),
    ({"--set": "batch_size=2.5"}, "training setting batch_size: expected a whole number, got 2.5"),
    ({"--tracking": "tensorboard,wandb"}, "unknown tracking wandb: choose from tensorboard, mlflow, or none"),
])
def test_bad_configuration_fails_before_training_and_names_the_problem(change, message, tiny_folder, shards,
                                                                       tmp_path, capsys):
    options = {"--stage": "base", "--model": str(tiny_folder), "--videos": shards["videos"],
               "--output": str(tmp_path / "run")} | change
    args = ["train"] + [item for pair in options.items() for item in pair]
    assert main(args) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # nothing started


def test_set_values_take_the_type_of_the_preset_setting():
    training = load_preset("tiny")["training"]
    values = {"learning_rate": "5e-4", "batch_size": 4.0, "text_drop": 0, "vsr": {"num_frames": 4}}
    typed = {name: override(name, value, training[name]) for name, value in values.items()}
    assert typed == {"learning_rate": 5e-4, "batch_size": 4, "text_drop": 0.0, "vsr": training["vsr"] | {"num_frames": 4}}
    assert type(typed["batch_size"]) is int and type(typed["text_drop"]) is float
    with pytest.raises(ValueError, match="training setting vsr: expected dict"):
        override("vsr", 3, training["vsr"])


def test_images_for_a_stage_that_takes_none_are_refused(tiny_folder, shards, tmp_path, capsys):
    args = train_args("vsr", tiny_folder, shards["videos"], tmp_path / "run", 1, "--images", shards["images"])
    assert main(args) == 1
    assert "only the base stage and the stand-ins train on images" in capsys.readouterr().err


def test_a_probed_run_needs_its_probe_from_the_caller(tiny_folder, shards, tmp_path):
    """The trainer imports no evaluation code: `lavie train` passes it the probe; called without one while
    `evaluate_every` is set, it says so before it starts."""
    from lavie_model.training.trainer import TrainSettings, train

    settings = TrainSettings(stage="base", model=str(tiny_folder), videos=shards["videos"],
                             output=str(tmp_path / "run"), overrides={"evaluate_every": 2})
    with pytest.raises(ValueError, match="no probe was given"):
        train(settings)
    assert not (tmp_path / "run").exists()


def test_model_folder_without_the_stage_unet_is_named(tiny_folder, shards, tmp_path, capsys):
    partial = tmp_path / "partial"
    partial.mkdir()
    for entry in tiny_folder.iterdir():
        if entry.name != "unet_vsr":
            (partial / entry.name).symlink_to(entry)
    assert main(train_args("vsr", partial, shards["videos"], tmp_path / "run", 1)) == 1
    assert "lacks unet_vsr/, needed to train the vsr stage" in capsys.readouterr().err


def test_inflated_interpolation_unet_starts_from_the_base_weights(tiny_folder):
    base = UNet3DConditionModel.from_pretrained(tiny_folder / "unet_base")
    unet = load_unet(tiny_folder, "interpolation")
    assert unet.config.block_design == "interpolation" and unet.config.in_channels == 8
    weights = unet.state_dict()
    assert torch.equal(weights["conv_in.weight"][:, :4], base.state_dict()["conv_in.weight"])
    assert not weights["conv_in.weight"][:, 4:].any()
    assert torch.equal(weights["mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight"],
                       base.state_dict()["mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight"])


def test_lavie_train_vae_trains_both_autoencoders(tiny_folder, shards, tmp_path):
    out = tmp_path / "vaes"
    assert main(["train-vae", "--model", str(tiny_folder), "--videos", shards["videos"], "--images", shards["images"],
                 "--output", str(out), "--steps", "2", "--batch-size", "2"]) == 0
    trained = json.loads((out / "model_index.json").read_text())["_training"]
    for component in ("vae", "vsr_vae"):
        config = json.loads((out / component / "config.json").read_text())
        assert trained[component]["steps"] == 2 and config["scaling_factor"] == trained[component]["scaling_factor"] > 0
        history = json.loads((out / component / "training_history.json").read_text())["history"]
        assert [row["step"] for row in history] == [1, 2] and all(np.isfinite(row["mse"]) for row in history)
        fidelity = trained[component]["fidelity"]  # measured on the held-out clips
        assert fidelity["clips"] >= 0 and (fidelity["psnr"] is None or fidelity["psnr"] > 0)
        assert not torch.equal(unet_weights(out, component)["encoder.conv_in.weight"],
                               unet_weights(tiny_folder, component)["encoder.conv_in.weight"])


def test_vae_loss_weighs_a_colour_error_above_the_same_error_on_gray():
    from lavie_model.training.vae import reconstruction_loss

    target = torch.zeros(1, 3, 2, 2)  # mid-gray in [-1, 1]
    target[0, :, 0, 0] = torch.tensor([0.8, -0.8, -0.8])  # one red pixel
    off_colour, off_gray = target.clone(), target.clone()
    off_colour[0, :, 0, 0] += 0.5
    off_gray[0, :, 1, 1] += 0.5
    assert reconstruction_loss(off_colour, target) > 4 * reconstruction_loss(off_gray, target) > 0
    assert reconstruction_loss(target, target) == 0


def test_one_deepspeed_launcher_per_node_without_ssh_forms_one_world(tiny_folder, shards, tmp_path):
    """Several nodes without pdsh or ssh: each node runs the launcher the training asset builds for it
    (`--no_ssh --node_rank N --master_addr HOST`); two of them on 127.0.0.1 form world size 2."""
    from pipelines.training import TRAIN_PIPES, TrainingSettings

    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node0 slots=1\nnode1 slots=1\n")
    run = tmp_path / "run"
    first_shard = str(sorted(Path(shards["videos"]).glob("*.tar"))[0])
    port = 30500 + os.getpid() % 1000
    launchers = []
    for node in (0, 1):
        settings = TrainingSettings(nodes=2, ranks=1, hostfile=str(hostfile), node_rank=node, master_addr="127.0.0.1",
                                    master_port=port)
        command = settings.launch_command() + [str(TRAIN_PIPES)] + train_args("base", tiny_folder, first_shard,
                                                                                  run, 2)
        assert "--no_ssh" in command and command[command.index("--node_rank") + 1] == str(node)
        launchers.append(subprocess.Popen(command, env=clean_env() | {"DS_ACCELERATOR": "cpu"},
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [launcher.communicate(timeout=400)[0] for launcher in launchers]
    assert [launcher.returncode for launcher in launchers] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["weights_in_sync"]
    seen = [(run / f"samples-rank{r}.jsonl").read_text() for r in (0, 1)]
    assert seen[0] and seen[1] and seen[0] != seen[1]  # one rank on each node, each on its own samples
