"""Generation through the cascade with a tiny model folder: each stage alone, the whole, the CLI, errors."""

import shutil

import pytest
import torch

from lavie_model import LaVieBasePipeline, LaVieCascadePipeline, LaVieInterpolationPipeline, LaVieVSRPipeline
from lavie_model.cli import main
from lavie_model.pipelines.interpolation import conditioning_latents
from lavie_model.video import read_video

FAST = {"num_inference_steps": 2}


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def base(tiny_folder):
    return LaVieBasePipeline.from_pretrained(tiny_folder)


def test_the_folder_holds_every_component(tiny_folder):
    names = sorted(p.name for p in tiny_folder.iterdir())
    assert names == sorted(["model_index.json", "tokenizer", "text_encoder", "vae", "scheduler", "unet_base",
                            "unet_interpolation", "unet_vsr", "vsr_tokenizer", "vsr_text_encoder", "vsr_vae",
                            "vsr_scheduler", "vsr_low_res_scheduler"])


def test_base_stage_alone_is_deterministic(base):
    frames = base("a red circle moving left", generator=seeded(), **FAST).frames
    assert frames.shape == (1, 8, 3, 32, 32) and 0 <= frames.min() and frames.max() <= 1
    again = base("a red circle moving left", generator=seeded(), **FAST).frames
    other = base("a red circle moving left", generator=seeded(1), **FAST).frames
    assert torch.equal(frames, again)
    assert (frames - other).abs().max() > 1e-3
    for scheduler in ("ddim", "euler"):
        assert base("a square", generator=seeded(), scheduler=scheduler, **FAST).frames.shape == frames.shape


def test_base_stage_batches_prompts_and_checks_sizes(base):
    frames = base(["a red circle", "a blue square"], num_frames=3, height=32, width=48, generator=seeded(),
                  num_inference_steps=1, output_type="latent").frames
    assert frames.shape == (2, 4, 3, 16, 24)
    with pytest.raises(ValueError, match="multiples of 2"):
        base("x", height=33, num_inference_steps=1)


