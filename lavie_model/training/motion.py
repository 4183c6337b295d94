"""The tiny LaVie's video pretraining: the base or interpolation stage trained long on clips of the shapes grammar
rendered on the training device, in one process, resumable.

LaVie's released stages were trained on millions of clips (Vimeo25M, WebVid) before anyone fine-tuned them; the
tiny world's equivalent is this loop: shapes clips drawn and rendered per step (scenes.render_clips; no data
runs out, combinations in scenes.HELD_OUT are never drawn), encoded by the frozen VAE, with the trainer's own
loss (stages.training_loss), optimizer groups (trainer.optimizer_and_schedule) and an EMA of the weights.
`lavie_model.tiny.tiny_lavie` drives it and ships the result; `lavie train` (DeepSpeed, curated shards) fine-tunes
what it ships.

    run_dir/checkpoint.pt   weights, optimizer, schedule, EMA and step, and the text encoder's weights and EMA
                            where it trains (replaced atomically every `checkpoint_every` steps; a rerun resumes
                            from it: every draw depends on (seed, step) only, so a resumed run repeats the
                            uninterrupted one)
    run_dir/metrics.jsonl   loss, learning rate, samples/s every `log_every` steps
    run_dir/curve.jsonl     the probe's scores of the EMA weights every `eval_every` steps (0: before any step)
    run_dir/recipe.json     the recipe
"""

import copy
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .scenes import ClipMotion, random_scenes, render_clips, still_caption


@dataclass
class MotionRecipe:
    stage: str = "base"             # base or interpolation
    steps: int = 4000
    batch_size: int = 64            # clips per step
    learning_rate: float = 1e-3     # the temporal layers' (and for interpolation, every weight's) rate
    lr_2d_scale: float = 0.1        # base: the inherited 2D weights' rate relative to it (0: frozen)
    weight_decay: float = 0.01
    warmup_steps: int = 100
    max_grad_norm: float = 1.0
    ema_decay: float = 0.995
    snr_gamma: float = 0.0
    high_noise_fraction: float = 0.0  # samples whose timestep is drawn from the noisier half (stages.training_loss)
    text_drop: float = 0.1
    text_lr: float = 0.0            # base: the text encoder's rate (0: frozen, as the tiny world's random CLIP was)
    image_frames: int = 1           # base: rendered stills appended per clip (joint image-video training)
    still_fraction: float = 0.1     # clips whose shape stands still ("standing still")
    travel: float = 0.5             # fraction of the frame side the shape crosses over a clip (corpus: 0.5)
    clip_frames: tuple[int, ...] = (16, 24, 32)  # clip lengths at 8 fps that the windows are cut from
    frame_stride: int = 2           # base: spacing of the window's frames (interpolation: 1)
    interpolation_target: str = "frames"  # interpolation: what the UNet denoises (models.unet_3d.INTERPOLATION_TARGETS)
    init_unet: str = ""             # a UNet folder of the stage to start from instead of the model folder's
    seed: int = 0
    log_every: int = 50
    eval_every: int = 500
    checkpoint_every: int = 500
    extra: dict = field(default_factory=dict)  # free-form notes recorded with the run

    def training_settings(self) -> dict:
        """The entries trainer.optimizer_and_schedule reads."""
        return {"learning_rate": self.learning_rate, "lr_2d_scale": self.lr_2d_scale,
                "weight_decay": self.weight_decay, "warmup_steps": self.warmup_steps}


def rendered_batch(recipe: MotionRecipe, step: int, num_frames: int, size: int, device) -> dict:
    """Step `step`'s batch, a function of (seed, step) only: frames (b, f, 3, size, size) in [-1, 1] and
    captions; for the base stage also `image_frames` stills per clip with their own captions."""
    rng = np.random.default_rng([recipe.seed, step])
    b = recipe.batch_size
    interpolation = recipe.stage == "interpolation"
    stride = 1 if interpolation else recipe.frame_stride
    motion = ClipMotion(recipe.travel, recipe.clip_frames)
    scenes = random_scenes(rng, b, still_fraction=recipe.still_fraction)
    frames = render_clips(scenes, motion.positions(rng, b, num_frames, stride), recipe.travel, size, device)
    drop = rng.random(b) < recipe.text_drop
    batch = {"frames": frames * 2 - 1, "caption": ["" if d else s.caption() for s, d in zip(scenes, drop)]}
    if not interpolation and recipe.image_frames:
        m = recipe.image_frames
        stills = random_scenes(rng, b * m, still_fraction=0.5)
        images = render_clips(stills, rng.random((b * m, 1)), recipe.travel, size, device)  # (b m, 1, 3, s, s)
        captions = [s.caption() if s.direction else still_caption(s.colour, s.shape, s.background) for s in stills]
        captions = ["" if d else c for c, d in zip(captions, rng.random(b * m) < recipe.text_drop)]
        batch["images"] = images.view(b, m, *images.shape[2:]) * 2 - 1
        batch["image_captions"] = [captions[i * m:(i + 1) * m] for i in range(b)]
    return batch


