"""Conversion of the released LaVie checkpoints (`lavie_base.pt`, ...) into diffusers-layout folders."""

import json
from importlib import resources
from pathlib import Path

import torch

from .models import UNet3DConditionModel, UNet3DVSRModel, config_from_2d, vsr_config_from_2d



class CheckpointMismatchError(ValueError):
    """A checkpoint's tensors do not fit the model: the message names the offending keys."""


def sd14_unet_config() -> dict:
    """Stable Diffusion 1.4's UNet config, the one the released LaVie checkpoints were inflated from."""
    return json.loads(resources.files("lavie_model.configs").joinpath("sd14_unet.json").read_text())


def sd_x4_upscaler_unet_config() -> dict:
    """The Stable Diffusion x4 upscaler's UNet config, the one `lavie_vsr.pt` was inflated from."""
    return json.loads(resources.files("lavie_model.configs").joinpath("sd_x4_upscaler_unet.json").read_text())


WEIGHT_KEYS = ("ema", "state_dict", "module", "model")  # where training code puts the weights, in preference
WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP and DeepSpeed, torch.compile


def load_checkpoint(path) -> dict:
    """The state dict of a checkpoint: a bare state dict, or the one under `ema` (the released checkpoints),
    `state_dict`, `module` or `model` beside whatever else a training loop saved (optimizer state, steps);
    a training wrapper's `module.` or `_orig_mod.` prefix on every key is removed. See standalone_tensors for
    how shared, non-contiguous and half-precision tensors are taken."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"cannot read checkpoint {path}: {error}") from error
    if not isinstance(checkpoint, dict):
        raise ValueError(f"checkpoint {path} holds a {type(checkpoint).__name__}, not a state dict")
    key = next((key for key in WEIGHT_KEYS if key in checkpoint), None)
    state_dict = checkpoint if key is None else checkpoint[key]
    if not isinstance(state_dict, dict):
        raise ValueError(f"checkpoint {path}: {key!r} holds a {type(state_dict).__name__}, not a state dict")
    not_tensors = sorted(str(k) for k, v in state_dict.items() if not torch.is_tensor(v))
    if not_tensors:
        where = f"its {key!r} entry holds" if key else "it holds"
        raise ValueError(f"checkpoint {path} is not a state dict: {where} entries that are not tensors: "
                         f"{_first(not_tensors)}. Give a checkpoint of the model's weights alone, or with them "
                         "under 'ema', 'state_dict', 'module' or 'model'")
    for prefix in WRAPPER_PREFIXES:
        if state_dict and all(name.startswith(prefix) for name in state_dict):
            state_dict = {name[len(prefix):]: tensor for name, tensor in state_dict.items()}
    return standalone_tensors(state_dict)


def standalone_tensors(state_dict: dict) -> dict:
    """Every tensor contiguous, in float32 where it is floating point, and in a storage of its own. A checkpoint
    saved by other code may share one tensor between modules (the official UNet saved with rotary-embedding-torch
    0.9.1 keeps one rotary `freqs` in every block), hold views and transposes, or be in half precision: the
    model would then share or view those storages too, which safetensors refuses to save. Float32 is exact for
    fp16 and bf16 values."""
    seen, out = set(), {}
    for name, tensor in state_dict.items():
        if tensor.is_floating_point() and tensor.dtype != torch.float32:
            tensor = tensor.float()  # a new storage
        else:
            storage = tensor.untyped_storage()
            whole = tensor.is_contiguous() and storage.nbytes() == tensor.numel() * tensor.element_size()
            if storage.data_ptr() in seen or not whole:
                tensor = tensor.contiguous().clone()
        seen.add(tensor.untyped_storage().data_ptr())
        out[name] = tensor
    return out


def check_state_dict(expected: dict, found: dict, what: str) -> None:
    """Strict comparison of two {name: tensor or shape}: same names, same shapes, or a named error."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    mismatched = sorted(
        f"{k}: checkpoint {tuple(_shape(found[k]))} vs model {tuple(_shape(expected[k]))}"
        for k in set(expected) & set(found)
        if tuple(_shape(expected[k])) != tuple(_shape(found[k]))
    )
    problems = []
    if missing:
        problems.append(f"{len(missing)} model tensors missing from the checkpoint: {_first(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} checkpoint tensors the model does not have: {_first(unexpected)}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches: {_first(mismatched)}")
    if problems:
        raise CheckpointMismatchError(f"{what} does not match the model; " + "; ".join(problems))


def convert_base(state_dict: dict, unet2d_config: dict | None = None, what: str = "checkpoint"):
    """The base UNet holding exactly the checkpoint's tensors (strict)."""
    return _convert_sd_unet(state_dict, unet2d_config, what, block_design="base")


def convert_interpolation(state_dict: dict, unet2d_config: dict | None = None, what: str = "checkpoint"):
    """The interpolation UNet (8 input channels: noisy + conditioning latents) holding the checkpoint's tensors."""
    return _convert_sd_unet(state_dict, unet2d_config, what, block_design="interpolation", in_channels=8)


def _convert_sd_unet(state_dict, unet2d_config, what, **settings):
    # The official models normalise over all frames of a video, so the converted ones do too.
    config = config_from_2d(unet2d_config or sd14_unet_config(), group_norm_across_frames=True) | settings
    with torch.device("meta"):  # no memory is allocated until the checkpoint's tensors are assigned
        model = UNet3DConditionModel(**config)
    check_state_dict(model.state_dict(), state_dict, what)
    model.load_state_dict(state_dict, strict=True, assign=True)
    return model.eval()


def convert_vsr(state_dict: dict, unet2d_config: dict | None = None, what: str = "checkpoint"):
    """The video super-resolution UNet holding exactly the checkpoint's tensors (strict); the default 2D
    config is the SD x4 upscaler's. Like the other official models, it normalises across frames."""
    config = vsr_config_from_2d(unet2d_config or sd_x4_upscaler_unet_config(), group_norm_across_frames=True)
    with torch.device("meta"):  # no memory is allocated until the checkpoint's tensors are assigned
        model = UNet3DVSRModel(**config)
    check_state_dict(model.state_dict(), state_dict, what)
    model.load_state_dict(state_dict, strict=True, assign=True)
    return model.eval()


CONVERTERS = {"base": convert_base, "interpolation": convert_interpolation, "vsr": convert_vsr}
STAGES = tuple(CONVERTERS)


def convert_checkpoint(stage: str, input_path, output_dir, unet_config_path=None) -> Path:
    """Convert a released checkpoint into a `from_pretrained`-loadable folder; returns that folder."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; supported: {', '.join(STAGES)}")
    unet2d_config = None
    if unet_config_path is not None:
        unet_config_path = Path(unet_config_path)
        if not unet_config_path.is_file():
            raise FileNotFoundError(f"UNet config not found: {unet_config_path}")
        unet2d_config = json.loads(unet_config_path.read_text())
    model = CONVERTERS[stage](load_checkpoint(input_path), unet2d_config, what=f"checkpoint {input_path}")
    output_dir = Path(output_dir)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OSError(f"cannot create output folder {output_dir}: {error.strerror}") from error
    model.save_pretrained(output_dir)
    return output_dir


def _shape(value):
    return value.shape if torch.is_tensor(value) else value


def _first(items, n=8):
    shown = ", ".join(items[:n])
    return shown + (f", ... ({len(items) - n} more)" if len(items) > n else "")
