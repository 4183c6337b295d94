"""The tiny LaVie's motion pretraining: rendered clips, the diffusion classifier of direction, exact resume (with
cached captions, compiled, with a text encoder that learns), and the blend-residual interpolation target."""

import copy
import dataclasses
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
from lavie_model.tiny.tiny_lavie import held_out_clips, held_out_scenes
from lavie_model.training.scenes import HELD_OUT, ClipMotion, random_scenes, render_clips
from lavie_model.training.stages import (embed, interpolation_from_base, load_components, load_parts,
                                         sample_generators, training_loss)


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


def losses_of(run) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_motion_pretraining_resumes_exactly(tiny_folder, tmp_path):
    from lavie_model.config import load_preset
    from lavie_model.training.motion import MotionRecipe, train_motion

    preset = load_preset("tiny")
    recipe = MotionRecipe(steps=4, batch_size=2, log_every=1, checkpoint_every=2, eval_every=2, warmup_steps=2)
    scored = []

    def probe(step, unet):  # no text_encoder keyword: the text encoder is frozen
        scored.append(step)
        return {"weights": float(sum(p.detach().double().sum() for p in unet.parameters()))}

    # the whole run embeds every caption every step; the split one looks them up (the default): the same run
    whole, steps, text_encoder = train_motion(tiny_folder, tmp_path / "whole", recipe, preset, probe=probe,
                                              cache_captions=False)
    assert steps == 4 and scored == [0, 2, 4] and text_encoder is None
    # a run stopped after its first step (checkpointed there), then run again: it resumes at step 1
    _, stopped_at, _ = train_motion(tiny_folder, tmp_path / "split", recipe, preset, deadline=time.time() - 1)
    assert stopped_at == 1
    resumed, steps, _ = train_motion(tiny_folder, tmp_path / "split", recipe, preset)
    assert steps == 4
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert losses_of(tmp_path / "whole") == losses_of(tmp_path / "split") and len(losses_of(tmp_path / "whole")) == 4
    assert "text_encoder" not in torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=True)

    other = MotionRecipe(**{**recipe.__dict__, "learning_rate": 1e-4})
    with pytest.raises(ValueError, match="another recipe"):  # a checkpoint is resumed by its own recipe only
        train_motion(tiny_folder, tmp_path / "whole", other, preset)
    # a checkpoint written before text_lr existed holds its default (0): it still resumes
    state = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=True)
    del state["recipe"]["text_lr"]
    torch.save(state, tmp_path / "whole" / "checkpoint.pt")
    assert train_motion(tiny_folder, tmp_path / "whole", recipe, preset)[1] == 4


def test_caption_cache_gives_the_uncached_loss_bit_for_bit(base_parts, tiny_folder):
    from lavie_model.training.motion import MotionRecipe, rendered_batch

    unet = load_components(tiny_folder, ["unet_base"], "base")[0]["unet_base"]
    recipe = MotionRecipe(batch_size=4, text_drop=0.3)
    cached = dataclasses.replace(base_parts, caption_cache={})
    with torch.no_grad():
        for step in range(3):  # later steps look up captions the earlier ones encoded
            batch = rendered_batch(recipe, step, 8, 32, "cpu")
            plain, looked_up = (training_loss(unet, parts, batch, sample_generators(0, 0, 4 * step, 4))
                                for parts in (base_parts, cached))
            assert torch.equal(plain, looked_up), step
    assert "" in cached.caption_cache and base_parts.caption_cache is None  # the dropped captions' embedding too


