"""`lavie train`: joint image-video fine-tuning of one cascade stage, or pretraining of a stand-in, with DeepSpeed.

Run directly it trains as a single rank (on 127.0.0.1); under the `deepspeed` launcher on as many ranks and
nodes as it is given. Without CUDA it runs on the CPU (DS_ACCELERATOR=cpu, gloo). A run directory holds:

    RUN_DIR/checkpoints/           see checkpoint.py; `--resume` continues from the latest one exactly
    RUN_DIR/metrics.jsonl          one line per step: loss, lr, grad norm, samples/s, memory, skipped clips, and
                                   every `evaluate_every` steps the EMA weights' held-out scores ("probe")
    RUN_DIR/samples-rank{r}.jsonl  the sample keys each rank trained on, per step
    RUN_DIR/model/                 the input model folder with this stage's UNet replaced by its EMA weights
    RUN_DIR/run.json               the settings, the exact shard list (names, SHA-256), and whether the run read
                                   precomputed latents (`--latents`, see latents.py) or pixels, and why
    RUN_DIR/tensorboard/           the same metrics as TensorBoard scalars, per step (`--tracking`, tracking.py;
                                   RUN_DIR/mlflow/ with `--tracking mlflow`)
"""

import json
import math
import os
import socket
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

STAGES = ("t2i", "upscaler", "base", "interpolation", "vsr")
STAND_INS = ("t2i", "upscaler")  # pretrained here where no real weights exist: the preset's `pretraining` section
PROBED = ("t2i", "upscaler", "base")  # stages scored on held-out prompts or frames every `evaluate_every` steps


@dataclass
class TrainSettings:
    stage: str
    model: str                     # model folder to start from
    videos: str                    # video shards: paths, comma lists, brace patterns, globs or folders
    output: str                    # run directory
    preset: str = "tiny"
    images: str | None = None      # image shards (base stage)
    max_steps: int | None = None   # optimizer steps; the preset's by default
    resume: bool = False
    deepspeed_config: str | None = None  # JSON merged over the defaults
    overrides: dict = field(default_factory=dict)  # entries of the preset's `training` section
    seed: int = 0
    train_2d: bool = False         # VSR: train the upscaler's 2D weights too
    gradient_checkpointing: bool = False
    latents: str | None = None     # folder of latent shards (latents.py) to read instead of pixels when they match
    lora_rank: int = 0             # > 0: train a LoRA adapter of this rank (finetune/lora.py), the UNet frozen
    lora_alpha: float | None = None  # default: the rank
    lora_dropout: float = 0.0
    lora_targets: str = "attention"  # lora.TARGETS, or a regex of module names
    zero_stage: int = 2            # DeepSpeed ZeRO stage, 2 or 3
    offload_optimizer: bool = False  # optimizer states in CPU memory
    offload_params: bool = False   # ZeRO-3: weights in CPU memory
    tracking: str = "tensorboard"  # tensorboard, mlflow, both comma-separated, or none (tracking.py)


def override(name: str, value, default):
    """`value` for the training setting `name`, of the preset's type: "5e-4" (a string to YAML) is a number,
    and a section (`vsr={num_frames: 4}`) is merged over the preset's."""
    number = isinstance(default, (int, float)) and not isinstance(default, bool)
    if number and isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ValueError(f"training setting {name}: expected a number, got {value!r}") from None
    if number and isinstance(value, (int, float)) and not isinstance(value, bool):
        if isinstance(default, int):  # `number` has ruled out bool
            if value != int(value):
                raise ValueError(f"training setting {name}: expected a whole number, got {value!r}")
            return int(value)
        return float(value)
    if type(value) is not type(default):
        raise ValueError(f"training setting {name}: expected {type(default).__name__} like the preset's "
                         f"{default!r}, got {value!r}")
    if isinstance(default, dict):  # a section: the entries given replace the preset's, the rest stay
        return default | {key: override(f"{name}.{key}", item, default[key]) if key in default else item
                          for key, item in value.items()}
    return value


def parse_set(items: list[str]) -> dict:
    """`--set NAME=VALUE` entries as {name: value}, each value read as YAML (`vsr={num_frames: 4}`)."""
    import yaml

    overrides = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set takes name=value, got {item!r}")
        overrides[name.strip()] = yaml.safe_load(value)
    return overrides


