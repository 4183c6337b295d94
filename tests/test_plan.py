"""`lavie plan`: its counts against the models the trainer builds, its activation count against a real forward
pass, its arithmetic of the memory modes, and the command line's verdict."""

import json

import torch

from lavie_model.cli import main
from lavie_model.finetune.lora import add_lora
from lavie_model.finetune.plan import GiB, build_unet, plan, saved_bytes, stage_inputs
from lavie_model.training.stages import load_unet
from lavie_model.training.trainer import TrainSettings, preset_with_overrides


def run(stage: str = "base", **fields) -> TrainSettings:
    """A run's settings as the plan reads them (it reads no folder)."""
    return TrainSettings(stage=stage, model="", videos="", output="", **fields)


def test_the_plan_counts_the_weights_the_trainer_trains(tiny_folder):
    for stage in ("base", "vsr"):
        unet = load_unet(tiny_folder, stage)
        full = plan(run(stage), "cpu")
        assert full.parameters == sum(p.numel() for p in unet.parameters())
        assert full.trainable == sum(p.numel() for p in unet.parameters() if p.requires_grad)
        add_lora(unet, 4)
        lora = plan(run(stage, lora_rank=4), "cpu")
        assert lora.parameters == sum(p.numel() for p in unet.parameters())
        assert lora.trainable == sum(p.numel() for p in unet.parameters() if p.requires_grad) < full.trainable / 20
        assert lora.device["optimizer"] < full.device["optimizer"] / 20 and lora.device["ema"] < full.device["ema"] / 20


def test_the_meta_count_of_saved_activations_matches_a_real_forward_pass():
    """The bytes autograd keeps, counted on the meta device, against the same forward pass on the CPU (each
    storage once, weights left out)."""
    preset = preset_with_overrides("tiny", {})
    torch.manual_seed(0)
    unet = build_unet("base", preset).train()
    sample, timesteps, text, kwargs, _ = stage_inputs(unet, "base", preset, images=1, batch_size=2)
    weights = {p.data_ptr() for p in unet.parameters()} | {b.data_ptr() for b in unet.buffers()}
    storages = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        unet(sample, timesteps, text, **kwargs)
    real = sum(storages.values())
    with torch.device("meta"):
        meta_unet = build_unet("base", preset).train()
        inputs = stage_inputs(meta_unet, "base", preset, images=1, batch_size=2)
    counted = saved_bytes(meta_unet, inputs[:3] + (inputs[3],))
    assert abs(counted["all"] / real - 1) < 0.1, (counted["all"], real)
    assert counted["checkpointed"] < counted["all"] / 2  # checkpointing keeps the layers' inputs, recomputes the rest


def test_memory_modes_move_and_divide_what_the_plan_counts():
    base = plan(run(preset="paper", gradient_checkpointing=True, latents="latents"))
    assert base.parameters > 900e6 and base.device["encoding"] == 0
    assert base.device["weights"] == base.parameters * 2  # bf16
    assert base.device["optimizer"] == 12 * base.trainable
    offloaded = plan(run(preset="paper", gradient_checkpointing=True, latents="latents", offload_optimizer=True))
    assert offloaded.device["optimizer"] == 0 and offloaded.host["optimizer"] == base.device["optimizer"]
    sharded = plan(run(preset="paper", gradient_checkpointing=True, latents="latents", zero_stage=3,
                       offload_params=True), gpus=4)
    assert sharded.device["weights"] == 0 and sharded.host["weights"] == base.parameters * 2 // 4
    assert sharded.total < base.total and offloaded.total < base.total
    pixels = plan(run(preset="paper", gradient_checkpointing=True))
    assert pixels.device["encoding"] > 0
    unchecked = plan(run(preset="paper", latents="latents"))
    assert unchecked.saved_per_sample > 5 * base.saved_per_sample


def test_lavie_plan_says_whether_a_run_fits_and_what_to_change(capsys):
    assert main(["plan", "--preset", "tiny", "--device", "cpu", "--memory", "0.5"]) == 1
    out = capsys.readouterr().out
    assert "does NOT fit 0.5 per rank" in out and "set gradient_checkpointing" in out and "lora_rank" in out
    assert main(["plan", "--preset", "tiny", "--device", "cpu", "--memory", "64", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["fits"] and 0 < result["total"] < 64 * GiB and result["settings"]["device"] == "cpu"
    assert main(["plan", "--preset", "tiny", "--memory", "lots"]) == 1
    assert "expected GiB" in capsys.readouterr().err
