"""The `lavie` command."""

import argparse
import json
import os
import sys


def add_convert_checkpoint(commands) -> None:
    p = commands.add_parser(
        "convert-checkpoint",
        help="convert a released LaVie checkpoint into a from_pretrained-loadable folder",
        description="Convert a released LaVie checkpoint (e.g. lavie_base.pt) into a diffusers-layout folder. "
        "Strict: every checkpoint tensor is used and every model tensor is set.",
    )
    p.add_argument("--stage", required=True, help="cascade stage of the checkpoint: base, interpolation or vsr")
    p.add_argument("--input", required=True, help="the checkpoint file ({'ema': state_dict} or a bare state dict)")
    p.add_argument("--output", required=True, help="folder to write config.json and the safetensors weights to")
    p.add_argument("--unet-config", help="config.json of the 2D UNet the checkpoint was inflated from "
                   "(default: Stable Diffusion 1.4's; for vsr, the SD x4 upscaler's)")
    p.set_defaults(func=convert_checkpoint)


def convert_checkpoint(args):
    from .convert import convert_checkpoint

    output = convert_checkpoint(args.stage, args.input, args.output, args.unet_config)
    print(f"wrote {args.stage} UNet to {output}")


def add_init_tiny(commands) -> None:
    p = commands.add_parser("init-tiny", help="build a tiny, randomly initialised model folder (offline)",
                            description="Build a complete model folder of the tiny preset with random weights.")
    p.add_argument("--output", required=True, help="new folder to create")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    p.set_defaults(func=init_tiny)


def init_tiny(args):
    from .model_folder import init_random

    print(f"wrote a tiny model folder to {init_random(args.output, 'tiny', seed=args.seed)}")


def add_assemble(commands) -> None:
    p = commands.add_parser(
        "assemble", help="build a model folder from Stable Diffusion, the x4 upscaler and LaVie checkpoints",
        description="Build a LaVie model folder from Stable Diffusion 1.4 and x4 upscaler folders (or the tiny "
        "world's stand-ins, with --preset tiny). Stages without a checkpoint are left out (or, with "
        "--inflate-missing, inflated afresh from the 2D UNets as a starting point for training).")
    p.add_argument("--sd", required=True, help="Stable Diffusion 1.4 folder in diffusers layout")
    p.add_argument("--upscaler", help="Stable Diffusion x4 upscaler folder in diffusers layout (for the VSR stage)")
    p.add_argument("--base", help="lavie_base.pt, or a UNet folder in this project's layout (e.g. "
                   "lavie_model/pretrained/tiny/lavie/unet_base)")
    p.add_argument("--interpolation", help="lavie_interpolation.pt, or a UNet folder")
    p.add_argument("--vsr", help="lavie_vsr.pt, or a UNet folder")
    p.add_argument("--inflate-missing", action="store_true",
                   help="inflate the UNets of stages without a checkpoint from the 2D UNets")
    p.add_argument("--preset", default="paper", help="frame counts, sizes and sampling defaults: paper (default), "
                   "or tiny with the stand-ins in lavie_model/pretrained/tiny as --sd and --upscaler")
    p.add_argument("--output", required=True, help="new folder to create")
    p.set_defaults(func=assemble)


def assemble(args):
    from .model_folder import assemble

    output = assemble(args.output, args.sd, args.upscaler, args.base, args.interpolation, args.vsr,
                      args.inflate_missing, preset=args.preset)
    print(f"wrote a model folder to {output}")


def add_generate(commands) -> None:
    p = commands.add_parser("generate", help="generate a video from a prompt through the cascade",
                            description="Generate a video from a text prompt with a LaVie model folder.")
    p.add_argument("--model", help="LaVie model folder (lavie init-tiny, lavie assemble or a training run's "
                   "model/); default: the promoted model, $LAVIE_HOME/models/promoted")
    p.add_argument("--prompt", required=True)
    p.add_argument("--negative-prompt", help="what to steer away from (default: per stage, as the official code)")
    p.add_argument("--stages", default="base,interpolation,vsr", help="comma-separated stages to run, in order")
    p.add_argument("--video", help="input video for a cascade that starts after the base stage")
    p.add_argument("--scheduler", choices=["ddpm", "ddim", "euler"],
                   help="sampler for every stage (default: per stage, DDPM for base, DDIM after)")
    p.add_argument("--steps", type=int, help="denoising steps for every stage (default: per stage, 50)")
    p.add_argument("--guidance", type=float, help="guidance scale for every stage (default: 7.5, 4, 5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--output", required=True, help="output video, .mp4 or .gif")
    p.add_argument("--lora", action="append", default=[], metavar="PATH[:SCALE]",
                   help="a LoRA adapter folder (lavie train --lora writes RUN_DIR/lora) added to the stage it was "
                   "trained for, at SCALE (default 1); repeatable")
    p.set_defaults(func=generate)


