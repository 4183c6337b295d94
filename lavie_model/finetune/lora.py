"""LoRA adapters for the cascade's UNets (peft): which layers they adapt, and saving, loading and merging them.

An adapter folder, in peft's layout:
    adapter_config.json         peft's LoraConfig: r, lora_alpha, lora_dropout, target_modules (a regex)
    adapter_model.safetensors   the lora_A / lora_B weights under peft's names (get_peft_model_state_dict);
                                its header names the stage and the SHA-256 of the UNet weight files it was
                                trained on (base_identity)

An adapter fits one stage of one base model: loading it into another stage or onto other weights fails, naming
both. A rank-r adapter on a (d_out, d_in) projection adds r * (d_in + d_out) weights; merged at scale s it adds
s * (alpha / r) * B @ A to the projection's weight.
"""

import json
import re
from pathlib import Path

import torch

CONFIG, WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
# name patterns of the layers adapted (matched against whole module names, as peft does with a string)
_ATTENTION = r"\.(to_q|to_k|to_v|to_out\.0)"
TARGETS = {
    # spatial self- and cross-attention and temporal attention projections (the base and interpolation UNets'
    # attn1, attn2, attn_temp; the VSR UNet's attn1, attn2, attn_temporal)
    "attention": rf".*\.(attn1|attn2|attn_temp|attn_temporal){_ATTENTION}",
    "temporal": rf".*\.(attn_temp|attn_temporal){_ATTENTION}",  # the temporal attention alone: a motion adapter
    "linear": None,  # every nn.Linear of the UNet (made into a pattern by target_pattern)
}
DEFAULT_NAME = "default"


def target_pattern(unet: torch.nn.Module, targets: str) -> str:
    """The module-name regex of a target set (a TARGETS key, or a regex of one's own); fails when it matches
    no linear layer of `unet`."""
    pattern = TARGETS.get(targets, targets)
    if pattern is None:  # every linear layer, by name
        names = [name for name, module in unet.named_modules() if isinstance(module, torch.nn.Linear)]
        pattern = "|".join(re.escape(name) for name in names)
    try:
        matched = [name for name, module in unet.named_modules()
                   if isinstance(module, torch.nn.Linear) and re.fullmatch(pattern, name)]
    except re.error as error:
        raise ValueError(f"LoRA targets {targets!r}: not one of {', '.join(TARGETS)}, nor a valid regex: "
                         f"{error}") from None
    if not matched:
        raise ValueError(f"LoRA targets {targets!r} match no linear layer of the {type(unet).__name__}: choose one "
                         f"of {', '.join(TARGETS)}, or a regex of module names")
    return pattern


_FILE_HASHES: dict[tuple, str] = {}  # (path, size, mtime_ns) -> SHA-256: a process reads each weight file once


def base_identity(unet: torch.nn.Module) -> str:
    """The SHA-256 of the weight files `unet` was loaded from (its folder's *.safetensors): what an adapter
    trained on it records, whatever dtype either is loaded in. Each file is hashed once per process while its
    size and modification time stay (a paper-size UNet is 3.4 GB: loading several adapters reads it once)."""
    import hashlib

    from ..curation.probe import sha256_of

    folder = Path(unet.config.get("_name_or_path") or "")
    files = sorted(folder.glob("*.safetensors")) if str(folder) not in ("", ".") else []
    if not files:
        raise ValueError(f"this {type(unet).__name__} was not loaded from a folder of safetensors weights "
                         f"({str(folder) or 'no folder'}): a LoRA adapter names the weights it fits")
    digest = hashlib.sha256()
    for file in files:
        stat = file.stat()
        key = (str(file.resolve()), stat.st_size, stat.st_mtime_ns)
        if key not in _FILE_HASHES:
            _FILE_HASHES[key] = sha256_of(file)
        digest.update(f"{file.name} {_FILE_HASHES[key]}\n".encode())
    return digest.hexdigest()


def add_lora(unet: torch.nn.Module, rank: int, alpha: float | None = None, dropout: float = 0.0,
             targets: str = "attention", name: str = DEFAULT_NAME, seed: int = 0):
    """Freeze every weight of `unet` and add a trainable rank-`rank` adapter `name` to the `targets` layers
    (alpha defaults to the rank: scaling 1). lora_B starts at zero, so the model's output is unchanged; lora_A
    starts random, drawn from `seed` (the same on every rank and every run). Returns the peft LoraConfig."""
    from peft import LoraConfig, inject_adapter_in_model

    if rank < 1:
        raise ValueError(f"LoRA rank must be at least 1, got {rank}")
    config = LoraConfig(r=rank, lora_alpha=alpha or rank, lora_dropout=dropout,
                        target_modules=target_pattern(unet, targets))
    unet.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        inject_adapter_in_model(config, unet, adapter_name=name)
    for parameter_name, parameter in unet.named_parameters():
        parameter.requires_grad_(".lora_" in parameter_name and f".{name}." in parameter_name + ".")
    return config


