"""`lavie plan`: the memory one training rank will need, predicted in about a second on the CPU before a launch.

For a training run's settings (trainer.TrainSettings, the object `lavie train` and the training assets run: its
preset, stage, overrides such as the micro-batch, and memory settings: LoRA or full, ZeRO stage, offloads, gradient
checkpointing, latents), on a device with a number of ranks, at the stage's frames and size or others, per rank:

    weights      the UNet's P weights in the training dtype (bf16 on a GPU, fp32 on the CPU); / N under ZeRO-3;
                 in host memory with offload_params
    gradients    the T trainable weights' gradients in the training dtype, / N (ZeRO partitions them)
    optimizer    ZeRO's fp32 master copy and AdamW's two moments: 12 T / N bytes; in host memory with
                 offload_optimizer
    ema          the trainer's fp32 EMA of the trainable weights: 4 T on every rank
    frozen       the VAE and text encoder in the training dtype (the trainer loads them, latents or not)
    runtime      the process itself: on the CPU the interpreter, libraries, gloo group, DeepSpeed's buffers and data
                 pipeline (RUNTIME_CPU, fitted), on a GPU the CUDA context (CUDA_CONTEXT, assumed)
and the largest of three that never coexist (PASSES):
    activations  what autograd keeps for the backward pass of the micro-batch: counted on the meta device (shapes,
                 no memory, no compute) by a forward pass of the stage's UNet at the training shapes, with
                 attention counted as a fused kernel keeps it (q, k, v, output, log-sum-exp); with gradient
                 checkpointing, the checkpointed layers' inputs, what runs outside them, and the largest layer's
                 inner activations (recomputed in the backward pass); times ACTIVATION_FACTOR[device] (the
                 backward pass's transient buffers and the allocator's slack, calibrated against measured peaks)
    encoding     reading pixels: the frozen VAE encoder's largest layer over ENCODE_CHUNK of the micro-batch's
                 frames (the trainer encodes that many at a time), no grad; none with precomputed latents
    step         the optimizer step's fp32 copy of the gradients: 4 T / N (on the host with offload_optimizer)

Calibration (benchmarks/plan_calibration.py) compares the prediction with the measured peak resident set of `lavie
train` on the CPU (tiny and mid presets, full and LoRA) and with the peaks measured on an H100 before; the other
paper-size figures are predictions until measured on a GPU.
"""

import math
from dataclasses import asdict, dataclass

import torch

from ..training.trainer import TrainSettings, check_memory_modes, preset_with_overrides

GiB = 2**30
# Fitted with ACTIVATION_FACTOR on the CPU runs of benchmarks/plan_calibration.py (tiny and mid, full and LoRA):
# the resident set of a `lavie train` process beyond its model. A process with its imports and a gloo group alone
# peaks at 0.82 GiB on this machine.
RUNTIME_CPU = 1.02 * GiB
CUDA_CONTEXT = 0.75 * GiB  # assumed: the CUDA context and cuBLAS/cuDNN workspaces, outside torch's allocator
# Calibrated (benchmarks/plan_calibration.py): peak activation memory over the bytes autograd saves, per device and
# without or with gradient checkpointing. The CPU's figures hold its allocator's slack too: the resident set of a
# process keeps growing for a few steps as freed blocks of one size are reused for others.
# With checkpointing the CPU's resident set is far above what stays saved (the tiny preset's peaked higher with it
# than without): its factor splits the error between the tiny (-12%) and mid (+9%) runs. GPU: from the H100 peaks
# measured with gradient checkpointing (README); without it assumed the same.
ACTIVATION_FACTOR = {("cpu", False): 1.4, ("cpu", True): 4.4, ("cuda", False): 1.2, ("cuda", True): 1.2}
ENCODING_FACTOR = 2.2  # a VAE encoder holds its largest layer's input, output and the residual at once (measured)
PASSES = ("activations", "encoding", "step")  # phases of a step that never hold their memory at once
REDUCE_BUCKET = 500_000_000  # DeepSpeed's default reduce_bucket_size (elements), allocated with several ranks

