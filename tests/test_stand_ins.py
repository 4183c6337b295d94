"""The pretrained stand-ins: their folders, the shipped weights, the rendered stills they learn from, and the
cascade inflated from them."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionUpscalePipeline, UNet2DConditionModel

from lavie_model.config import load_preset
from lavie_model.curation.demo_corpus import parse_caption
from lavie_model.model_folder import assemble, init_stand_ins, load_components
from lavie_model.models import UNet3DConditionModel, UNet3DVSRModel
from lavie_model.tiny.stand_ins import SHIPPED, describe, parameters, ship, shipped, write_card
from lavie_model.training.scenes import HELD_OUT, held_out_prompts, is_held_out, random_still

MAX_SHIPPED_MB = 30


def test_stand_in_folders_load_in_diffusers_own_pipelines_offline(stand_ins):
    sd = StableDiffusionPipeline.from_pretrained(stand_ins["sd"], safety_checker=None)
    image = sd("a red circle on a gray background", height=32, width=32, num_inference_steps=2,
               output_type="pt", generator=torch.Generator().manual_seed(0)).images
    assert image.shape == (1, 3, 32, 32)
    up = StableDiffusionUpscalePipeline.from_pretrained(stand_ins["upscaler"])
    upscaled = up("a red circle", image=torch.rand(1, 3, 16, 16), num_inference_steps=2, output_type="pt",
                  generator=torch.Generator().manual_seed(0)).images
    assert upscaled.shape == (1, 3, 64, 64)
    # one frozen text encoder for both, exactly representable in fp16 (it ships so)
    a = load_components(stand_ins["sd"], ["text_encoder"], "t2i")[0]["text_encoder"].state_dict()
    b = load_components(stand_ins["upscaler"], ["text_encoder"], "upscaler")[0]["text_encoder"].state_dict()
    assert all(torch.equal(a[name], b[name]) and torch.equal(a[name], a[name].half().float()) for name in a)


def test_a_preset_without_stand_ins_is_refused(tmp_path):
    with pytest.raises(ValueError, match="starts from pretrained Stable Diffusion"):
        init_stand_ins(tmp_path / "paper", preset="paper")


def test_shipping_writes_fp16_weights_that_load_as_fp32_and_a_card(stand_ins, tmp_path):
    folders = ship(stand_ins["sd"], stand_ins["upscaler"], destination=tmp_path / "shipped")
    unet = UNet2DConditionModel.from_pretrained(stand_ins["sd"] / "unet")
    loaded = load_components(folders["sd"], ["unet"], "t2i")[0]["unet"]
    assert loaded.dtype == torch.float32
    original, again = unet.state_dict(), loaded.state_dict()
    assert all(torch.equal(original[name].half().float(), again[name]) for name in original)
    size = sum(f.stat().st_size for f in (folders["sd"] / "unet").glob("*.safetensors"))
    assert size < 2.2 * parameters(folders["sd"] / "unet")  # 2 bytes a value
    with pytest.raises(FileNotFoundError, match="make pretrain"):
        shipped("huge")


def test_the_shipped_stand_ins_load_and_have_the_preset_shapes():
    """The weights in lavie_model/pretrained/tiny, which make demo starts from: complete, of the tiny preset's
    sizes, small enough to ship, with the card that says how they were made and how well they do."""
    folders = shipped("tiny")
    preset = load_preset("tiny")
    model = preset["model"]
    sd = load_components(folders["sd"], ["tokenizer", "text_encoder", "vae", "unet", "scheduler"], "t2i")[0]
    up = load_components(folders["upscaler"], ["tokenizer", "text_encoder", "vae", "unet", "scheduler",
                                               "low_res_scheduler"], "upscaler")[0]
    def same(config, settings):  # a config read from JSON holds lists where a fresh one holds tuples
        return {k: list(v) if isinstance(v, tuple) else v for k, v in config.items() if k in settings} == settings

    assert same(sd["unet"].config, model["unet_2d"]) and same(up["unet"].config, model["vsr"]["unet_2d"])
    assert same(sd["vae"].config, model["vae"]) and same(up["vae"].config, model["vsr"]["vae"])
    assert sd["scheduler"].config.prediction_type == preset["scheduler"]["prediction_type"]
    with torch.no_grad():  # the shapes flow: 32 x 32 stills <-> 16 x 16 latents <-> the UNet
        latents = sd["vae"].encode(torch.zeros(1, 3, 32, 32)).latent_dist.mean
        assert latents.shape == (1, 4, 16, 16)
        text = sd["text_encoder"](sd["tokenizer"](["a red circle"], padding="max_length",
                                                  return_tensors="pt").input_ids).last_hidden_state
        assert sd["unet"](latents, 10, text).sample.shape == latents.shape
    files = [f for f in (SHIPPED / "tiny").rglob("*") if f.is_file() and "lavie" not in f.parts]  # the stand-ins
    megabytes = sum(f.stat().st_size for f in files) / 1e6
    unique = sum(f.stat().st_size for f in {f.read_bytes().__hash__(): f for f in files}.values()) / 1e6  # stored once
    assert unique <= MAX_SHIPPED_MB, f"{unique:.1f} MB ({megabytes:.1f} MB with the shared files twice)"
    card = json.loads((SHIPPED / "tiny" / "card.json").read_text())
    assert card["command"] == "make pretrain" and (SHIPPED / "tiny" / "MODEL_CARD.md").is_file()
    assert set(card["scores"]) == {"t2i", "upscaler", "autoencoders"}


def test_rendered_stills_never_show_a_held_out_combination_and_are_seeded():
    rng = np.random.default_rng(0)
    stills = [random_still(rng) for _ in range(300)]
    assert all(image.shape == (3, 128, 128) and image.dtype == torch.uint8 for image, _ in stills)
    parsed = [parse_caption(caption) for _, caption in stills]
    assert all(p is not None and (p[0], p[1], p[3]) not in HELD_OUT for p in parsed)
    assert {p[2] for p in parsed} == {None, "left", "right", "up", "down"}  # captioned as stills and as frames
    again = random_still(np.random.default_rng(0))
    assert torch.equal(again[0], stills[0][0]) and again[1] == stills[0][1]
    assert len(held_out_prompts()) == len(HELD_OUT) == 12 and all(is_held_out(p) for p in held_out_prompts())
    assert not is_held_out("a red circle moving left on a white background") and not is_held_out("a cat")
    assert is_held_out("a big red circle moving left on a white background")  # the demo's new concept
    assert not any(" big " in caption for _, caption in stills)


def test_the_cascade_inflated_from_the_stand_ins_reproduces_them_frame_by_frame(stand_ins, tmp_path):
    """`lavie assemble --preset tiny`: every stage's UNet inflated from the stand-ins; with the temporal layers
    as initialised, a 1-frame video gives the 2D UNet's output, for the base and the super-resolution UNet."""
    folder = assemble(tmp_path / "cascade", stand_ins["sd"], stand_ins["upscaler"], inflate_missing=True,
                      preset="tiny")
    parts = load_components(folder, ["unet_base", "unet_vsr"], "base")[0]
    unet2d = load_components(stand_ins["sd"], ["unet"], "t2i")[0]["unet"]
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in unet2d.parameters():  # away from zero-initialised layers, so that equality means something
            param.add_(torch.randn(param.shape, generator=generator) * 0.02)
    inflated = UNet3DConditionModel.from_pretrained_2d(unet2d)
    latents = torch.randn(2, 4, 16, 16, generator=generator)
    text = torch.randn(2, 77, 64, generator=generator)
    with torch.no_grad():
        expected = unet2d(latents, 500, text).sample
        video = inflated(latents[:, :, None], 500, text).sample[:, :, 0]
    assert (video - expected).abs().max() < 1e-5
    assert isinstance(parts["unet_base"], UNet3DConditionModel) and isinstance(parts["unet_vsr"], UNet3DVSRModel)
    up2d = load_components(stand_ins["upscaler"], ["unet"], "upscaler")[0]["unet"]
    low = torch.randn(1, 7, 16, 16, generator=generator)
    with torch.no_grad():
        expected = up2d(low, 50, text[:1], class_labels=torch.tensor([20])).sample
        video = parts["unet_vsr"](low[:, :, None], 50, text[:1], class_labels=torch.tensor([20])).sample[:, :, 0]
    assert (video - expected).abs().max() < 1e-5
    index = json.loads((folder / "model_index.json").read_text())
    assert index["preset"] == "tiny" and index["height"] == 32 and index["num_frames"] == 8