def preset_with_overrides(name: str, overrides: dict, stage: str | None = None) -> dict:
    """The preset `name` with `overrides` applied to its `training` section, each of the preset's type. For a
    stand-in stage (t2i, upscaler) the preset's `pretraining.STAGE` entries are applied first."""
    from ..config import load_preset

    preset = load_preset(name)
    if "training" not in preset:
        raise ValueError(f"preset {name!r} has no `training` section")
    layers = [overrides]
    if stage in STAND_INS:
        pretraining = preset.get("pretraining", {}).get(stage)
        if pretraining is None:
            raise ValueError(f"preset {name!r} has no pretraining.{stage} section: it starts from pretrained Stable "
                             "Diffusion and x4 upscaler weights, so there is no stand-in to pretrain")
        layers.insert(0, pretraining)
    for layer in layers:
        unknown = sorted(set(layer) - set(preset["training"]))
        if unknown:
            raise ValueError(f"unknown training settings: {', '.join(unknown)}")
        preset["training"] |= {key: override(key, value, preset["training"][key]) for key, value in layer.items()}
    return preset


def optimizer_and_schedule(unet, training: dict, stage: str, lora: bool = False):
    """AdamW and its linear warm-up schedule, from the preset's `training` section, over the UNet's trainable
    weights. In the base stage the weights inherited from the text-to-image UNet learn at `lr_2d_scale` times
    the learning rate of the new temporal layers (0: frozen, as AnimateDiff trains its motion modules alone);
    the other stages, and every LoRA adapter's weights, train alike (the interpolation UNet puts all of its
    weights to new uses: conditioning channels, sparse-causal attention)."""
    import torch

    from ..models.unet_3d import TEMPORAL_KEYS

    rate = training["learning_rate"]
    scale = training["lr_2d_scale"] if stage == "base" and not lora else 1.0
    full, inherited = [], []  # learning at the full rate, and at the inherited weights' scaled rate
    for name, param in unet.named_parameters():
        if param.requires_grad:
            if scale == 1 or any(key in name for key in TEMPORAL_KEYS):
                full.append(param)
            elif scale == 0:
                param.requires_grad_(False)
            else:
                inherited.append(param)
    parameters = [{"params": full, "lr": rate}] + ([{"params": inherited, "lr": rate * scale}] if inherited else [])
    optimizer = torch.optim.AdamW(parameters, lr=rate, weight_decay=training["weight_decay"])
    warmup = max(1, training["warmup_steps"])
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))


def check(settings: TrainSettings) -> dict:
    """Everything that can be checked before training starts; returns the preset with overrides applied."""
    from .data import check_shards, expand_shards
    from .stages import check_folder, interpolation_starts_from_base
    from .tracking import parse

    if settings.stage not in STAGES:
        raise ValueError(f"unknown stage {settings.stage!r}; choose one of {', '.join(STAGES)}")
    preset = preset_with_overrides(settings.preset, settings.overrides, settings.stage)
    check_folder(settings.model, settings.stage)
    check_shards(expand_shards(settings.videos, "video shards"))  # shards from elsewhere: member names and sizes
    if settings.images:
        if settings.stage not in ("base", *STAND_INS):
            raise ValueError(f"image shards were given, but only the base stage and the stand-ins train on images, "
                             f"not {settings.stage}")
        check_shards(expand_shards(settings.images, "image shards"))
    if preset["training"]["evaluate_every"] and settings.stage not in PROBED:
        raise ValueError(f"evaluate_every is set, but the {settings.stage} stage has no held-out probe (only "
                         f"{', '.join(PROBED)} have): set it to 0")
    check_memory_modes(settings)
    parse(settings.tracking)
    if settings.lora_rank and settings.stage == "interpolation" and interpolation_starts_from_base(settings.model):
        raise ValueError(f"{settings.model} has no trained interpolation UNet: this stage would start from the "
                         "base UNet with new conditioning channels, which an adapter cannot learn; train it fully "
                         "first (without a LoRA rank)")
    if settings.deepspeed_config and not Path(settings.deepspeed_config).is_file():
        raise FileNotFoundError(f"DeepSpeed config not found: {settings.deepspeed_config}")
    checkpoints = Path(settings.output) / "checkpoints"
    if not settings.resume and checkpoints.is_dir() and any(checkpoints.iterdir()):
        raise FileExistsError(f"{settings.output} already holds checkpoints: pass --resume to continue that run, "
                              "or choose another output")
    return preset