def generate(args):
    from .curation.store import promoted_path
    from .generate import generate

    model = args.model
    if model is None:
        model = promoted_path()
        if not model.exists():
            raise FileNotFoundError(f"no --model given and no promoted model at {model}: pass --model, or "
                                    "materialize promoted_model (make demo does)")
    generate(model=model, prompt=args.prompt, negative_prompt=args.negative_prompt, stages=args.stages,
             scheduler=args.scheduler, steps=args.steps, guidance=args.guidance, seed=args.seed, device=args.device,
             dtype=args.dtype, output=args.output, video=args.video, lora=args.lora)


def add_merge_lora(commands) -> None:
    p = commands.add_parser("merge-lora", help="write a model folder with LoRA adapters fused into their UNets",
                            description="Fuse LoRA adapters, each at its scale, into the UNets of the stages they "
                            "were trained for, and write the result as a new model folder.")
    p.add_argument("--model", required=True, help="the model folder the adapters were trained from")
    p.add_argument("--lora", action="append", required=True, metavar="PATH[:SCALE]",
                   help="a LoRA adapter folder and its scale (default 1); repeatable")
    p.add_argument("--output", required=True, help="model folder to write (replaced whole if it exists)")
    p.set_defaults(func=merge_lora)


def merge_lora(args):
    from .finetune.lora import merge_into_folder

    print(f"wrote a model folder with the adapters fused to {merge_into_folder(args.model, args.lora, args.output)}")


def train_settings(args):
    """The TrainSettings of parsed `lavie train` arguments (train_arguments' inverse)."""
    from .training.trainer import TrainSettings, parse_set

    return TrainSettings(
        stage=args.stage, model=args.model, videos=args.videos, output=args.output, preset=args.preset,
        images=args.images, max_steps=args.max_steps, resume=args.resume, deepspeed_config=args.deepspeed_config,
        overrides=parse_set(args.set), seed=args.seed, train_2d=args.train_2d,
        gradient_checkpointing=args.gradient_checkpointing, latents=args.latents, lora_rank=args.lora,
        lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout, lora_targets=args.lora_targets,
        zero_stage=args.zero_stage, offload_optimizer=args.offload_optimizer, offload_params=args.offload_params,
        tracking=args.tracking)


FLAGS = {"lora_rank": "--lora", "overrides": "--set"}  # TrainSettings fields whose `lavie train` flag is not theirs


def train_arguments(settings) -> list[str]:
    """The `lavie train` command line that train_settings reads back as `settings`: how the training assets pass a
    run's settings down to the trainer's process. Settings at their default are left out."""
    from dataclasses import MISSING, fields

    arguments = ["train"]
    for item in fields(settings):
        value, flag = getattr(settings, item.name), FLAGS.get(item.name, "--" + item.name.replace("_", "-"))
        if item.name == "overrides":  # JSON is YAML, which parse_set reads
            arguments += [part for name, v in value.items() for part in (flag, f"{name}={json.dumps(v)}")]
        elif item.default is not MISSING and value == item.default:
            continue
        elif isinstance(value, bool):
            arguments.append(flag)
        else:
            arguments += [flag, str(value)]
    return arguments


def add_plan(commands) -> None:
    p = commands.add_parser(
        "plan", help="the memory a training run needs per rank, and whether it fits, before launching it",
        description="Predict the memory each rank of `lavie train` needs (weights, gradients, optimizer states, EMA, "
        "frozen VAE and text encoder, activations, VAE encoding), from parameter counts and a forward pass on the "
        "meta device, in about a second on the CPU. Exits 1 when it does not fit --memory.")
    p.add_argument("--stage", default="base", choices=["base", "interpolation", "vsr"])
    p.add_argument("--preset", default="tiny", help="tiny, paper or a preset YAML file (default: tiny)")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cuda: bf16 on GPUs (default); "
                   "cpu: fp32 in one process")
    p.add_argument("--gpus", type=int, default=1, help="ranks sharing ZeRO's partitions (default 1)")
    p.add_argument("--memory", default="80", help="memory per rank to fit, GiB (default 80; e.g. 24GB)")
    p.add_argument("--lora", type=int, default=0, metavar="RANK", help="a LoRA adapter of this rank (0: full)")
    p.add_argument("--lora-targets", default="attention")
    p.add_argument("--zero-stage", type=int, default=2, choices=[2, 3])
    p.add_argument("--offload-optimizer", action="store_true")
    p.add_argument("--offload-params", action="store_true")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--latents", action="store_const", const="(precomputed)",
                   help="the run reads precomputed latents (no VAE encoding)")
    p.add_argument("--train-2d", action="store_true", help="VSR: train the 2D weights too")
    p.add_argument("--batch-size", type=int, help="micro-batch per rank (default: the preset's)")
    p.add_argument("--frames", type=int, help="video frames per sample (default: the stage's)")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="latent height and width (default: the "
                   "stage's)")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="as for train")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(func=plan)