def save_adapter(folder, state: dict, config, stage: str, base_id: str) -> Path:
    """Write an adapter folder: peft's config and weights, the header naming the stage and the base UNet."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG).write_text(json.dumps(config.to_dict(), indent=2, default=str) + "\n")
    save_file(state, folder / WEIGHTS, metadata={"format": "pt", "lavie_stage": stage, "lavie_base_unet": base_id})
    return folder


def read_adapter(folder) -> tuple[object, dict, dict]:
    """An adapter folder's LoraConfig, weights and header ({"lavie_stage", "lavie_base_unet"})."""
    from peft import LoraConfig
    from safetensors import safe_open
    from safetensors.torch import load_file

    folder = Path(folder)
    for needed in (CONFIG, WEIGHTS):
        if not (folder / needed).is_file():
            raise FileNotFoundError(f"{folder} is not a LoRA adapter folder: it has no {needed}")
    with safe_open(folder / WEIGHTS, "pt") as handle:
        header = handle.metadata() or {}
    if "lavie_stage" not in header:
        raise ValueError(f"{folder / WEIGHTS} does not name the stage and base UNet it adapts (not written by "
                         "`lavie train --lora`)")
    return LoraConfig.from_pretrained(str(folder)), load_file(folder / WEIGHTS), header


def load_adapter(unet: torch.nn.Module, folder, stage: str, base_id: str, name: str) -> None:
    """Add the adapter in `folder` to `unet` (the `stage` UNet whose weights have SHA-256 `base_id`) as `name`;
    fails, naming both, when the adapter was trained for another stage or on other weights."""
    from peft import inject_adapter_in_model, set_peft_model_state_dict

    config, state, header = read_adapter(folder)
    if header["lavie_stage"] != stage:
        raise ValueError(f"LoRA adapter {folder} adapts the {header['lavie_stage']} stage, not the {stage} stage")
    if header["lavie_base_unet"] != base_id:
        raise ValueError(f"LoRA adapter {folder} was trained on a {stage} UNet with weights "
                         f"{header['lavie_base_unet'][:16]}..., but this model's {stage} UNet has weights "
                         f"{base_id[:16]}...: load it onto the model it was trained from")
    inject_adapter_in_model(config, unet, adapter_name=name)
    result = set_peft_model_state_dict(unet, state, adapter_name=name)
    missing = [key for key in result.missing_keys if ".lora_" in key and f".{name}." in key]
    if result.unexpected_keys or missing:
        raise ValueError(f"LoRA adapter {folder} does not fit this {stage} UNet: unexpected "
                         f"{result.unexpected_keys[:3]}, missing {missing[:3]}")
    unet.requires_grad_(False)


def set_adapters(unet: torch.nn.Module, names: list[str], scales: list[float]) -> None:
    """Make `names` the active adapters of `unet`, adapter i scaled by scales[i] (0: as if absent)."""
    from diffusers.utils.peft_utils import set_weights_and_activate_adapters

    if len(names) != len(scales):
        raise ValueError(f"{len(names)} adapters but {len(scales)} scales")
    set_weights_and_activate_adapters(unet, list(names), list(scales))


def adapter_names(unet: torch.nn.Module) -> list[str]:
    """The adapters loaded into `unet`, in the order they were added."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in unet.modules():
        if isinstance(module, BaseTunerLayer):
            return list(module.lora_A.keys())
    return []


def merge(unet: torch.nn.Module) -> torch.nn.Module:
    """Fuse the active adapters, at their scales, into the weights they adapt and remove every adapter layer:
    `unet` becomes a plain model of its class (returned)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    tuned = [(name, module) for name, module in unet.named_modules() if isinstance(module, BaseTunerLayer)]
    for name, module in tuned:
        module.merge(adapter_names=module.active_adapters)
        parent_name, _, child = name.rpartition(".")
        setattr(unet.get_submodule(parent_name) if parent_name else unet, child, module.get_base_layer())
    return unet


def parse_spec(spec: str) -> tuple[str, float]:
    """`PATH[:SCALE]` -> (path, scale); the scale defaults to 1."""
    path, sep, scale = spec.rpartition(":")
    if sep:
        try:
            return path, float(scale)
        except ValueError:
            pass  # a colon in the path itself
    return spec, 1.0


def merge_into_folder(model, specs: list[str], output) -> Path:
    """Write model folder `output`: `model` with each `PATH[:SCALE]` adapter fused into the UNet of its stage."""
    from ..model_folder import UNET, load_components
    from ..training.export import replace_component

    by_stage: dict[str, list[tuple[str, float]]] = {}
    for spec in specs:
        path, scale = parse_spec(spec)
        by_stage.setdefault(read_adapter(path)[2]["lavie_stage"], []).append((path, scale))
    source = model
    for stage, adapters in by_stage.items():
        unet = load_components(model, [UNET[stage]], stage, torch.float32)[0][UNET[stage]]
        base_id = base_identity(unet)
        for i, (path, _) in enumerate(adapters):
            load_adapter(unet, path, stage, base_id, f"adapter{i}")
        set_adapters(unet, [f"adapter{i}" for i in range(len(adapters))], [scale for _, scale in adapters])
        info = {"stage": stage, "merged_lora": [{"path": str(Path(p).resolve()), "scale": s} for p, s in adapters]}
        source = replace_component(source, output, UNET[stage], merge(unet), info)
    return Path(output)
