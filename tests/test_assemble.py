"""`lavie assemble`: a model folder from (tiny stand-ins of) Stable Diffusion, the x4 upscaler and checkpoints."""

import json
from pathlib import Path

import pytest
import torch
from conftest import TEXT_DIM, randomize_temporal_layers, tiny_unet2d
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, PNDMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from lavie_model import LaVieCascadePipeline, UNet3DConditionModel, UNet3DVSRModel
from lavie_model.cli import main
from lavie_model.text import write_clip_tokenizer

FIXTURES = Path(__file__).parent / "fixtures"
X4_CONFIG = torch.load(FIXTURES / "official_vsr_reference.pt", weights_only=True)["unet2d_config"]  # x4-shaped


def text_encoder():
    return CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=TEXT_DIM, intermediate_size=64,
                                        num_hidden_layers=1, num_attention_heads=1, max_position_embeddings=77))


def vae(levels, scaling_factor):
    return AutoencoderKL(block_out_channels=(32,) * levels, down_block_types=("DownEncoderBlock2D",) * levels,
                         up_block_types=("UpDecoderBlock2D",) * levels, layers_per_block=1, norm_num_groups=8,
                         scaling_factor=scaling_factor)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Diffusers-layout folders shaped like SD 1.4 and the x4 upscaler, and LaVie-layout checkpoints."""
    root = tmp_path_factory.mktemp("sources")
    torch.manual_seed(0)
    sd, up = root / "stable-diffusion", root / "x4-upscaler"
    for folder in (sd, up):
        write_clip_tokenizer(folder / "tokenizer")
        text_encoder().save_pretrained(folder / "text_encoder")
    unet2d = tiny_unet2d()
    unet2d.save_pretrained(sd / "unet")
    vae(2, 0.18215).save_pretrained(sd / "vae")
    PNDMScheduler().save_pretrained(sd / "scheduler")
    x4 = UNet2DConditionModel(**X4_CONFIG)
    x4.save_pretrained(up / "unet")
    vae(3, 0.08333).save_pretrained(up / "vae")
    DDIMScheduler(beta_schedule="scaled_linear", prediction_type="v_prediction").save_pretrained(up / "scheduler")
    DDPMScheduler(beta_schedule="scaled_linear").save_pretrained(up / "low_res_scheduler")

    base = UNet3DConditionModel.from_pretrained_2d(unet2d, group_norm_across_frames=True)
    randomize_temporal_layers(base)
    interpolation = UNet3DConditionModel.from_pretrained_2d(unet2d, group_norm_across_frames=True,
                                                            block_design="interpolation", in_channels=8)
    vsr = UNet3DVSRModel.from_pretrained_2d(x4, group_norm_across_frames=True)
    checkpoints = {}
    for name, model in (("base", base), ("interpolation", interpolation), ("vsr", vsr)):
        checkpoints[name] = root / f"lavie_{name}.pt"
        torch.save({"ema": model.state_dict()}, checkpoints[name])
    return {"sd": sd, "upscaler": up, "checkpoints": checkpoints, "base": base}


def test_assemble_and_generate(sources, tmp_path, capsys):
    output = tmp_path / "lavie"
    ckpt = sources["checkpoints"]
    code = main(["assemble", "--sd", str(sources["sd"]), "--upscaler", str(sources["upscaler"]),
                 "--base", str(ckpt["base"]), "--interpolation", str(ckpt["interpolation"]), "--vsr", str(ckpt["vsr"]),
                 "--output", str(output)])
    assert code == 0, capsys.readouterr().err
    index = json.loads((output / "model_index.json").read_text())
    assert index["preset"] == "paper" and (index["num_frames"], index["fps"]) == (16, 8)
    assert (index["height"], index["width"]) == (80, 128)  # 40 x 64 latents through this 2x stand-in VAE
    converted = UNet3DConditionModel.from_pretrained(output / "unet_base")
    for name, tensor in sources["base"].state_dict().items():
        assert torch.equal(converted.state_dict()[name], tensor), name
    scheduler = json.loads((output / "vsr_scheduler" / "scheduler_config.json").read_text())
    assert scheduler["beta_schedule"] == "linear" and scheduler["prediction_type"] == "v_prediction"

    pipe = LaVieCascadePipeline.from_pretrained(output)
    options = {"base": {"num_frames": 2, "height": 16, "width": 16, "num_inference_steps": 1},
               "interpolation": {"num_inference_steps": 1}, "vsr": {"num_inference_steps": 1}}
    frames = pipe("a panda taking a selfie", generator=torch.Generator().manual_seed(0), stage_options=options).frames
    assert frames.shape == (1, 5, 3, 64, 64)


def test_missing_stages_are_left_out_or_inflated(sources, tmp_path):
    from lavie_model.model_folder import assemble, present_components

    only_base = assemble(tmp_path / "a", sources["sd"], base=sources["checkpoints"]["base"])
    assert "unet_base" in present_components(only_base)
    assert not {"unet_interpolation", "unet_vsr", "vsr_vae"} & set(present_components(only_base))
    with pytest.raises(FileNotFoundError, match="lacks unet_interpolation/"):
        LaVieCascadePipeline.from_pretrained(only_base, stages="base,interpolation")
    inflated = assemble(tmp_path / "b", sources["sd"], sources["upscaler"], inflate_missing=True)
    assert {"unet_base", "unet_interpolation", "unet_vsr"} <= set(present_components(inflated))


def test_assemble_errors_are_named(sources, tmp_path, capsys):
    ckpt = sources["checkpoints"]
    cases = [
        (["--sd", str(sources["sd"]), "--vsr", str(ckpt["vsr"])], "needs the x4 upscaler folder"),
        (["--sd", str(tmp_path / "nowhere")], "Stable Diffusion folder not found"),
        (["--sd", str(sources["upscaler"] / "unet")], "lacks tokenizer/, text_encoder/, vae/, unet/"),
        (["--sd", str(sources["sd"]), "--base", str(ckpt["vsr"])], "does not match the model"),
    ]
    for args, message in cases:
        assert main(["assemble", *args, "--output", str(tmp_path / "out")]) == 1
        assert message in capsys.readouterr().err
        assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))  # nothing half-written
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("")
    assert main(["assemble", "--sd", str(sources["sd"]), "--output", str(tmp_path / "taken")]) == 1
    assert "already exists" in capsys.readouterr().err


def test_untrained_unets_are_marked_and_a_trained_interpolation_unet_is_fine_tuned_further(sources, tmp_path):
    """model_index.json lists the inflated UNets as untrained; the interpolation stage starts from the base UNet
    only while its own is untrained, and a stage's UNet folder assembles as it is."""
    from lavie_model.model_folder import assemble, untrained_unets
    from lavie_model.training.export import replace_component
    from lavie_model.training.stages import interpolation_starts_from_base, load_unet

    sd, up, ckpt = sources["sd"], sources["upscaler"], sources["checkpoints"]
    inflated = assemble(tmp_path / "a", sd, up, base=ckpt["base"], inflate_missing=True)
    assert untrained_unets(inflated) == ["unet_interpolation", "unet_vsr"]
    assert interpolation_starts_from_base(inflated)
    from_base = load_unet(inflated, "interpolation")  # the base's weights, 4 more input channels at zero
    assert torch.equal(from_base.state_dict()["conv_in.weight"][:, :4], sources["base"].state_dict()["conv_in.weight"])
    assert not from_base.state_dict()["conv_in.weight"][:, 4:].any()

    trained = UNet3DConditionModel.from_pretrained(inflated / "unet_interpolation")
    randomize_temporal_layers(trained)
    replace_component(inflated, tmp_path / "b", "unet_interpolation", trained, {"stage": "interpolation"})
    assert untrained_unets(tmp_path / "b") == ["unet_vsr"] and not interpolation_starts_from_base(tmp_path / "b")
    continued = load_unet(tmp_path / "b", "interpolation")
    assert all(torch.equal(continued.state_dict()[name], tensor) for name, tensor in trained.state_dict().items())

    # UNet folders of trained stages (the shipped tiny LaVie's, an earlier run's) assemble unchanged and unlisted
    again = assemble(tmp_path / "c", sd, up, base=inflated / "unet_base",
                     interpolation=tmp_path / "b" / "unet_interpolation", inflate_missing=True)
    assert untrained_unets(again) == ["unet_vsr"]
    copied = UNet3DConditionModel.from_pretrained(again / "unet_interpolation")
    assert all(torch.equal(copied.state_dict()[name], tensor) for name, tensor in trained.state_dict().items())