def test_compiled_motion_steps_match_eager_and_resume_exactly(tiny_folder, tmp_path, monkeypatch):
    """train_motion(compile=...) on the CPU. Inductor's C++ compilation of the UNet's forward and backward takes
    minutes on this 2-core CPU (benchmarks/motion_speed.py measures it), so the test compiles with dynamo and
    AOTAutograd only (the "aot_eager" backend): the compiled module's plumbing (its parameters the optimizer's and
    the EMA's, the checkpoint's keys, resume), not inductor's kernels."""
    import functools

    from lavie_model.config import load_preset
    from lavie_model.training.motion import MotionRecipe, train_motion

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    preset = load_preset("tiny")
    recipe = MotionRecipe(steps=2, batch_size=2, log_every=1, checkpoint_every=1, eval_every=0, warmup_steps=2)
    eager, _, _ = train_motion(tiny_folder, tmp_path / "eager", recipe, preset)
    # compiled, stopped after its first step and resumed compiled: eager's losses and weights to rounding
    assert train_motion(tiny_folder, tmp_path / "compiled", recipe, preset, compile="default",
                        deadline=time.time() - 1)[1] == 1
    compiled, steps, _ = train_motion(tiny_folder, tmp_path / "compiled", recipe, preset, compile="default")
    assert steps == 2
    assert losses_of(tmp_path / "compiled") == pytest.approx(losses_of(tmp_path / "eager"), rel=1e-5)
    for (name, a), b in zip(eager.state_dict().items(), compiled.state_dict().values()):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6), name
    checkpoints = [torch.load(tmp_path / run / "checkpoint.pt", weights_only=True) for run in ("eager", "compiled")]
    assert checkpoints[0]["unet"].keys() == checkpoints[1]["unet"].keys()  # the UNet's own keys, not the wrapper's


def test_text_encoder_learns_at_text_lr_and_resumes_exactly(tiny_folder, base_parts, tmp_path):
    from lavie_model.config import load_preset
    from lavie_model.training.motion import MotionRecipe, rendered_batch, train_motion

    # the loss reaches a text encoder that trains; a frozen one gets no graph
    unet = load_components(tiny_folder, ["unet_base"], "base")[0]["unet_base"]
    batch = rendered_batch(MotionRecipe(batch_size=2, text_drop=0.0), 0, 8, 32, "cpu")
    learning = dataclasses.replace(base_parts, text_encoder=copy.deepcopy(base_parts.text_encoder).requires_grad_(True))
    training_loss(unet, learning, batch, sample_generators(0, 0, 0, 2)).backward()
    assert learning.text_encoder.get_input_embeddings().weight.grad.abs().sum() > 0
    assert not embed(base_parts, batch["caption"]).requires_grad

    preset = load_preset("tiny")
    recipe = MotionRecipe(steps=2, batch_size=2, log_every=1, checkpoint_every=1, eval_every=2, warmup_steps=1,
                          text_lr=1e-2)
    given = []

    def probe(step, unet, text_encoder=None):
        given.append(text_encoder)
        return {}

    _, steps, whole = train_motion(tiny_folder, tmp_path / "whole", recipe, preset, probe=probe)
    assert steps == 2 and len(given) == 2 and all(isinstance(t, type(base_parts.text_encoder)) for t in given)
    start = base_parts.text_encoder.state_dict()
    assert any(not torch.equal(start[name], w) for name, w in whole.state_dict().items())  # it learned
    assert all(not p.requires_grad for p in whole.parameters())
    train_motion(tiny_folder, tmp_path / "split", recipe, preset, deadline=time.time() - 1)
    _, _, resumed = train_motion(tiny_folder, tmp_path / "split", recipe, preset)
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert losses_of(tmp_path / "whole") == losses_of(tmp_path / "split")
    state = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=True)
    assert state["text_encoder"].keys() == start.keys() and "text_ema" in state
    with pytest.raises(ValueError, match="base stage only"):
        train_motion(tiny_folder, tmp_path / "interpolation", MotionRecipe(stage="interpolation", text_lr=1e-3),
                     preset)


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

    from lavie_model.tiny.stand_ins import shipped_lavie
    from lavie_model.tiny.tiny_lavie import main, ship

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
    from lavie_model.tiny.stand_ins import shipped_lavie

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
