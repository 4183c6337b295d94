"""Learning curves of the base stage in one process: fine-tune, and at chosen step counts hand the EMA weights to
a probe. The trainer's own loss, data stream, optimizer and EMA, without DeepSpeed or checkpoints: for questions
about a recipe (how many steps until the samples follow their prompts; which temporal module learns motion) that
one evaluation after a run cannot answer. Used by benchmarks/shapes_learning.py and lavie_model/tiny/ablations.py.
"""

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass
class CurveData:
    videos: list[Path]
    images: list[Path] | None  # None: videos only
    exclude_words: tuple[str, ...] = ()  # video clips whose caption names any of these are left out
    workers: int = 1


def base_curve(unet, parts, preset: dict, data: CurveData, evals: list[int], seed: int,
               probe: Callable[[int, torch.nn.Module, float], None], device="cpu") -> list[float]:
    """Fine-tune `unet` (the base stage's UNet3DConditionModel, on `device`) to max(evals) steps of the preset's
    `training` settings; at each step count of `evals` (0: before any step) call probe(step, ema_unet,
    mean loss of the last 10 steps), ema_unet a copy holding the EMA weights. Returns the loss of every step."""
    from diffusers.training_utils import EMAModel
    from torch.utils.data import DataLoader

    from .data import TrainingStream, collate
    from .stages import sample_generators, stage_data, training_loss
    from .trainer import optimizer_and_schedule

    training = preset["training"]
    batch_size = training["batch_size"]
    if min(evals) < 0:
        raise ValueError(f"evaluation step counts must be >= 0, got {sorted(evals)}")
    torch.manual_seed(seed)
    unet.train()
    optimizer, schedule = optimizer_and_schedule(unet, training, "base")
    ema = EMAModel([p.detach().clone() for p in unet.parameters()], decay=training["ema_decay"])
    stage = stage_data("base", preset, parts.vae_scale)
    images = data.images if stage.image_frames else None
    stream = TrainingStream(data.videos, stage, seed, images=images, shuffle_buffer=training["shuffle_buffer"],
                            batch_size=batch_size, validation_percent=training["validation_percent"],
                            exclude_words=data.exclude_words)
    loader = iter(DataLoader(stream, batch_size=batch_size, num_workers=data.workers, collate_fn=collate))
    losses = []
    for step in range(max(evals) + 1):
        if step:
            batch = next(loader)
            generators = sample_generators(seed, 0, (step - 1) * batch_size, len(batch["key"]))
            loss = training_loss(unet, parts, batch, generators, snr_gamma=training["snr_gamma"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(unet.parameters(), training["max_grad_norm"])
            optimizer.step()
            schedule.step()
            ema.step(unet.parameters())
            losses.append(loss.item())
        if step in evals:
            averaged = copy.deepcopy(unet).eval()
            ema.copy_to(averaged.parameters())
            recent = losses[-10:]
            probe(step, averaged, sum(recent) / len(recent) if recent else float("nan"))
    return losses