def check_memory_modes(settings: TrainSettings) -> None:
    """The LoRA and ZeRO settings, each checked against the others (the model folder is check()'s)."""
    if settings.zero_stage not in (2, 3):
        raise ValueError(f"zero_stage must be 2 or 3, got {settings.zero_stage}")
    if settings.offload_params and settings.zero_stage != 3:
        raise ValueError("offload_params needs zero_stage 3 (only ZeRO-3 partitions the weights)")
    if settings.lora_rank < 0:
        raise ValueError(f"lora_rank must be 0 (full fine-tuning) or a rank of at least 1, got {settings.lora_rank}")
    if not settings.lora_rank:
        return
    if settings.train_2d:
        raise ValueError("train_2d trains the VSR UNet's 2D weights fully; with a LoRA rank only the adapter "
                         "trains: choose one")
    if not 0 <= settings.lora_dropout < 1:
        raise ValueError(f"lora_dropout must be in [0, 1), got {settings.lora_dropout}")


def single_rank_environment() -> None:
    """Outside a launcher: rank 0 of 1, rendezvous on a free local port; DeepSpeed on the CPU without CUDA."""
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(free_port()))


def release_shared_buffer(rank: int) -> None:
    """Unlink this rank's DeepSpeed CPU all-reduce buffer (67 MB in /dev/shm), which DeepSpeed never removes: each
    training process left one behind until /dev/shm filled. DeepSpeed's init maps every rank's buffer (waiting for
    each to appear), so after a barrier the names can go; the mappings live on for the process's collectives."""
    import torch

    torch.distributed.barrier()
    name = f"deepspeed_allreduce_buffer_{os.getuid()}_{os.environ['MASTER_ADDR']}_{os.environ['MASTER_PORT']}_{rank}"
    Path("/dev/shm", name).unlink(missing_ok=True)


def deepspeed_config(settings: TrainSettings, training: dict, cuda: bool) -> dict:
    config = {
        "train_micro_batch_size_per_gpu": training["batch_size"],
        "gradient_accumulation_steps": training["gradient_accumulation"],
        "gradient_clipping": training["max_grad_norm"],
        "zero_optimization": zero_section(settings, cuda),
        "bf16": {"enabled": cuda},
        "steps_per_print": 1 << 30,
    }
    if settings.offload_optimizer:  # the client AdamW steps on the CPU (DeepSpeedCPUAdam would need a C++ build)
        config["zero_force_ds_cpu_optimizer"] = False
    if settings.deepspeed_config:
        config |= json.loads(Path(settings.deepspeed_config).read_text())
    training["batch_size"] = config["train_micro_batch_size_per_gpu"]
    training["gradient_accumulation"] = config["gradient_accumulation_steps"]
    return config


def zero_section(settings: TrainSettings, cuda: bool) -> dict:
    """DeepSpeed's zero_optimization entry for the memory modes of `settings`."""
    zero = {"stage": settings.zero_stage}
    if settings.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": cuda}
    if settings.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": cuda}
    return zero


def shard_list(spec) -> list[dict]:
    """Name, path and SHA-256 of each shard: from the manifest curation wrote beside it, else hashed here."""
    from ..curation.probe import sha256_of
    from .data import expand_shards

    shards = []
    for path in expand_shards(spec):
        manifest = path.with_suffix(".json")
        sha256 = json.loads(manifest.read_text()).get("sha256") if manifest.is_file() else None
        shards.append({"name": path.name, "path": str(path), "sha256": sha256 or sha256_of(path)})
    return shards


