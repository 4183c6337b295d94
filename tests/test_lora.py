"""LoRA adapters and memory modes: real DeepSpeed runs of the tiny preset (CPU), real peft layers, real pipelines."""

import json
import shutil

import pytest
import torch

from lavie_model.finetune import lora
from lavie_model.model_folder import UNET
from lavie_model.pipelines.base import LaVieBasePipeline
from lavie_model.training.stages import load_unet
from test_training import (fixed_batch_loss, kill_after, metrics, run_lavie,  # noqa: F401 (shards: a fixture)
                           shards, train_args, unet_weights)

LORA = ["--lora", "4", "--set", "learning_rate=0.01", "--set", "warmup_steps=1", "--set", "text_drop=0",
        "--set", "checkpoint_every=2"]


@pytest.fixture(scope="module")
def trained_folder(tiny_folder, tmp_path_factory):
    """The tiny folder with its interpolation UNet counted as trained (an adapter needs one to adapt)."""
    folder = tmp_path_factory.mktemp("lora") / "tiny"
    shutil.copytree(tiny_folder, folder)
    index = json.loads((folder / "model_index.json").read_text())
    index["_untrained"] = [name for name in index.get("_untrained", []) if name != "unet_interpolation"]
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder


@pytest.fixture(scope="module")
def base_run(trained_folder, shards, tmp_path_factory):
    run = tmp_path_factory.mktemp("lora-base") / "run"
    run_lavie(train_args("base", trained_folder, shards["videos"], run, 6, *LORA))
    return run


def checkpoint_module_keys(run) -> list[str]:
    state = torch.load(next((run / "checkpoints").glob("step_*/mp_rank_00_model_states.pt")), weights_only=False)
    return list(state["module"])


@pytest.mark.parametrize("stage", ["base", "interpolation", "vsr"])
def test_a_lora_run_trains_only_its_adapter_and_its_loss_falls(stage, trained_folder, shards, base_run, tmp_path):
    run = base_run if stage == "base" else tmp_path / "run"
    if stage != "base":
        run_lavie(train_args(stage, trained_folder, shards["videos"], run, 6, *LORA))
    name = UNET[stage]
    saved = checkpoint_module_keys(run)  # the checkpoint holds the trained weights (and buffers) only
    buffers = {key for key, _ in load_unet(trained_folder, stage).named_buffers()}
    assert any(".lora_A." in key for key in saved)
    assert all(".lora_A." in key or ".lora_B." in key or key in buffers for key in saved)

    # the merged folder is the base with the adapter's product added: every other weight is bit-identical
    before, after = unet_weights(trained_folder, name), unet_weights(run / "model", name)
    config, state, header = lora.read_adapter(run / "lora")
    assert header["lavie_stage"] == stage
    adapted = {key.rsplit(".lora_", 1)[0] + ".weight" for key in state}
    assert adapted and all(torch.equal(before[k], after[k]) for k in before if k not in adapted)
    for weight in adapted:
        prefix = weight.removesuffix(".weight")
        delta = state[f"{prefix}.lora_B.weight"] @ state[f"{prefix}.lora_A.weight"] * config.lora_alpha / config.r
        assert delta.abs().max() > 0
        torch.testing.assert_close(after[weight] - before[weight], delta, rtol=1e-3, atol=1e-6)

    adapter_bytes = (run / "lora" / lora.WEIGHTS).stat().st_size
    assert adapter_bytes < 0.05 * (trained_folder / name / "diffusion_pytorch_model.safetensors").stat().st_size
    base = load_unet(trained_folder, stage).eval()
    merged = type(base).from_pretrained(run / "model" / name).eval()
    assert fixed_batch_loss(trained_folder, stage, shards, merged) < fixed_batch_loss(trained_folder, stage, shards,
                                                                                     base)


def generate(pipe) -> torch.Tensor:
    return pipe("a red square moving right", num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                output_type="latent").frames