def plan(args):
    from .finetune.plan import card_bytes, plan, render
    from .training.trainer import TrainSettings, parse_set

    batch = {"batch_size": args.batch_size} if args.batch_size else {}
    settings = TrainSettings(  # the run's settings as `lavie train` takes them; the plan reads no folder
        stage=args.stage, model="", videos="", output="", preset=args.preset, overrides=parse_set(args.set) | batch,
        train_2d=args.train_2d, gradient_checkpointing=args.gradient_checkpointing, latents=args.latents,
        lora_rank=args.lora, lora_targets=args.lora_targets, zero_stage=args.zero_stage,
        offload_optimizer=args.offload_optimizer, offload_params=args.offload_params)
    result = plan(settings, args.device, args.gpus, args.frames, tuple(args.size) if args.size else None)
    limit = card_bytes(args.memory)
    if args.json:
        print(json.dumps(result.as_dict() | {"limit": limit, "fits": result.fits(limit)}, indent=2))
    else:
        print(render(result, limit, f"{args.memory} per rank"))
    return 0 if result.fits(limit) else 1


def add_train(commands) -> None:
    p = commands.add_parser(
        "train", help="fine-tune one cascade stage on video (and image) shards with DeepSpeed",
        description="Train one cascade stage. Run directly it trains as one rank; under the `deepspeed` launcher "
        "(deepspeed --num_gpus N [--hostfile FILE] $(which lavie) train ...) on many. Without CUDA it runs on the "
        "CPU (DS_ACCELERATOR=cpu, gloo).")
    p.add_argument("--stage", required=True, help="base, interpolation or vsr; or t2i or upscaler, the tiny world's "
                   "stand-ins for Stable Diffusion and the x4 upscaler (the preset's pretraining section applies)")
    p.add_argument("--preset", default="tiny", help="tiny, paper or a preset YAML file (default: tiny)")
    p.add_argument("--model", required=True, help="model folder to start from (lavie init-tiny, lavie assemble or "
                   "a previous run's model/; for t2i and upscaler a Stable Diffusion or x4 upscaler folder)")
    p.add_argument("--videos", required=True, help="video shards: paths, comma-separated lists, brace patterns "
                   "(videos-{000000..000009}.tar), globs or folders")
    p.add_argument("--images", help="image shards for joint image-video training (base stage) or stills (t2i, upscaler)")
    p.add_argument("--output", required=True, help="run directory (checkpoints, metrics, exported model)")
    p.add_argument("--max-steps", type=int, help="optimizer steps to train to (default: the preset's)")
    p.add_argument("--resume", action="store_true", help="continue exactly from the run directory's latest checkpoint")
    p.add_argument("--deepspeed-config", help="DeepSpeed JSON config merged over the defaults (ZeRO-2; bf16 on GPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="override a setting of the preset's training section (repeatable), e.g. batch_size=4")
    p.add_argument("--gradient-checkpointing", action="store_true", help="trade compute for activation memory")
    p.add_argument("--train-2d", action="store_true", help="VSR: train the x4 upscaler's 2D weights too")
    p.add_argument("--latents", metavar="FOLDER", help="read the latent shards under FOLDER (the latent assets' "
                   "LAVIE_HOME/latents) instead of decoding and encoding pixels, when every shard has one made by "
                   "this model's VAE and text encoder; otherwise pixels, and the log says why")
    p.add_argument("--lora", type=int, default=0, metavar="RANK", help="train a rank-RANK LoRA adapter instead of "
                   "the UNet's weights, which stay frozen; the run writes RUN_DIR/lora (the adapter) and RUN_DIR/model "
                   "(the adapter fused in)")
    p.add_argument("--lora-alpha", type=float, help="LoRA alpha (default: the rank, i.e. scaling 1)")
    p.add_argument("--lora-dropout", type=float, default=0.0)
    p.add_argument("--lora-targets", default="attention", help="layers to adapt: attention (spatial and temporal "
                   "attention projections, the default), temporal (temporal attention only: a motion adapter), "
                   "linear (every linear layer), or a regex of module names")
    p.add_argument("--zero-stage", type=int, default=2, choices=[2, 3], help="DeepSpeed ZeRO stage (3 also "
                   "partitions the weights across ranks)")
    p.add_argument("--offload-optimizer", action="store_true", help="keep the optimizer states in CPU memory")
    p.add_argument("--offload-params", action="store_true", help="ZeRO-3: keep the weights in CPU memory")
    p.add_argument("--tracking", default="tensorboard", help="where rank 0 logs every step besides metrics.jsonl: "
                   "tensorboard (RUN_DIR/tensorboard, the default), mlflow (MLFLOW_TRACKING_URI, else a SQLite store in "
                   "RUN_DIR/mlflow), both comma-separated, or none")
    p.set_defaults(func=train)


def train(args):
    from .evaluation.stand_ins import probe
    from .training.trainer import train

    exported = train(train_settings(args), probe=probe)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"trained the {args.stage} stage; model folder with its EMA weights: {exported}")