def training_inputs(settings: TrainSettings, parts, size: tuple[int, int], video_list: list[dict] | None,
                    image_list: list[dict] | None) -> tuple[list, list | None, dict]:
    """The video and image shards the stream reads: the latent shards standing for the given shards when
    `settings.latents` holds them for this model's VAE and text encoder at this size, else the given shards;
    and {"inputs": "latents" or "pixels", "why": ...}. `video_list`, `image_list`: the shards' shard_list rows,
    needed with `settings.latents`."""
    from .data import expand_shards
    from .latents import FAMILY_OF, find_latents, weights_id

    videos = expand_shards(settings.videos)
    images = expand_shards(settings.images) if settings.images else None
    family = FAMILY_OF.get(settings.stage)
    if not settings.latents:
        return videos, images, {"inputs": "pixels", "why": "no latent folder given (--latents)"}
    if family is None:
        return videos, images, {"inputs": "pixels", "why": f"the {settings.stage} stand-in renders stills on the fly"}
    identity = {"vae": weights_id(parts.vae), "text_encoder": weights_id(parts.text_encoder)}
    latent_videos, why = find_latents(video_list, settings.latents, family, size, identity)
    latent_images, why_images = find_latents(image_list, settings.latents, family, size, identity) \
        if images else ([], "")
    if latent_videos is None or latent_images is None:
        reasons = [reason for found, reason in ((latent_videos, why), (latent_images, why_images)) if found is None]
        return videos, images, {"inputs": "pixels", "why": "; ".join(reasons)}
    return latent_videos, latent_images or None, {
        "inputs": "latents", "why": why + (f"; images: {why_images}" if images else ""),
        "latent_shards": [str(path) for path in latent_videos + latent_images]}