# Stable Diffusion 1.4's autoencoder and CLIP ViT-L/14 text encoder, and the x4 upscaler's autoencoder and OpenCLIP
# ViT-H/14 text encoder, as configs (the paper preset's frozen parts)
SD_VAE = {"block_out_channels": [128, 256, 512, 512], "down_block_types": ["DownEncoderBlock2D"] * 4,
          "up_block_types": ["UpDecoderBlock2D"] * 4, "layers_per_block": 2, "latent_channels": 4,
          "norm_num_groups": 32, "sample_size": 512}
SD_TEXT = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
           "max_position_embeddings": 77, "vocab_size": 49408, "hidden_act": "quick_gelu"}
X4_VAE = {"block_out_channels": [128, 256, 512], "down_block_types": ["DownEncoderBlock2D"] * 3,
          "up_block_types": ["UpDecoderBlock2D"] * 3, "layers_per_block": 2, "latent_channels": 4,
          "norm_num_groups": 32, "scaling_factor": 0.08333}
X4_TEXT = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 23, "num_attention_heads": 16,
           "max_position_embeddings": 77, "vocab_size": 49408, "hidden_act": "gelu"}


@dataclass
class Plan:
    settings: dict
    parameters: int               # the UNet's
    trainable: int
    frozen_parameters: int        # VAE and text encoder
    sample: list[int]             # the UNet's input for the micro-batch (b, c, f, h, w)
    saved_per_sample: int         # bytes autograd keeps for one sample (before ACTIVATION_FACTOR)
    saved_checkpointed: int       # the same with gradient checkpointing
    device: dict[str, int]        # bytes per rank on its GPU (or, on the CPU, in the process)
    host: dict[str, int]          # bytes per rank offloaded to host memory

    @property
    def total(self) -> int:
        return peak(self.device)

    def fits(self, limit_bytes: float) -> bool:
        return self.total <= limit_bytes

    def advice(self, limit_bytes: float) -> str:
        """The settings that would lower the peak, the largest saving first, each with its saving and whether it
        alone makes the run fit under `limit_bytes`."""
        s, d = self.settings, self.device
        changes = {}  # setting -> the device rows it changes
        if not s["gradient_checkpointing"]:
            changes["gradient_checkpointing"] = {"activations": d["activations"] * self.saved_checkpointed
                                                 / self.saved_per_sample}
        if not s["lora_rank"]:
            changes["lora_rank (an adapter; about 1% of the weights train)"] = {
                "gradients": d["gradients"] / 100, "optimizer": d["optimizer"] / 100, "ema": d["ema"] / 100,
                "step": d["step"] / 100}
        if not s["offload_optimizer"]:
            changes["offload_optimizer"] = {"optimizer": 0, "step": 0}
        if s["zero_stage"] == 2 and s["gpus"] > 1:
            changes["zero_stage 3"] = {"weights": d["weights"] / s["gpus"]}
        if s["zero_stage"] == 3 and not s["offload_params"]:
            changes["offload_params"] = {"weights": 0}
        if s["batch_size"] > 1:
            half = s["batch_size"] // 2
            changes[f"batch_size {half} (gradient_accumulation for the same batch)"] = {
                "activations": d["activations"] * half / s["batch_size"],
                "encoding": d["encoding"] * half / s["batch_size"]}
        if not s["latents"] and d["encoding"]:
            changes["latents (precomputed: no VAE encoding in the step)"] = {"encoding": 0}
        savings = sorted(((self.total - peak(d | rows), name) for name, rows in changes.items()), reverse=True)
        options = [f"{name} (-{saving / GiB:.1f} GiB{': fits' if self.total - saving <= limit_bytes else ''})"
                   for saving, name in savings if saving > 0]
        return "; or ".join(options) or "a card with more memory, or more GPUs"

    def as_dict(self) -> dict:
        return asdict(self) | {"total": self.total}