def add_train_vae(commands) -> None:
    p = commands.add_parser(
        "train-vae", help="train a model folder's small autoencoder(s) (the tiny preset has no pretrained VAE)",
        description="Train `vae` and/or `vsr_vae` of a model folder on frames of video shards and on images "
        "(reconstruction + small KL), set the latent scaling factor to unit variance and write a new folder.")
    p.add_argument("--model", required=True, help="model folder to start from")
    p.add_argument("--videos", required=True, help="video shards (as for train)")
    p.add_argument("--images", help="image shards to mix in")
    p.add_argument("--output", required=True, help="model folder to write (replaced whole if it exists)")
    p.add_argument("--component", default="both", choices=["vae", "vsr_vae", "both"])
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=train_vae)


def train_vae(args):
    from .evaluation.stand_ins import colour_fidelity
    from .training.vae import train_vae

    model = args.model
    components = ["vae", "vsr_vae"] if args.component == "both" else [args.component]
    for component in components:
        model = train_vae(model, args.videos, args.output, component, images=args.images, steps=args.steps,
                          batch_size=args.batch_size, seed=args.seed, fidelity=colour_fidelity)
    print(f"wrote a model folder with the trained {' and '.join(components)} to {model}")


def add_lineage(commands) -> None:
    p = commands.add_parser("lineage", help="where a shard sample came from",
                            description="Print, for a sample key in any shard under LAVIE_HOME, the shard, the "
                            "source file and its SHA-256, the time range, the batch, the Dagster runs, the scores "
                            "and the filter decision.")
    p.add_argument("key", help="a sample key (a clip id, or an image's SHA-256)")
    p.set_defaults(func=lineage)


def lineage(args):
    from .curation.lineage import lineage
    from .curation.store import lavie_home

    try:
        record = lineage(args.key, lavie_home())
    except KeyError as error:
        raise ValueError(error.args[0]) from error
    for name, value in record.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in value.items())
        if isinstance(value, list):  # the latent shards encoding the sample
            value = "; ".join(f"{item['family']}: {item['shard']}" for item in value) or "none"
        print(f"{name:15} {value}")


COMMANDS = (add_convert_checkpoint, add_init_tiny, add_assemble, add_generate, add_merge_lora, add_train, add_plan,
            add_train_vae, add_lineage)


def build_parser(extra_commands=None) -> argparse.ArgumentParser:
    """The `lavie` parser; `extra_commands(commands)` adds subcommands (the data commands of `pipelines`)."""
    parser = argparse.ArgumentParser(prog="lavie", description="LaVie cascaded text-to-video: models and tools")
    parser.add_argument("--local_rank", type=int, help=argparse.SUPPRESS)  # the deepspeed launcher adds it
    commands = parser.add_subparsers(dest="command", required=True)
    for add_command in COMMANDS:
        add_command(commands)
    if extra_commands is not None:
        extra_commands(commands)
    return parser


def main(argv=None, extra_commands=None) -> int:
    args = build_parser(extra_commands).parse_args(argv)
    try:
        return args.func(args) or 0  # a command returns 1 for a negative answer (plan: does not fit)
    except (OSError, ValueError, TypeError) as error:
        print(f"lavie {args.command}: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