def test_describe_and_write_card_from_a_pretraining(stand_ins, tmp_path):
    """The card's figures come from the runs' files; here a run of a few steps made by the trainer's own layout."""
    run = tmp_path / "run"
    run.mkdir()
    training = load_preset("tiny")["training"] | load_preset("tiny")["pretraining"]["t2i"]
    (run / "run.json").write_text(json.dumps({"training": training, "world_size": 1}))
    (run / "metrics.jsonl").write_text("".join(json.dumps(
        {"step": s, "loss": 0.1, "samples_per_s": 16.0, "probe": {"colour": s / 4, "background": s / 8, "n": 48}})
        + "\n" for s in (1, 2)))
    history = {"info": {"steps": 2, "final_mse": 0.01}, "history": [{"step": 1, "mse": 0.02}, {"step": 2, "mse": 0.01}]}
    folders = {key: Path(shutil.copytree(folder, tmp_path / key)) for key, folder in stand_ins.items()}
    for folder in folders.values():
        (folder / "vae" / "training_history.json").write_text(json.dumps(history))
    scores = {"t2i": {"colour": 0.9, "background": 0.8, "n": 96, "prompts": 12, "samples_per_prompt": 8,
                      "steps": 20, "guidance": 7.5},
              "upscaler": {"psnr": 30.0, "psnr_bicubic": 28.0, "n": 24, "clips_psnr": 29.0, "clips_psnr_bicubic": 27.0,
                           "clips_n": 4, "steps": 20, "guidance": 5.0, "noise_level": 50},
              "autoencoders": {"vae_psnr": 30.0, "vae_colour": 1.0, "shape_clips": 3, "clips": 4,
                               "upscaler_vae_psnr": 31.0}}
    card = describe({"t2i": run, "upscaler": run}, folders, folders, scores, "Data: test.", 60.0, "make pretrain")
    assert card["runs"]["t2i"]["recipe"]["stills per step"] == 64 and card["runs"]["t2i"]["curve"][-1]["step"] == 2
    page = write_card(tmp_path / "card", card).read_text()
    assert "| t2i | colour adherence | 90.0% | 16.7% (chance, 6 colours) | >= 90% | 96 |" in page
    assert "30.00 dB | 28.00 dB (bicubic)" in page and "make pretrain" in page
    assert (tmp_path / "card" / "curves.png").stat().st_size > 0
    assert json.loads((tmp_path / "card" / "card.json").read_text())["scores"] == scores
