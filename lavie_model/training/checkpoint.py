"""Training checkpoints: everything needed to continue a run exactly, the last K kept, `latest` swapped atomically.

    RUN_DIR/checkpoints/step_00000100/   DeepSpeed's model, optimizer and LR-scheduler states (its own layout),
                                         ema.pt (the EMA weights), trainer_rank{r}.pt (step, RNG states)
    RUN_DIR/checkpoints/latest           the tag of the newest complete checkpoint

A checkpoint counts only once `latest` names it, so a run killed while saving resumes from the one before.
"""

import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

LATEST = "latest"


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def latest_tag(folder: Path) -> str | None:
    pointer = Path(folder) / LATEST
    if not pointer.is_file():
        return None
    tag = pointer.read_text().strip()
    if not (Path(folder) / tag).is_dir():
        raise FileNotFoundError(f"{pointer} names {tag}, which is missing: the checkpoints were changed by hand")
    return tag


def write_latest(folder: Path, tag: str) -> None:
    partial = Path(folder) / f".{LATEST}.partial"
    partial.write_text(tag + "\n")
    os.replace(partial, Path(folder) / LATEST)


def prune(folder: Path, keep: int) -> list[str]:
    """Remove all but the newest `keep` complete checkpoints, and any newer than `latest` (left by a kill)."""
    latest = latest_tag(folder)
    tags = sorted(p.name for p in Path(folder).glob("step_*") if p.is_dir())
    complete = [t for t in tags if latest is not None and t <= latest]
    doomed = [t for t in tags if t not in complete[-max(keep, 1):]]
    for tag in doomed:
        shutil.rmtree(Path(folder) / tag, ignore_errors=True)
    return doomed


def rng_state() -> dict:
    """Every process-wide random state, as plain data (loadable with weights_only=True)."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    version, state, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [kind, keys.tolist(), position, has_gauss, cached],
        "python": [version, list(state), gauss],
    }


def set_rng_state(saved: dict) -> None:
    torch.set_rng_state(saved["torch"])
    if saved["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(saved["cuda"])
    kind, keys, position, has_gauss, cached = saved["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), position, has_gauss, cached))
    version, state, gauss = saved["python"]
    random.setstate((version, tuple(state), gauss))


def save(engine, ema, folder: Path, step: int, rank: int, keep: int, frozen_saved: bool = True) -> str:
    """Save a checkpoint on every rank; rank 0 then points `latest` at it and prunes old ones. Without
    `frozen_saved` (LoRA runs) the frozen weights are left out: they are the model folder's."""
    import deepspeed.comm as dist

    folder = Path(folder)
    tag = tag_for(step)
    engine.save_checkpoint(str(folder), tag=tag, client_state={"step": step}, save_latest=False,
                           exclude_frozen_parameters=not frozen_saved)
    torch.save({"step": step, "rng": rng_state()}, folder / tag / f"trainer_rank{rank}.pt")
    if rank == 0:
        torch.save(ema.state_dict(), folder / tag / "ema.pt")
    dist.barrier()
    if rank == 0:
        write_latest(folder, tag)
        prune(folder, keep)
    dist.barrier()
    return tag


def load(engine, ema, folder: Path, rank: int, frozen_saved: bool = True) -> int | None:
    """Restore the latest checkpoint into the engine, the EMA and the RNGs; its step, or None when there is none.
    `frozen_saved`: as given to `save` (without it the frozen weights stay as loaded from the model folder)."""
    folder = Path(folder)
    tag = latest_tag(folder)
    if tag is None:
        return None
    path, client = engine.load_checkpoint(str(folder), tag=tag, load_module_strict=frozen_saved)
    if path is None:
        raise FileNotFoundError(f"checkpoint {folder / tag} could not be loaded")
    ema.load_state_dict(torch.load(folder / tag / "ema.pt", weights_only=True))
    state = torch.load(folder / tag / f"trainer_rank{rank}.pt", weights_only=True)
    set_rng_state(state["rng"])
    if state["step"] != client["step"]:
        raise ValueError(f"checkpoint {folder / tag} is inconsistent: steps {state['step']} and {client['step']}")
    return state["step"]
