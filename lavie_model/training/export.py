"""Export a trained stage: the input model folder with that stage's UNet replaced by its EMA weights (fp32)."""

import json
import os
import shutil
import tempfile
from pathlib import Path


def link_or_copy(source, target) -> None:
    """Hard-link a file (no extra space for the frozen components), or copy it across file systems."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def export_model(source, output, unet_name: str, module, ema, info: dict) -> Path:
    """Write `output` (replacing it whole, never half-written) from folder `source`: every component as there,
    `unet_name` as `module`'s config with the EMA weights; model_index.json records `info` under training."""
    source, output = Path(source), Path(output)
    trainable = [name for name, p in module.named_parameters() if p.requires_grad]
    weights = {name: p.detach().float().cpu() for name, p in module.state_dict(keep_vars=True).items()}
    weights |= {name: shadow.detach().float().cpu() for name, shadow in zip(trainable, ema.shadow_params)}
    unet = type(module).from_config(module.config)
    unet.load_state_dict(weights)

    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        for entry in source.iterdir():
            if entry.is_dir() and entry.name != unet_name:
                shutil.copytree(entry, staging / entry.name, copy_function=link_or_copy)
        unet.save_pretrained(staging / unet_name)
        index = json.loads((source / "model_index.json").read_text())
        index.setdefault(unet_name, ["lavie_model", type(module).__name__])
        index["training"] = index.get("training", {}) | {info["stage"]: info}
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
