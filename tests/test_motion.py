"""The tiny LaVie's motion pretraining: rendered clips, the diffusion classifier of direction, exact resume, and
the blend-residual interpolation target."""

import json
import time

import numpy as np
import pytest
import torch
from torch import nn

from lavie_model.curation.demo_corpus import DIRECTIONS, render
from lavie_model.evaluation.direction_score import direction_captions, direction_scores
from lavie_model.pipelines.interpolation import blend_keyframes, conditioning_latents, interpolation_condition
from lavie_model.text import encode_prompts
from lavie_model.tiny_lavie import held_out_clips, held_out_scenes
from lavie_model.training.scenes import HELD_OUT, ClipMotion, random_scenes, render_clips
from lavie_model.training.stages import interpolation_from_base, load_components, load_parts


def test_rendered_clips_are_the_corpus_renders_and_never_held_out():
    rng = np.random.default_rng(0)
    scenes = random_scenes(rng, 6, still_fraction=0.3)
    along = np.tile(np.arange(12) / 11, (6, 1))  # the whole path, as demo_corpus.render draws a 12-frame clip
    frames = render_clips(scenes, along, size=128)  # (6, 12, 3, 128, 128)
    for scene, video in zip(scenes, frames):
        expected = torch.from_numpy(render(scene, 12)).permute(0, 3, 1, 2).float() / 255
        assert torch.equal(video, expected), scene
    drawn = random_scenes(np.random.default_rng(1), 500)
    assert not any((s.colour, s.shape, s.background) in HELD_OUT for s in drawn)
    assert not any(s.big for s in drawn)  # the demo's new concept: never in pretraining
    held = random_scenes(np.random.default_rng(1), 50, held_out=True)
    assert all((s.colour, s.shape, s.background) in HELD_OUT for s in held)
    positions = ClipMotion().positions(rng, 100, 8, 2)  # (100, 8) fractions of the path, 2 frames apart
    assert positions.min() >= 0 and positions.max() <= 1 and (np.diff(positions, axis=1) > 0).all()


def test_held_out_set_covers_every_combination_and_direction():
    scenes = held_out_scenes()
    assert len(scenes) == 96 and len(held_out_scenes(8)) == 8 and len(set(held_out_scenes(8))) == 8
    assert {(s.colour, s.shape, s.background, s.direction) for s in scenes} == {
        (*combination, direction) for combination in HELD_OUT for direction in DIRECTIONS}


class PrefersLeft(nn.Module):
    """Predicts zeros for a "... moving left ..." caption and ones for any other: lower loss for "left"."""

    def __init__(self, left_embeddings):
        super().__init__()
        self.register_buffer("left", left_embeddings)  # (k, tokens, dim)
        self.anchor = nn.Parameter(torch.zeros(()))

    @property
    def device(self):
        return self.anchor.device

    @property
    def dtype(self):
        return self.anchor.dtype

    def forward(self, x, t, text):
        distance = (text[:, None] - self.left[None]).abs().amax(dim=(2, 3)).amin(dim=1)  # (b,)
        offset = (distance > 1e-5).float()[:, None, None, None, None]
        return type("Out", (), {"sample": torch.zeros_like(x) + offset})


