"""Presets: one YAML file per preset under lavie_model/configs/, read by the whole project."""

from importlib import resources
from pathlib import Path

import yaml

PRESETS = ("tiny", "paper")
REQUIRED = {
    "model": ("unet_2d", "group_norm_across_frames"),
    "data": ("num_frames", "latent_size", "fps"),
    "scheduler": ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule"),
    "sampling": ("base", "interpolation", "vsr"),
}


def load_preset(name_or_path: str) -> dict:
    """A preset by name (`tiny`, `paper`) or from a YAML file path, checked for its required entries."""
    if name_or_path in PRESETS:
        text = resources.files("lavie_model.configs").joinpath(f"{name_or_path}.yaml").read_text()
        source = f"preset {name_or_path!r}"
    else:
        path = Path(name_or_path)
        if not path.is_file():
            raise FileNotFoundError(
                f"unknown preset {name_or_path!r}: not one of {', '.join(PRESETS)} and no such file")
        text, source = path.read_text(), f"preset file {path}"
    preset = yaml.safe_load(text)
    if not isinstance(preset, dict):
        raise ValueError(f"{source} is not a mapping")
    for section, keys in REQUIRED.items():
        if not isinstance(preset.get(section), dict):
            raise ValueError(f"{source} lacks the section {section!r}")
        missing = [key for key in keys if key not in preset[section]]
        if missing:
            raise ValueError(f"{source}: section {section!r} lacks {', '.join(missing)}")
    return preset


def base_unet_config(preset: dict) -> dict:
    """The `UNet3DConditionModel` config of a preset's base stage."""
    from .models import config_from_2d  # torch and diffusers: not loaded by callers that only read presets

    model = preset["model"]
    return config_from_2d(model["unet_2d"], group_norm_across_frames=model["group_norm_across_frames"])


def build_base_unet(preset: dict):
    """A randomly initialised base `UNet3DConditionModel` of the preset's size."""
    from .models import UNet3DConditionModel

    return UNet3DConditionModel(**base_unet_config(preset))