def test_an_adapter_at_scale_zero_is_the_base_and_at_one_the_merged_folder(trained_folder, base_run, tmp_path):
    reference = generate(LaVieBasePipeline.from_pretrained(trained_folder))
    pipe = LaVieBasePipeline.from_pretrained(trained_folder)
    name = pipe.load_lora(base_run / "lora", scale=0.0)
    assert torch.equal(generate(pipe), reference)
    pipe.set_adapters([name], [1.0])
    with_adapter = generate(pipe)
    assert not torch.allclose(with_adapter, reference)

    merged = tmp_path / "merged"
    assert run_lavie(["merge-lora", "--model", str(trained_folder), "--lora", f"{base_run / 'lora'}:1",
                      "--output", str(merged)]).returncode == 0
    torch.testing.assert_close(generate(LaVieBasePipeline.from_pretrained(merged)), with_adapter,
                               rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(generate(LaVieBasePipeline.from_pretrained(base_run / "model")), with_adapter,
                               rtol=1e-4, atol=1e-5)


def test_an_adapter_of_another_stage_or_another_base_is_refused_by_name(trained_folder, base_run, tmp_path,
                                                                         capsys):
    from lavie_model.cli import main
    from lavie_model.pipelines.interpolation import LaVieInterpolationPipeline

    with pytest.raises(ValueError, match="adapts the base stage, not the interpolation stage"):
        LaVieInterpolationPipeline.from_pretrained(trained_folder).load_lora(base_run / "lora")
    with pytest.raises(ValueError, match=r"trained on a base UNet with weights [0-9a-f]{16}\.\.\., but this "
                                         r"model's base UNet has weights [0-9a-f]{16}"):
        LaVieBasePipeline.from_pretrained(base_run / "model").load_lora(base_run / "lora")
    video = tmp_path / "out.mp4"
    assert main(["generate", "--model", str(base_run / "model"), "--prompt", "a red square", "--stages", "base",
                 "--steps", "1", "--lora", str(base_run / "lora"), "--output", str(video)]) == 1
    assert "weights" in capsys.readouterr().err and not video.exists()


def test_an_interpolation_adapter_needs_a_trained_interpolation_unet(tiny_folder, trained_folder, shards, tmp_path):
    from lavie_model.training.trainer import TrainSettings, check

    def settings(model):
        return TrainSettings(stage="interpolation", model=str(model), videos=shards["videos"],
                             output=str(tmp_path / "run"), lora_rank=4)

    with pytest.raises(ValueError, match="has no trained interpolation UNet"):
        check(settings(tiny_folder))  # init-tiny's interpolation UNet is untrained: the base UNet would start it
    check(settings(trained_folder))


def test_the_base_identity_follows_the_weight_files(trained_folder, tmp_path):
    """Hashed once per process, but a weight file rewritten since (other bytes) gives another identity."""
    folder = tmp_path / "unet_base"
    shutil.copytree(trained_folder / "unet_base", folder)
    unet = load_unet(trained_folder, "base")
    unet.register_to_config(_name_or_path=str(folder))
    first = lora.base_identity(unet)
    assert lora.base_identity(unet) == first
    weights = next(folder.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes() + b" ")
    assert lora.base_identity(unet) != first


def test_lora_resume_after_sigkill_equals_an_uninterrupted_run(trained_folder, shards, base_run, tmp_path):
    broken = tmp_path / "broken"
    kill_after(3, train_args("base", trained_folder, shards["videos"], broken, 50, *LORA), broken)
    assert (broken / "checkpoints" / "latest").read_text().strip() == "step_00000002"
    run_lavie(train_args("base", trained_folder, shards["videos"], broken, 6, *LORA, "--resume"))
    # base_run trained the same 6 steps, with the same checkpoints, without a break
    assert [r["loss"] for r in metrics(broken)] == [r["loss"] for r in metrics(base_run)]
    a, b = lora.read_adapter(base_run / "lora")[1], lora.read_adapter(broken / "lora")[1]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_zero3_with_offload_trains_as_zero2(trained_folder, shards, tmp_path):
    steps = ["--set", "learning_rate=0.001", "--set", "warmup_steps=1"]
    run_lavie(train_args("base", trained_folder, shards["videos"], tmp_path / "zero2", 2, *steps))
    run_lavie(train_args("base", trained_folder, shards["videos"], tmp_path / "zero3", 2, *steps, "--zero-stage",
                         "3", "--offload-optimizer", "--offload-params"))
    two, three = metrics(tmp_path / "zero2"), metrics(tmp_path / "zero3")
    assert [r["loss"] for r in three] == pytest.approx([r["loss"] for r in two], rel=1e-5)  # rounding apart
    settings = json.loads((tmp_path / "zero3" / "run.json").read_text())
    assert settings["zero_stage"] == 3 and settings["deepspeed"]["zero_optimization"] == {
        "stage": 3, "offload_optimizer": {"device": "cpu", "pin_memory": False},
        "offload_param": {"device": "cpu", "pin_memory": False}}
    a, b = unet_weights(tmp_path / "zero2" / "model", "unet_base"), unet_weights(tmp_path / "zero3" / "model",
                                                                               "unet_base")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-5) for k in a)