class IgnoresText(nn.Module):
    """A real tiny base UNet that is never shown the caption."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    @property
    def device(self):
        return self.unet.device

    @property
    def dtype(self):
        return self.unet.dtype

    def forward(self, x, t, text):
        return self.unet(x, t, torch.zeros_like(text))


@pytest.fixture(scope="module")
def base_parts(tiny_folder):
    return load_parts(tiny_folder, "base").to("cpu", torch.float32)


def test_direction_classifier_answers_the_preferred_direction(base_parts):
    clips, captions = held_out_clips(8, 2, 32, count=48)
    clips, captions = clips[::6], captions[::6]  # 8 clips, every direction twice
    left = [c for caption in captions for c in direction_captions(caption) if "moving left" in c]
    model = PrefersLeft(encode_prompts(base_parts.tokenizer, base_parts.text_encoder, left, "cpu"))
    scores = direction_scores(model, base_parts, clips, captions, timesteps=(500,), noises=1)
    assert scores["answers"] == ["left"] * len(captions)
    truly_left = sum("moving left" in c for c in captions)
    assert scores["accuracy"].hits == truly_left and scores["accuracy"].n == len(captions)
    assert not scores["accuracy"].beats(0.25)


def test_direction_classifier_gives_no_answer_to_a_model_that_cannot_tell(base_parts, tiny_folder):
    unet = load_components(tiny_folder, ["unet_base"], "base")[0]["unet_base"].eval()
    clips, captions = held_out_clips(8, 2, 32, count=48)
    scores = direction_scores(IgnoresText(unet), base_parts, clips[:4], captions[:4], timesteps=(300, 700), noises=1)
    assert scores["answers"] == [None] * 4  # four equal losses: a tie is no answer
    assert scores["accuracy"].hits == 0
    with_text = direction_scores(unet, base_parts, clips[:4], captions[:4], timesteps=(300, 700), noises=1)
    assert with_text["losses"].std(dim=1).min() > 0  # the same clips, with the caption: the losses differ
    with pytest.raises(ValueError, match="not a moving caption"):
        direction_captions("a red circle standing still on a gray background")


def test_motion_pretraining_resumes_exactly(tiny_folder, tmp_path):
    from lavie_model.config import load_preset
    from lavie_model.training.motion import MotionRecipe, train_motion

    preset = load_preset("tiny")
    recipe = MotionRecipe(steps=4, batch_size=2, log_every=1, checkpoint_every=2, eval_every=2, warmup_steps=2)
    scored = []

    def probe(step, unet):
        scored.append(step)
        return {"weights": float(sum(p.detach().double().sum() for p in unet.parameters()))}

    whole, steps = train_motion(tiny_folder, tmp_path / "whole", recipe, preset, probe=probe)
    assert steps == 4 and scored == [0, 2, 4]
    # a run stopped after its first step (checkpointed there), then run again: it resumes at step 1
    _, stopped_at = train_motion(tiny_folder, tmp_path / "split", recipe, preset, deadline=time.time() - 1)
    assert stopped_at == 1
    resumed, steps = train_motion(tiny_folder, tmp_path / "split", recipe, preset)
    assert steps == 4
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name

    def losses(run):
        return [json.loads(line)["loss"] for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]

    assert losses("whole") == losses("split") and len(losses("whole")) == 4
    other = MotionRecipe(**{**recipe.__dict__, "learning_rate": 1e-4})
    with pytest.raises(ValueError, match="another recipe"):  # a checkpoint is resumed by its own recipe only
        train_motion(tiny_folder, tmp_path / "whole", other, preset)


def test_blend_residual_interpolation_conditions_on_the_latent_blend(tiny_folder, tmp_path):
    base = load_components(tiny_folder, ["unet_base"], "interpolation")[0]["unet_base"]
    official = interpolation_from_base(base)
    residual = interpolation_from_base(base, "blend_residual")
    latents = torch.randn(2, 4, 4, 16, 16)  # (b, c, K, h, w) keyframe latents
    condition, residual_of = interpolation_condition(official, latents)
    assert residual_of is None and torch.equal(condition, conditioning_latents(latents))
    condition, residual_of = interpolation_condition(residual, latents)
    assert condition.shape == (2, 4, 13, 16, 16) and torch.equal(condition, residual_of)
    assert torch.equal(condition[:, :, ::4], latents)  # the blend passes through the keyframes
    assert torch.allclose(condition[:, :, 2], (latents[:, :, 0] + latents[:, :, 1]) / 2)
    assert torch.equal(condition.transpose(1, 2), blend_keyframes(latents.transpose(1, 2)))
    residual.save_pretrained(tmp_path / "unet")
    reloaded = type(residual).from_pretrained(tmp_path / "unet")
    assert reloaded.config.interpolation_target == "blend_residual"
    with pytest.raises(ValueError, match="interpolation_target"):
        interpolation_from_base(base, "pixels")


def test_tiny_lavie_cascade_score_and_ship(tmp_path):
    """The shipped tiny LaVie as a cascade folder, scored on held-out clips, shipped again elsewhere unchanged."""
    from safetensors.torch import load_file

    from lavie_model.stand_ins import shipped_lavie
    from lavie_model.tiny_lavie import main, ship

    main(["cascade", str(tmp_path / "cascade")])
    main(["score", "--model", str(tmp_path / "cascade"), "--device", "cpu", "--held-out-clips", "4",
          "--sampling-steps", "3", "--json", str(tmp_path / "scores.json")])
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert scores["base"]["direction_classifier"]["n"] == 4 and scores["base"]["sampled_colour"]["n"] == 4
    references = scores["interpolation"]
    assert references["psnr_hold"] < references["psnr_latent_blend"] < references["psnr_vae"]
    assert references["psnr"] > references["psnr_hold"]  # the shipped residual model, not a random one
    copies = ship(tmp_path / "cascade" / "unet_base", tmp_path / "cascade" / "unet_interpolation",
                  destination=tmp_path / "shipped")
    for stage, folder in shipped_lavie().items():
        public = [{k: v for k, v in json.loads((f / "config.json").read_text()).items() if not k.startswith("_")}
                  for f in (folder, copies[stage])]
        assert public[0] == public[1]
        shipped, copied = (load_file(f / "diffusion_pytorch_model.safetensors") for f in (folder, copies[stage]))
        assert shipped.keys() == copied.keys()
        for name, weight in shipped.items():
            kept = torch.float32 if "rotary_emb" in name else torch.float16  # the rotary frequencies stay exact
            assert weight.dtype == kept and torch.equal(weight, copied[name]), name


def test_the_shipped_tiny_lavie_loads_with_the_preset_shapes():
    from lavie_model.config import load_preset
    from lavie_model.models.unet_3d import UNet3DConditionModel
    from lavie_model.stand_ins import shipped_lavie

    folders = shipped_lavie()
    model = load_preset("tiny")["model"]["unet_2d"]
    base = UNet3DConditionModel.from_pretrained(folders["base"])
    interpolation = UNet3DConditionModel.from_pretrained(folders["interpolation"])
    assert list(base.config.block_out_channels) == model["block_out_channels"]
    assert base.config.block_design == "base" and base.config.in_channels == 4
    assert interpolation.config.block_design == "interpolation" and interpolation.config.in_channels == 8
    assert interpolation.config.interpolation_target == "blend_residual"
    megabytes = sum(f.stat().st_size for folder in folders.values() for f in folder.rglob("*")) / 1e6
    assert megabytes < 15, f"{megabytes:.1f} MB"  # fp16: about 6.6 MB a UNet
    assert (folders["base"].parent / "MODEL_CARD.md").is_file()