def test_conditioning_copies_each_base_latent_over_its_slot():
    latents = torch.arange(5.0).view(1, 1, 5, 1, 1)  # base frame i holds the value i
    copied = conditioning_latents(latents)[0, 0, :, 0, 0]
    assert copied.shape == (17,)  # 4 x 5 - 3
    assert copied.tolist() == [(j + 1) // 4 for j in range(17)]


def test_interpolation_stage_alone(tiny_folder):
    pipe = LaVieInterpolationPipeline.from_pretrained(tiny_folder)
    video = torch.rand(8, 3, 32, 32)
    frames = pipe(video, "a red circle moving left", generator=seeded(), **FAST).frames
    assert frames.shape == (1, 29, 3, 32, 32)
    assert torch.equal(frames, pipe(video, "a red circle moving left", generator=seeded(), **FAST).frames)
    with pytest.raises(ValueError, match=r"\(batch, frames, 3, height, width\)"):
        pipe(torch.rand(8, 64, 64), "x")


def test_vsr_stage_alone_in_chunks(tiny_folder):
    pipe = LaVieVSRPipeline.from_pretrained(tiny_folder)
    video = torch.rand(1, 5, 3, 16, 24)
    frames = pipe(video, "a red circle", generator=seeded(), chunk_frames=2, vae_chunk=3, **FAST).frames
    assert frames.shape == (1, 5, 3, 64, 96)
    with pytest.raises(ValueError, match="noise_level must be in 0..350"):
        pipe(video, "x", noise_level=400)


def test_the_full_cascade(tiny_folder):
    pipe = LaVieCascadePipeline.from_pretrained(tiny_folder)
    options = {stage: {"num_inference_steps": 1} for stage in ("base", "interpolation", "vsr")}
    options["base"]["num_frames"] = 3
    frames = pipe("a red circle moving left", generator=seeded(), stage_options=options).frames
    assert frames.shape == (1, 9, 3, 128, 128)  # 3 -> 4 x 3 - 3 = 9 frames, 32 -> 128 pixels
    assert pipe.fps == 32


def test_cli_generates_a_decodable_video(tiny_folder, tmp_path, capsys):
    output = tmp_path / "a red circle.mp4"
    code = main(["generate", "--model", str(tiny_folder), "--prompt", "a red circle moving left",
                 "--stages", "base,interpolation", "--steps", "2", "--seed", "3", "--output", str(output)])
    assert code == 0, capsys.readouterr().err
    frames, fps = read_video(output)
    assert frames.shape == (29, 3, 32, 32) and fps == 32
    gif = tmp_path / "base.gif"
    assert main(["generate", "--model", str(tiny_folder), "--prompt", "a red circle moving left",
                 "--stages", "base", "--steps", "2", "--seed", "3", "--output", str(gif)]) == 0
    assert read_video(gif)[0].shape == (8, 3, 32, 32)
    again = tmp_path / "again.gif"
    main(["generate", "--model", str(tiny_folder), "--prompt", "a red circle moving left",
          "--stages", "base", "--steps", "2", "--seed", "3", "--output", str(again)])
    assert again.read_bytes() == gif.read_bytes()  # same seed, same frames


def test_cli_runs_the_whole_cascade(tiny_folder, tmp_path, capsys):
    output = tmp_path / "cascade.mp4"
    code = main(["generate", "--model", str(tiny_folder), "--prompt", "a blue square moving up", "--steps", "1",
                 "--output", str(output)])
    assert code == 0, capsys.readouterr().err
    frames, fps = read_video(output)
    assert frames.shape == (29, 3, 128, 128) and fps == 32  # 8 -> 29 frames, 32 -> 128 pixels


def test_cli_super_resolves_a_given_video(tiny_folder, tmp_path, capsys):
    from lavie_model.video import write_video

    write_video(torch.rand(3, 3, 16, 16), tmp_path / "small.mp4", fps=8)
    code = main(["generate", "--model", str(tiny_folder), "--prompt", "a cat", "--stages", "vsr", "--steps", "1",
                 "--video", str(tmp_path / "small.mp4"), "--output", str(tmp_path / "big.mp4")])
    assert code == 0, capsys.readouterr().err
    frames, fps = read_video(tmp_path / "big.mp4")
    assert frames.shape == (3, 3, 64, 64) and fps == 8


@pytest.mark.parametrize("args, message", [
    (["--stages", "base,upscale"], "unknown stage upscale; stages are base, interpolation, vsr"),
    (["--stages", "interpolation,base"], "stages run in cascade order"),
    (["--stages", "interpolation"], "needs an input video (--video)"),
    (["--output", "{tmp}/missing/out.mp4"], "folder {tmp}/missing does not exist"),
    (["--output", "{tmp}/folder.mp4"], "it is a folder"),
    (["--output", "{tmp}/out.avi"], "must end in .mp4 or .gif"),
    (["--device", "cuda"], "no CUDA device is available"),
    (["--dtype", "fp16"], "fp16 is not supported on the CPU"),
    (["--model", "{tmp}/nowhere"], "model folder not found"),
])
def test_cli_errors_are_named(tiny_folder, tmp_path, capsys, args, message):
    if "--device" in args and torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    (tmp_path / "folder.mp4").mkdir()
    base_args = {"--model": str(tiny_folder), "--prompt": "x", "--steps": "1", "--output": str(tmp_path / "o.mp4")}
    for flag, value in zip(args[::2], args[1::2]):
        base_args[flag] = value.format(tmp=tmp_path)
    code = main(["generate", *[item for pair in base_args.items() for item in pair]])
    assert code == 1
    assert message.format(tmp=tmp_path) in capsys.readouterr().err
    assert not (tmp_path / "o.mp4").exists()


def test_a_missing_stage_is_named(tiny_folder, tmp_path, capsys):
    partial = tmp_path / "no-interpolation"
    shutil.copytree(tiny_folder, partial)
    shutil.rmtree(partial / "unet_interpolation")
    LaVieBasePipeline.from_pretrained(partial)  # the other stages still load
    with pytest.raises(FileNotFoundError, match=r"lacks unet_interpolation/, needed for the interpolation stage"):
        LaVieCascadePipeline.from_pretrained(partial)
    code = main(["generate", "--model", str(partial), "--prompt", "x", "--stages", "base,interpolation",
                 "--output", str(tmp_path / "o.mp4")])
    assert code == 1 and "lacks unet_interpolation/" in capsys.readouterr().err
    (partial / "model_index.json").unlink()
    with pytest.raises(FileNotFoundError, match="is not a LaVie model folder"):
        LaVieBasePipeline.from_pretrained(partial)