def free_port() -> int:
    """A TCP port free on 127.0.0.1 for a rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def memory_mb(device) -> float:
    import resource

    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def truncate_log(path: Path, step: int) -> None:
    """Drop the lines of a JSON-lines log beyond `step` (written after the checkpoint a run resumes from)."""
    if path.is_file():
        lines = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        path.write_text("".join(line + "\n" for line in lines))


def train(settings: TrainSettings, report=None, log=print, probe=None) -> Path:
    """Train one stage; returns the exported model folder. `report(record)` gets rank 0's logged metrics, `log`
    its messages. `probe(unet, parts, preset) -> dict` scores the EMA weights every `evaluate_every` steps on
    rank 0 (lavie_model.evaluation.stand_ins.probe, passed in by the caller: training code imports no evaluation
    code); it is needed only when `evaluate_every` is set."""
    preset = check(settings)
    training = preset["training"]
    if training["evaluate_every"] and probe is None:
        raise ValueError("evaluate_every is set but no probe was given: pass lavie_model.evaluation.stand_ins.probe")
    single_rank_environment()

    import deepspeed
    import torch
    from diffusers.training_utils import EMAModel
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from . import checkpoint
    from .data import TrainingStream, collate
    from ..model_folder import UNET
    from .export import ema_model, replace_component
    from .stages import load_parts, load_unet, sample_generators, stage_data, training_loss
    from .tracking import Tracking, parse

    cuda = torch.cuda.is_available()
    deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo")
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if not cuda:
        release_shared_buffer(rank)
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if cuda else torch.device("cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    ds_config = deepspeed_config(settings, training, cuda)
    max_steps = settings.max_steps or training["max_steps"]
    output = Path(settings.output)
    folder = output / "checkpoints"
    parts = load_parts(settings.model, settings.stage)
    data = stage_data(settings.stage, preset, parts.vae_scale)
    listed = rank == 0 or bool(settings.latents)  # each shard's SHA-256: for run.json, and to match latents
    video_list = shard_list(settings.videos) if listed else None
    image_list = (shard_list(settings.images) if settings.images else []) if listed else None
    videos, images, inputs = training_inputs(settings, parts, data.size, video_list, image_list)
    parts.to(device, dtype)
    if rank == 0:
        log(f"training inputs: {inputs['inputs']}: {inputs['why']}")
        folder.mkdir(parents=True, exist_ok=True)
        run = asdict(settings) | {"training": training, "world_size": world, "deepspeed": ds_config,
                                  "videos": video_list, "images": image_list, **inputs}
        (output / "run.json").write_text(json.dumps(run, indent=2) + "\n")

    unet = load_unet(settings.model, settings.stage, settings.train_2d).train()
    adapter = None
    if settings.lora_rank:
        from ..finetune import lora

        base_id = lora.base_identity(unet)
        adapter = lora.add_lora(unet, settings.lora_rank, settings.lora_alpha, settings.lora_dropout,
                                settings.lora_targets, seed=settings.seed)
    if settings.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    optimizer, schedule = optimizer_and_schedule(unet, training, settings.stage, lora=adapter is not None)
    trainable = [p for p in unet.parameters() if p.requires_grad]
    if rank == 0:
        log(f"trainable weights: {sum(p.numel() for p in trainable):,} of {sum(p.numel() for p in unet.parameters()):,}"
            + (f" (LoRA rank {settings.lora_rank} on {settings.lora_targets})" if adapter else ""))
    # fp32 copies on the training device (on a GPU: 4 bytes per trainable parameter beside DeepSpeed's states)
    ema = EMAModel([p.detach().float().clone() for p in trainable], decay=training["ema_decay"])
    ema.to(device)
    engine, _, _, _ = deepspeed.initialize(model=unet, optimizer=optimizer, lr_scheduler=schedule, config=ds_config)

    zero3 = settings.zero_stage == 3

    def master_weights():
        """The trained weights in fp32: under bf16 or ZeRO-3, the optimizer's master copies (gathered on every
        rank)."""
        if dtype == torch.float32 and not zero3:
            return trainable
        from deepspeed.utils import safe_get_full_fp32_param

        # marked trainable, or EMAModel.step would copy them instead of averaging
        return [safe_get_full_fp32_param(p).detach().requires_grad_() for p in trainable]

    step = 0
    if settings.resume:
        step = checkpoint.load(engine, ema, folder, rank, frozen_saved=adapter is None) or 0
        ema.to(device)  # the loaded shadow weights are on the CPU
        if rank == 0:
            checkpoint.prune(folder, training["keep_checkpoints"])
    if rank == 0:  # lines logged after the checkpoint (all of them on a fresh start) go
        truncate_log(output / "metrics.jsonl", step)
    truncate_log(output / f"samples-rank{rank}.jsonl", step)
    if step > max_steps:
        raise ValueError(f"the run in {output} is already at step {step}, beyond --max-steps {max_steps}")
    record = {"loss": float("nan")}  # the last step's, for the summary
    if step == max_steps and rank == 0:  # an attempt that trained to the end but died before it finished exporting
        log(f"the run in {output} reached step {step} of {max_steps} before it stopped: exporting its last checkpoint")
        logged = (output / "metrics.jsonl").read_text().splitlines()
        record = json.loads(logged[-1]) if logged else record
        if report:
            report(record)

    batch_size, accumulation = training["batch_size"], training["gradient_accumulation"]
    stream = TrainingStream(videos, data, settings.seed, rank, world, images, training["shuffle_buffer"],
                            batch_size, skip_batches=step * accumulation,
                            validation_percent=training["validation_percent"], latents=inputs["inputs"] == "latents")
    loader = iter(DataLoader(stream, batch_size=batch_size, num_workers=training["num_workers"], collate_fn=collate))
    max_noise_level = training["vsr"]["max_noise_level"]

    bar = tqdm(total=max_steps, initial=step, desc=f"train {settings.stage}", disable=None if rank == 0 else True)
    samples_log = open(output / f"samples-rank{rank}.jsonl", "a")
    metrics_log = open(output / "metrics.jsonl", "a") if rank == 0 else None
    tracking = Tracking(parse(settings.tracking), output, settings.stage, step, run) if rank == 0 else None
    try:
        while step < max_steps:
            started, losses, keys, skipped = time.perf_counter(), [], [], 0
            for micro in range(accumulation):
                batch = next(loader)
                first = (step * accumulation + micro) * batch_size
                generators = sample_generators(settings.seed, rank, first, len(batch["key"]))
                loss = training_loss(engine.module, parts, batch, generators, max_noise_level,
                                     training["snr_gamma"])
                engine.backward(loss)
                engine.step()
                losses.append(loss.detach().float())
                keys += batch["key"]
                skipped += batch.get("skipped", 0)
            step += 1
            ema.step(master_weights())
            loss = torch.stack(losses).mean().to(device)
            torch.distributed.all_reduce(loss)
            grad_norm = engine.get_global_grad_norm()
            record = {"step": step, "loss": loss.item() / world, "lr": schedule.get_last_lr()[0],
                      "grad_norm": None if grad_norm is None else float(grad_norm),
                      "samples_per_s": world * accumulation * batch_size / (time.perf_counter() - started),
                      "memory_mb": memory_mb(device), "skipped_clips": skipped}
            if not math.isfinite(record["loss"]):
                raise FloatingPointError(f"the loss is {record['loss']} at step {step}")
            every, samples = training["evaluate_every"], None
            if every and (step % every == 0 or step == max_steps):
                with gathered(engine.module, zero3):  # every rank takes part in gathering the weights
                    if rank == 0:
                        record["probe"] = probe(ema_model(engine.module, ema).to(device), parts, preset)
            if "probe" in record:  # the probe's sampled videos go to TensorBoard, not metrics.jsonl
                samples = record["probe"].pop("samples", None)
            samples_log.write(json.dumps({"step": step, "keys": keys}) + "\n")
            samples_log.flush()
            if rank == 0:
                metrics_log.write(json.dumps(record) + "\n")
                metrics_log.flush()
                tracking.log(record, samples)
                bar.set_postfix(loss=f"{record['loss']:.4f}")
                if report and (step % training["log_every"] == 0 or step == max_steps or "probe" in record):
                    report(record)
            bar.update()
            if step % training["checkpoint_every"] == 0 or step == max_steps:
                checkpoint.save(engine, ema, folder, step, rank, training["keep_checkpoints"],
                                frozen_saved=adapter is None)
    finally:
        bar.close()
        samples_log.close()
        if metrics_log:
            metrics_log.close()
        if tracking:
            tracking.close(failed=sys.exc_info()[0] is not None)

    with gathered(engine.module, zero3):
        fingerprints = weight_fingerprints(engine.module, world)
        final = ema_model(engine.module, ema) if rank == 0 else None
    exported = output / "model"
    if rank == 0:
        summary = {"stage": settings.stage, "steps": step, "final_loss": record["loss"], "world_size": world,
                   "rank_fingerprints": fingerprints, "weights_in_sync": len(set(map(tuple, fingerprints))) == 1}
        (output / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        if not summary["weights_in_sync"]:
            raise RuntimeError(f"the ranks' weights differ after training: {fingerprints}")
        info = {"stage": settings.stage, "steps": step, "run": str(output.resolve())}
        if adapter is not None:  # the adapter alone, and the model folder with it fused in
            from ..finetune import lora

            lora.save_adapter(output / "lora", ema_adapter_state(engine.module, ema), adapter, settings.stage,
                              base_id)
            info["lora"] = {"rank": settings.lora_rank, "targets": settings.lora_targets,
                            "adapter": str((output / "lora").resolve())}
        replace_component(settings.model, exported, UNET[settings.stage], final, info)
    torch.distributed.barrier()
    return exported


def gathered(module, zero3: bool):
    """Under ZeRO-3, a context in which every rank holds `module`'s whole weights; else nothing."""
    import contextlib

    if not zero3:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(list(module.parameters()))


def ema_adapter_state(module, ema) -> dict:
    """The EMA weights of a LoRA run's adapter under peft's names (`...to_q.lora_A.weight`)."""
    from ..finetune.lora import DEFAULT_NAME

    trainable = [name for name, p in module.named_parameters() if p.requires_grad]
    return {name.replace(f".{DEFAULT_NAME}.", "."): shadow.detach().float().cpu().contiguous()
            for name, shadow in zip(trainable, ema.shadow_params)}


def weight_fingerprints(module, world: int) -> list[list[float]]:
    """Per rank, the sum and the sum of squares of all weights (float64): equal on every rank when in sync."""
    import torch

    flat = torch.cat([p.detach().double().flatten() for p in module.parameters()])
    mine = torch.stack([flat.sum(), flat.square().sum()])
    gathered = [torch.zeros_like(mine) for _ in range(world)]
    torch.distributed.all_gather(gathered, mine)
    return [t.tolist() for t in gathered]