def peak(device: dict) -> int:
    """The peak of a plan's device rows: the parts held throughout, and the largest of PASSES."""
    return sum(value for name, value in device.items() if name not in PASSES) + max(device[name] for name in PASSES)


def build_unet(stage: str, preset: dict, train_2d: bool = False):
    """A randomly initialised UNet of `stage` at the preset's size, on the current default device. The VSR UNet
    inflates the preset's x4-upscaler-shaped config, else the real x4 upscaler's, its 2D weights frozen as the
    trainer freezes them (unless `train_2d`)."""
    from ..config import base_unet_config
    from ..convert import sd_x4_upscaler_unet_config
    from ..models import UNet3DConditionModel, UNet3DVSRModel, vsr_config_from_2d

    config = base_unet_config(preset)
    if stage == "base":
        return UNet3DConditionModel(**config)
    if stage == "interpolation":  # noisy and conditioning latents side by side
        return UNet3DConditionModel(**config | {"block_design": "interpolation",
                                                "in_channels": 2 * config["in_channels"]})
    if stage != "vsr":
        raise ValueError(f"no plan for the {stage!r} stage: choose base, interpolation or vsr")
    model = preset["model"]
    unet_2d = model["vsr"]["unet_2d"] if "vsr" in model else sd_x4_upscaler_unet_config()
    unet = UNet3DVSRModel(**vsr_config_from_2d(unet_2d, model["group_norm_across_frames"]))
    if not train_2d:
        unet.freeze_2d_weights()
    return unet