def save_checkpoint(path: Path, state: dict) -> None:
    staging = path.with_name(path.name + ".partial")
    torch.save(state, staging)
    os.replace(staging, path)


def train_motion(model_folder, run_dir, recipe: MotionRecipe, preset: dict, device="cpu",
                 probe: Callable[..., dict] | None = None, log=print, deadline: float | None = None, *,
                 compile: str | None = None, autocast: bool | None = None,
                 cache_captions: bool = True) -> tuple[torch.nn.Module, int, torch.nn.Module | None]:
    """Train the recipe's stage of `model_folder` (a cascade folder; interpolation starts from its base UNet as
    in the paper unless the folder's own is trained) to `recipe.steps`, resuming from run_dir/checkpoint.pt when
    there is one, or until time.time() passes `deadline` (then checkpointed and probed at the step reached).
    `probe(step, ema_unet)` scores the EMA weights every `eval_every` steps (where `recipe.text_lr` trains the
    text encoder: `probe(step, ema_unet, text_encoder=ema_text_encoder)`); its dict goes to curve.jsonl.

    Speed options, outside the recipe (the checkpoint is the same whichever are set):
        compile         torch.compile mode of the UNet's training forward and backward: "default",
                        "reduce-overhead" (CUDA graphs), "max-autotune", ...; None: eager. Its losses equal eager's
                        to rounding (and the EMA update runs as foreach ops, rounding differently), so a run
                        resumes exactly under the same setting
        autocast        bf16 autocast of the step; None: on CUDA only
        cache_captions  encode each caption once (the grammar's captions are finite; exact while the text encoder
                        is frozen, bit-identical on the CPU); off where `recipe.text_lr` trains the text encoder

    Returns the UNet holding the EMA weights (fp32, on the CPU), the step reached, and the text encoder holding
    its EMA weights (fp32, on the CPU) where `recipe.text_lr` trains it, else None."""
    from diffusers.training_utils import EMAModel

    from ..models.unet_3d import UNet3DConditionModel
    from .export import ema_model
    from .stages import interpolation_starts_from_base, load_parts, load_unet, sample_generators, training_loss
    from .trainer import optimizer_and_schedule, truncate_log

    if recipe.stage not in ("base", "interpolation"):
        raise ValueError(f"motion pretraining trains the base or interpolation stage, not {recipe.stage!r}")
    if recipe.text_lr and recipe.stage != "base":
        raise ValueError("text_lr trains the cascade's text encoder in the base stage only; the interpolation "
                         "stage reads it as the base left it")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    parts = load_parts(model_folder, recipe.stage).to(device, torch.float32)
    if recipe.init_unet:  # continue from an earlier run's weights (a new optimizer and schedule)
        unet = UNet3DConditionModel.from_pretrained(recipe.init_unet, torch_dtype=torch.float32).to(device)
    else:
        unet = load_unet(model_folder, recipe.stage).to(device)
    if recipe.stage == "interpolation" and unet.config.interpolation_target != recipe.interpolation_target:
        if not interpolation_starts_from_base(model_folder):  # a trained interpolation UNet: keep its target
            raise ValueError(f"{model_folder}'s interpolation UNet denoises {unet.config.interpolation_target!r}, "
                             f"not the recipe's {recipe.interpolation_target!r}")
        unet.register_to_config(interpolation_target=recipe.interpolation_target)  # fresh from the base UNet
    unet.train()
    optimizer, schedule = optimizer_and_schedule(unet, recipe.training_settings(), recipe.stage)
    trainable = [p for p in unet.parameters() if p.requires_grad]
    ema = EMAModel([p.detach().clone() for p in trainable], decay=recipe.ema_decay, foreach=compile is not None)
    text_params, text_ema = [], None
    if recipe.text_lr:  # the text encoder learns too, in its own group under the same warm-up, with its own EMA
        text_params = list(parts.text_encoder.requires_grad_(True).parameters())
        optimizer.add_param_group({"params": text_params, "lr": recipe.text_lr})
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule.lr_lambdas[0])
        text_ema = EMAModel([p.detach().clone() for p in text_params], decay=recipe.ema_decay,
                            foreach=compile is not None)
    elif cache_captions:
        parts.caption_cache = {}  # caption -> (tokens, dim) embedding (stages.embed)
    data = preset["data"]
    num_frames = 4 * preset["training"]["interpolation"]["keyframes"] - 3 if recipe.stage == "interpolation" \
        else data["num_frames"]
    size = data["latent_size"][0] * parts.vae_scale

    checkpoint, step = run_dir / "checkpoint.pt", 0
    recorded = json.loads(json.dumps(asdict(recipe)))
    if checkpoint.exists():
        state = torch.load(checkpoint, map_location=device, weights_only=True)
        # a field added since the checkpoint was written holds its default there
        if json.loads(json.dumps(asdict(MotionRecipe(**state["recipe"])))) != recorded:
            raise ValueError(f"{checkpoint} was written by another recipe; use another run folder or the same "
                             f"recipe (recorded in {run_dir / 'recipe.json'})")
        unet.load_state_dict(state["unet"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        ema.load_state_dict(state["ema"])
        if text_ema is not None:
            parts.text_encoder.load_state_dict(state["text_encoder"])
            text_ema.load_state_dict(state["text_ema"])
        step = state["step"]
        log(f"resumed {run_dir} at step {step}")
    (run_dir / "recipe.json").write_text(json.dumps(asdict(recipe), indent=2) + "\n")
    for name in ("metrics.jsonl", "curve.jsonl"):  # drop rows past the checkpoint (a run killed after it)
        truncate_log(run_dir / name, step)
    # the module that steps; a compiled one shares unet's parameters (the optimizer's, the EMA's, the checkpoint's)
    model = unet if compile is None else torch.compile(unet, mode=compile, dynamic=False)
    bf16 = device.type == "cuda" if autocast is None else autocast
    log(f"compile {compile}, bf16 autocast {bf16}, caption cache {parts.caption_cache is not None}")

    def averaged() -> torch.nn.Module:
        copy_ = copy.deepcopy(unet).eval()
        ema.copy_to([p for p in copy_.parameters() if p.requires_grad])
        return copy_

    def averaged_text_encoder() -> torch.nn.Module | None:
        if text_ema is None:
            return None
        copy_ = copy.deepcopy(parts.text_encoder).eval()
        text_ema.copy_to(list(copy_.parameters()))
        return copy_.requires_grad_(False)

    def evaluate(at: int, loss: float) -> None:
        if probe is None:
            return
        text = {} if text_ema is None else {"text_encoder": averaged_text_encoder()}
        scores = probe(at, averaged(), **text) | {"step": at, "samples": at * recipe.batch_size, "loss": loss}
        with open(run_dir / "curve.jsonl", "a") as out:
            out.write(json.dumps(scores) + "\n")

    if step == 0 and recipe.eval_every:
        evaluate(0, math.nan)
    losses, started, recent = [], time.perf_counter(), math.nan
    while step < recipe.steps:
        batch = rendered_batch(recipe, step, num_frames, size, device)
        generators = sample_generators(recipe.seed, 0, step * recipe.batch_size, recipe.batch_size)
        if compile is not None:
            torch.compiler.cudagraph_mark_step_begin()  # reduce-overhead: the last step's graph outputs are done with
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = training_loss(model, parts, batch, generators, snr_gamma=recipe.snr_gamma,
                                 high_noise_fraction=recipe.high_noise_fraction)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable + text_params, recipe.max_grad_norm)
        optimizer.step()
        schedule.step()
        ema.step(trainable)
        if text_ema is not None:
            text_ema.step(text_params)
        step += 1
        losses.append(loss.detach())  # read when logged: no wait on the device every step
        last = step == recipe.steps or (deadline is not None and time.time() > deadline)
        if step % recipe.log_every == 0 or last:
            seconds = time.perf_counter() - started
            row = {"step": step, "loss": sum(value.item() for value in losses) / len(losses),
                   "lr": schedule.get_last_lr()[0], "grad_norm": float(grad_norm),
                   "samples_per_s": len(losses) * recipe.batch_size / seconds}
            with open(run_dir / "metrics.jsonl", "a") as out:
                out.write(json.dumps(row) + "\n")
            log(f"step {step}/{recipe.steps} loss {row['loss']:.4f} {row['samples_per_s']:.0f} clips/s")
            recent, losses, started = row["loss"], [], time.perf_counter()
        if step % recipe.checkpoint_every == 0 or last:
            text = {} if text_ema is None else {"text_encoder": parts.text_encoder.state_dict(),
                                                "text_ema": text_ema.state_dict()}
            save_checkpoint(checkpoint, {"unet": unet.state_dict(), "optimizer": optimizer.state_dict(),
                                         "schedule": schedule.state_dict(), "ema": ema.state_dict(), "step": step,
                                         "recipe": recorded} | text)
        if recipe.eval_every and (step % recipe.eval_every == 0 or last):
            evaluate(step, recent)
        if last:
            break
    return ema_model(unet, ema), step, averaged_text_encoder()
