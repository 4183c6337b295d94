"""Writing trained weights back as a model folder: the input folder with one component replaced."""

import json
import os
import shutil
import tempfile
from pathlib import Path


def link_or_copy(source, target) -> None:
    """Hard-link a file (no extra space for the untouched components), or copy it across file systems."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def ema_model(module, ema):
    """A fresh fp32 copy of `module` holding the EMA weights of its trainable parameters; where those are a LoRA
    adapter's (lavie_model/finetune/lora.py), a plain model with the EMA adapter fused into the weights it adapts."""
    trainable = [name for name, p in module.named_parameters() if p.requires_grad]
    weights = {name: p.detach().float().cpu() for name, p in module.state_dict(keep_vars=True).items()}
    weights |= {name: shadow.detach().float().cpu() for name, shadow in zip(trainable, ema.shadow_params)}
    for name in [name for name in weights if ".lora_A." in name]:  # W += B @ A * alpha / r
        prefix, _, adapter = name.partition(".lora_A.")
        adapter = adapter.removesuffix(".weight")
        delta = weights[f"{prefix}.lora_B.{adapter}.weight"] @ weights[name]
        weights[f"{prefix}.base_layer.weight"] += delta * module.get_submodule(prefix).scaling[adapter]
    weights = {name.replace(".base_layer.", "."): value for name, value in weights.items() if ".lora_" not in name}
    model = type(module).from_config(module.config)
    model.load_state_dict(weights)
    return model


def replace_component(source, output, name: str, component, info: dict) -> Path:
    """Write `output` (replacing it whole, never half-written): folder `source` with `name` saved from
    `component`; model_index.json records `info` under "_training" (private: diffusers ignores it), keyed by
    info["stage"], and takes `name` off its "_untrained" list."""
    source, output = Path(source), Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        for entry in source.iterdir():
            if entry.is_dir() and entry.name != name:
                shutil.copytree(entry, staging / entry.name, copy_function=link_or_copy)
        component.save_pretrained(staging / name)
        index = json.loads((source / "model_index.json").read_text())
        index.setdefault(name, [type(component).__module__.split(".")[0], type(component).__name__])
        index["_training"] = index.get("_training", {}) | {info["stage"]: info}
        if name in index.get("_untrained", []):  # trained now (model_folder.UNTRAINED)
            index["_untrained"] = [other for other in index["_untrained"] if other != name]
        (staging / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
        previous = output.with_name(f".{output.name}.previous")
        if output.exists():
            output.rename(previous)
        staging.rename(output)
        shutil.rmtree(previous, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output