def stage_inputs(unet, stage: str, preset: dict, images: int, batch_size: int | None = None,
                 frames: int | None = None, size: tuple[int, int] | None = None) -> tuple:
    """Random inputs of a stage's training micro-batch, made on the current default device: (sample, timesteps, text,
    kwargs, target). The sample holds the conditioning channels too: base (b, 4, F + M, h, w) with M images, one
    text per frame; interpolation (b, 8, 4K - 3, h, w), noisy and keyframe latents; vsr (b, 7, f, s/4, s/4), the
    latents of s x s crops (the x4 upscaler's VAE: the low-resolution size) and the low-resolution frames.
    `frames` (video frames, without the images) and `size` (latent h, w) replace the preset's."""
    training, data = preset["training"], preset["data"]
    b, (h, w) = batch_size or training["batch_size"], data["latent_size"]
    kwargs = {}
    if stage == "base":
        f = (frames or data["num_frames"]) + images
        kwargs = {"num_image_frames": images} if images else {}
    elif stage == "interpolation":
        f = frames or 4 * training["interpolation"]["keyframes"] - 3
    else:
        f, (h, w) = frames or training["vsr"]["num_frames"], (n // 4 for n in training["vsr"]["size"])
        kwargs = {"class_labels": torch.randint(training["vsr"]["max_noise_level"] + 1, (b,))}
    h, w = size or (h, w)
    text_shape = (b, f, 77) if stage == "base" else (b, 77)
    sample = torch.randn(b, unet.config.in_channels, f, h, w)
    timesteps = torch.randint(preset["scheduler"]["num_train_timesteps"], (b,))
    text = torch.randn(*text_shape, unet.config.cross_attention_dim)
    target = torch.randn(b, unet.config.out_channels, f, h, w)
    return sample, timesteps, text, kwargs, target


def frozen_configs(stage: str, preset: dict) -> tuple[dict, dict]:
    """The (VAE, CLIP text encoder) configs of the frozen parts a stage's trainer loads."""
    model = preset["model"]
    if stage == "vsr":
        if "vsr" not in model or "text_encoder" not in model:
            return X4_VAE, X4_TEXT
        text = dict(model["text_encoder"], hidden_size=model["vsr"]["unet_2d"]["cross_attention_dim"])
        return model["vsr"]["vae"], text
    if "vae" not in model or "text_encoder" not in model:
        return SD_VAE, SD_TEXT
    return model["vae"], dict(model["text_encoder"], hidden_size=model["unet_2d"]["cross_attention_dim"])


class _FusedAttention(torch.autograd.Function):
    """Stands for scaled_dot_product_attention while counting: keeps what a fused kernel keeps for its backward
    pass (q, k, v, the output, the log-sum-exp; the mask), not the attention matrix the meta device's math
    fallback would."""

    @staticmethod
    def forward(ctx, q, k, v, mask):
        out = q.new_empty(*q.shape[:-1], v.shape[-1])
        lse = q.new_empty(q.shape[:-1], dtype=torch.float32)
        ctx.save_for_backward(*(t for t in (q, k, v, out, lse, mask) if t is not None))
        return out

    @staticmethod
    def backward(ctx, grad):
        raise NotImplementedError("counting only")


def saved_bytes(unet, inputs) -> dict:
    """Bytes autograd saves in a forward pass of `unet` (on the meta device) over `inputs` (sample, timesteps,
    text, kwargs): {"all": without checkpointing, "checkpointed": with each layer the blocks checkpoint (their
    `run`) recomputed: its input kept, its inner activations only while the backward pass recomputes it; and the
    parts of that: "outside" the layers, "layer_inputs", "largest_layer" (inner), "layers" (how many)}. Weights
    are not activations and are left out; a tensor saved by several operations counts once."""
    import torch.nn.functional as F

    from ..models import unet_3d_blocks

    weights = {id(p) for p in unet.parameters()} | {id(b) for b in unet.buffers()}
    seen, units, stack = {}, [], []  # id(tensor) -> (tensor, bytes, unit index or None)

    def pack(t):
        base = t if t._base is None else t._base
        if id(base) not in weights and id(base) not in seen:
            seen[id(base)] = (base, base.numel() * base.element_size(), stack[-1] if stack else None)
        return t

    original_run, original_sdpa = unet_3d_blocks._Block.run, F.scaled_dot_product_attention

    def run(block, layer, *args):
        x = args[0]
        units.append(x.numel() * x.element_size())
        stack.append(len(units) - 1)
        try:
            return layer(*args)
        finally:
            stack.pop()

    sample, timesteps, text, kwargs = inputs
    try:
        unet_3d_blocks._Block.run = run
        F.scaled_dot_product_attention = lambda q, k, v, attn_mask=None, **_: _FusedAttention.apply(q, k, v, attn_mask)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            unet(sample, timesteps, text, **kwargs)
    finally:
        unet_3d_blocks._Block.run, F.scaled_dot_product_attention = original_run, original_sdpa
    inner = [0] * len(units)
    outside = 0
    for _, size, unit in seen.values():
        if unit is None:
            outside += size
        else:
            inner[unit] += size
    largest = max(inner, default=0)
    return {"all": outside + sum(inner), "checkpointed": outside + sum(units) + largest, "outside": outside,
            "layer_inputs": sum(units), "largest_layer": largest, "layers": len(units)}


def encoding_bytes(vae, frames: int, pixel_size: tuple[int, int], dtype) -> int:
    """The largest layer of `vae`'s encoder (an AutoencoderKL on the meta device) over `frames` frames in `dtype`,
    no grad: its input and output, live at once."""
    with torch.device("meta"):
        vae = torch.nn.Module.to(vae, dtype)
        largest = [0]

        def hook(module, args, output):
            tensors = [t for t in (*args, output) if isinstance(t, torch.Tensor)]
            largest[0] = max(largest[0], sum(t.numel() * t.element_size() for t in tensors))

        handles = [m.register_forward_hook(hook) for m in vae.encoder.modules() if not list(m.children())]
        with torch.no_grad():
            vae.encoder(torch.zeros(frames, vae.config.in_channels, *pixel_size, dtype=dtype))
        for handle in handles:
            handle.remove()
    return largest[0]


def plan(settings: TrainSettings, device: str = "cuda", gpus: int = 1, frames: int | None = None,
         size: tuple[int, int] | None = None) -> Plan:
    """The memory one rank needs to train with `settings` (trainer.TrainSettings: the plan reads its preset, stage,
    overrides and memory settings, not its folders) on `device` (cuda: bf16 on GPUs; cpu: fp32) with `gpus` ranks
    sharing ZeRO's partitions, at `frames` video frames a sample (default: the stage's; base: + image_frames) and
    latent `size` (h, w) (default: the stage's). See the module docstring."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel

    from ..models.unet_3d import TEMPORAL_KEYS
    from ..training.stages import ENCODE_CHUNK

    s = settings
    if device not in ("cuda", "cpu"):
        raise ValueError(f"device must be cuda or cpu, got {device!r}")
    if gpus < 1:
        raise ValueError(f"gpus must be at least 1, got {gpus}")
    check_memory_modes(s)
    preset = preset_with_overrides(s.preset, s.overrides)
    training = preset["training"]
    batch = training["batch_size"]
    if batch < 1 or (frames is not None and frames < 1):
        raise ValueError(f"batch_size and frames must be at least 1, got {batch} and {frames}")
    images = training["image_frames"] if s.stage == "base" else 0
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    width = torch.finfo(dtype).bits // 8
    n = gpus

    with torch.device("meta"):
        unet = torch.nn.Module.to(build_unet(s.stage, preset, s.train_2d), dtype).train()  # not diffusers' to()
        if s.stage == "base" and not s.lora_rank and training["lr_2d_scale"] == 0:
            for name, parameter in unet.named_parameters():  # as trainer.optimizer_and_schedule freezes them
                parameter.requires_grad_(any(key in name for key in TEMPORAL_KEYS))
        if s.lora_rank:
            from .lora import add_lora

            add_lora(unet, s.lora_rank, targets=s.lora_targets)
            torch.nn.Module.to(unet, dtype)
        parameters = sum(p.numel() for p in unet.parameters())
        trainable = sum(p.numel() for p in unet.parameters() if p.requires_grad)
        vae_config, text_config = frozen_configs(s.stage, preset)
        vae = AutoencoderKL(**vae_config)
        text = CLIPTextModel(CLIPTextConfig(**{"vocab_size": 49408} | text_config))
        frozen = sum(p.numel() for module in (vae, text) for p in module.parameters())
        sample, timesteps, text_states, kwargs, _ = stage_inputs(unet, s.stage, preset, images, 1, frames, size)
        if "class_labels" in kwargs:  # the noise-level embedding: a lookup whose check reads values meta lacks
            del kwargs["class_labels"]
            unet.class_embedding = None
        saved = saved_bytes(unet, (sample.to(dtype), timesteps, text_states.to(dtype), kwargs))
    per_sample = saved["checkpointed" if s.gradient_checkpointing else "all"]

    encoding = 0
    if not s.latents:
        scale = 2 ** (len(vae_config["block_out_channels"]) - 1)
        pixels = tuple(x * scale for x in sample.shape[-2:])
        encoding = ENCODING_FACTOR * encoding_bytes(vae, min(batch * sample.shape[2], ENCODE_CHUNK), pixels, dtype)

    weights = parameters * width / (n if s.zero_stage == 3 else 1)
    optimizer, step = 12 * trainable / n, 4 * trainable / n
    memory = {
        "weights": 0 if s.offload_params else weights,
        "gradients": trainable * width / n + (min(trainable, REDUCE_BUCKET) * width if n > 1 else 0),
        "optimizer": 0 if s.offload_optimizer else optimizer,
        "ema": 4 * trainable,
        "frozen": frozen * width,
        "runtime": CUDA_CONTEXT if device == "cuda" else RUNTIME_CPU,
        "activations": ACTIVATION_FACTOR[device, s.gradient_checkpointing] * per_sample * batch,
        "encoding": encoding,
        "step": 0 if s.offload_optimizer else step,
    }
    host = {"weights": weights if s.offload_params else 0, "optimizer": optimizer if s.offload_optimizer else 0,
            "step": step if s.offload_optimizer else 0}
    if device == "cpu":  # offloading to the host moves nothing out of a CPU process
        memory = {name: value + host.get(name, 0) for name, value in memory.items()}
        host = dict.fromkeys(host, 0)
    shown = {"preset": s.preset, "stage": s.stage, "device": device, "gpus": gpus, "lora_rank": s.lora_rank,
             "lora_targets": s.lora_targets, "zero_stage": s.zero_stage, "offload_optimizer": s.offload_optimizer,
             "offload_params": s.offload_params, "gradient_checkpointing": s.gradient_checkpointing,
             "latents": bool(s.latents), "train_2d": s.train_2d, "batch_size": batch, "frames": frames, "size": size,
             "overrides": s.overrides}
    return Plan(shown, parameters, trainable, frozen, [batch, *sample.shape[1:]], per_sample, saved["checkpointed"],
                {k: int(math.ceil(v)) for k, v in memory.items()}, {k: int(math.ceil(v)) for k, v in host.items()})


def card_bytes(text: str) -> float:
    """'80GB', '24 GiB', '80' (GiB) as bytes."""
    number = text.strip().lower().removesuffix("ib").removesuffix("b").removesuffix("g").strip()
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"memory size {text!r}: expected GiB, like 80 or 24GB") from None
    if value <= 0:
        raise ValueError(f"memory size {text!r} must be positive")
    return value * GiB


def render(result: Plan, limit_bytes: float | None = None, limit_name: str = "the card") -> str:
    """The plan as a table of GiB per rank, and the verdict against `limit_bytes`."""
    s = result.settings
    mode = f"LoRA rank {s['lora_rank']} ({s['lora_targets']})" if s["lora_rank"] else "full fine-tuning"
    lines = [f"{s['preset']} {s['stage']} stage on {s['gpus']} {'GPU' if s['device'] == 'cuda' else 'CPU process'}"
             f"{'s' if s['gpus'] > 1 else ''}: {mode}, ZeRO-{s['zero_stage']}"
             + (", optimizer offload" if s["offload_optimizer"] else "") + (", parameter offload" if s["offload_params"]
                                                                          else "")
             + (", gradient checkpointing" if s["gradient_checkpointing"] else "")
             + f", micro-batch {tuple(result.sample)}" + (", latents" if s["latents"] else ", pixels"),
             f"UNet {result.parameters / 1e6:,.1f} M weights, {result.trainable / 1e6:,.2f} M trainable; frozen VAE and "
             f"text encoder {result.frozen_parameters / 1e6:,.1f} M; autograd keeps {result.saved_per_sample / 2**20:,.0f}"
             f" MiB per sample", "", f"{'per rank':12} {'GiB':>8}  {'host GiB':>8}"]
    largest = max(PASSES, key=result.device.get)
    for name, value in result.device.items():
        hosted = result.host.get(name, 0)
        note = ("  (the largest of " + ", ".join(PASSES) + ": counted)" if name == largest
                else "  (not at once with " + largest + ")" if name in PASSES else "")
        lines.append(f"{name:12} {value / GiB:8.2f}  " + (f"{hosted / GiB:8.2f}" if hosted else " " * 8) + note)
    lines.append(f"{'total':12} {result.total / GiB:8.2f}  {sum(result.host.values()) / GiB:8.2f}")
    if limit_bytes is not None:
        if result.fits(limit_bytes):
            lines.append(f"fits {limit_name} ({limit_bytes / GiB:.1f} GiB): {limit_bytes / GiB - result.total / GiB:.1f} "
                         "GiB to spare")
        else:
            lines.append(f"does NOT fit {limit_name} ({limit_bytes / GiB:.1f} GiB): {result.total / GiB:.1f} GiB "
                         f"needed; set {result.advice(limit_bytes)}")
    return "\n".join(lines)
