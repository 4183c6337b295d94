"""A LaVie model folder: everything needed to generate, in diffusers layout.

    model_index.json      components, frame counts and sizes, sampling defaults per stage
    tokenizer/ text_encoder/ vae/ scheduler/         shared by the base and interpolation stages
    unet_base/ unet_interpolation/ unet_vsr/         one UNet per cascade stage (any may be missing)
    vsr_tokenizer/ vsr_text_encoder/ vsr_vae/ vsr_scheduler/ vsr_low_res_scheduler/
                                                     the x4 upscaler's own components, for the VSR stage

The cascade starts from a Stable Diffusion folder and an x4 upscaler folder (diffusers' own layouts, whose 2D
`unet/` the stages inflate): the real ones at paper scale, the tiny world's pretrained stand-ins otherwise
(`init_stand_ins` builds them untrained; lavie_model/pretrained/ holds the trained ones).
Components are loaded with the classes named here, never with classes named by the folder.
model_index.json's "_untrained" lists the UNets whose video weights are a starting point for training, not a
trained stage (inflated afresh from a 2D UNet, or random); training a stage takes its UNet off the list.
"""

import json
from pathlib import Path

STAGES = ("base", "interpolation", "vsr")
UNTRAINED = "_untrained"
# The component each stage trains: the cascade's three in a LaVie folder, the stand-ins' 2D UNet in a
# Stable Diffusion or x4 upscaler folder.
UNET = {"t2i": "unet", "upscaler": "unet", "base": "unet_base", "interpolation": "unet_interpolation",
        "vsr": "unet_vsr"}


def untrained_unets(path) -> list[str]:
    """The UNets of a model folder marked as an untrained starting point (model_index.json "_untrained")."""
    return list(read_index(path).get(UNTRAINED, []))


def component_class(name: str):
    """The class a component of a model folder is loaded with."""
    from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler
    from transformers import CLIPTextModel, CLIPTokenizer

    from diffusers import UNet2DConditionModel

    from .models import UNet3DConditionModel

    classes = {
        "tokenizer": CLIPTokenizer, "text_encoder": CLIPTextModel, "vae": AutoencoderKL, "scheduler": DDPMScheduler,
        "unet": UNet2DConditionModel, "low_res_scheduler": DDPMScheduler,
        "unet_base": UNet3DConditionModel, "unet_interpolation": UNet3DConditionModel,
        "vsr_tokenizer": CLIPTokenizer, "vsr_text_encoder": CLIPTextModel, "vsr_vae": AutoencoderKL,
        "vsr_scheduler": DDIMScheduler, "vsr_low_res_scheduler": DDPMScheduler,
    }
    if name == "unet_vsr":
        from .models import UNet3DVSRModel

        return UNet3DVSRModel
    return classes[name]


def read_index(path) -> dict:
    path = Path(path)
    index_file = path / "model_index.json"
    if not path.is_dir():
        raise FileNotFoundError(f"model folder not found: {path}")
    if not index_file.is_file():
        raise FileNotFoundError(f"{path} is not a LaVie model folder: it has no model_index.json")
    try:
        return json.loads(index_file.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{index_file} is not valid JSON: {error}") from error


def present_components(path) -> list[str]:
    """The components a model folder holds (listed in model_index.json and present on disk; "_" keys are the
    folder's own records, not components)."""
    index = read_index(path)
    return [name for name, entry in index.items() if not name.startswith("_") and isinstance(entry, list)
            and len(entry) == 2 and entry[0] is not None and (Path(path) / name).is_dir()]


def load_components(path, names, stage: str, torch_dtype=None):
    """The named components of a model folder, plus its generation settings; missing parts are named.
    Weights load in `torch_dtype`, fp32 by default whatever the files hold (the stand-ins ship in fp16)."""
    import torch

    index = read_index(path)
    present = present_components(path)
    missing = [name for name in names if name not in present]
    if missing:
        raise FileNotFoundError(f"model folder {path} lacks {', '.join(f'{name}/' for name in missing)}, "
                                f"needed for the {stage} stage")
    components = {}
    for name in names:
        cls = component_class(name)
        folder = str(Path(path) / name)
        if name.endswith("tokenizer") or name.endswith("scheduler"):
            components[name] = cls.from_pretrained(folder)
        else:
            components[name] = cls.from_pretrained(folder, torch_dtype=torch_dtype or torch.float32).eval()
    settings = {key: index[key] for key in ("num_frames", "height", "width", "fps", "sampling") if key in index}
    return components, settings


def write_model_folder(output, components: dict, settings: dict, pipeline: str = "LaVieCascadePipeline") -> Path:
    """Save components into a new model folder with its model_index.json (naming `pipeline`, the class that
    loads the folder); nothing is left half-written.

    A component may be given as a function that builds it, so that large ones are built, saved and freed
    one at a time.
    """
    import shutil
    import tempfile

    output = Path(output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise FileExistsError(f"output {output} already exists and is not an empty folder")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    except OSError as error:
        raise OSError(f"cannot write to {output.parent}: {error.strerror}") from error
    try:
        index = {"_class_name": pipeline}
        for name, component in components.items():
            if callable(component) and not hasattr(component, "save_pretrained"):
                component = component()
            component.save_pretrained(staging / name)
            index[name] = [type(component).__module__.split(".")[0], type(component).__name__]
            del component
        (staging / "model_index.json").write_text(json.dumps(index | settings, indent=2) + "\n")
        if output.exists():
            output.rmdir()
        staging.rename(output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output


def generation_settings(preset: dict, vae_scale_factor: int) -> dict:
    """Frame count, size, frame rate and sampling defaults a model folder records from its preset."""
    height, width = preset["data"]["latent_size"]
    return {"num_frames": preset["data"]["num_frames"], "height": height * vae_scale_factor,
            "width": width * vae_scale_factor, "fps": preset["data"]["fps"], "sampling": preset["sampling"]}


def init_random(output, preset: str = "tiny", seed: int = 0) -> Path:
    """A randomly initialised, complete model folder of a preset that defines every component (as `tiny`
    does), built offline. `lavie init-tiny` builds the tiny one, which the tests and the demo use."""
    import tempfile

    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from .config import base_unet_config, load_preset
    from .models import UNet3DConditionModel, UNet3DVSRModel, vsr_config_from_2d
    from .text import write_clip_tokenizer

    preset_name = preset
    preset = load_preset(preset)
    missing = [key for key in ("text_encoder", "vae", "vsr") if key not in preset["model"]]
    if missing:
        raise ValueError(f"preset {preset_name!r} does not define model.{', model.'.join(missing)}: "
                         "build its folder with `lavie assemble` from pretrained weights instead")
    model, vsr = preset["model"], preset["model"]["vsr"]
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as folder:
        write_clip_tokenizer(folder)
        tokenizer = CLIPTokenizer.from_pretrained(folder)

    def text_encoder(hidden_size):
        config = dict(model["text_encoder"], hidden_size=hidden_size)
        return CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                                            eos_token_id=tokenizer.eos_token_id, **config))

    base_config = base_unet_config(preset)
    unet_base = UNet3DConditionModel(**base_config)
    components = {
        "tokenizer": tokenizer,
        "text_encoder": text_encoder(base_config["cross_attention_dim"]),
        "vae": AutoencoderKL(**model["vae"]),
        "scheduler": DDPMScheduler(**preset["scheduler"]),
        "unet_base": unet_base,
        # noisy and conditioning latents side by side
        "unet_interpolation": UNet3DConditionModel(**base_config | {"block_design": "interpolation",
                                                                    "in_channels": 2 * unet_base.config.in_channels}),
        "unet_vsr": UNet3DVSRModel(**vsr_config_from_2d(vsr["unet_2d"], model["group_norm_across_frames"])),
        "vsr_tokenizer": tokenizer,
        "vsr_text_encoder": text_encoder(vsr["unet_2d"]["cross_attention_dim"]),
        "vsr_vae": AutoencoderKL(**vsr["vae"]),
        "vsr_scheduler": DDIMScheduler(**vsr["scheduler"]),
        "vsr_low_res_scheduler": DDPMScheduler(**vsr["low_res_scheduler"]),
    }
    scale = 2 ** (len(model["vae"]["block_out_channels"]) - 1)
    return write_model_folder(output, components, generation_settings(preset, scale) | {
        "preset": preset["name"], UNTRAINED: ["unet_base", "unet_interpolation", "unet_vsr"]})


def init_stand_ins(output, preset: str = "tiny", seed: int = 0) -> dict[str, Path]:
    """Untrained stand-ins for Stable Diffusion and the x4 upscaler, as `make pretrain` starts from them:
    OUTPUT/stable-diffusion and OUTPUT/x4-upscaler, each in diffusers' own layout (diffusers'
    StableDiffusionPipeline and StableDiffusionUpscalePipeline load them), random UNets and autoencoders of
    the preset's sizes, one frozen random CLIP text encoder for both. Returns {"sd": path, "upscaler": path}."""
    import tempfile

    import diffusers
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from .config import load_preset
    from .text import write_clip_tokenizer

    name, preset = preset, load_preset(preset)
    model = preset["model"]
    missing = [key for key in ("text_encoder", "vae", "vsr") if key not in model]
    if missing:
        raise ValueError(f"preset {name!r} does not define model.{', model.'.join(missing)}: it starts from "
                         "pretrained Stable Diffusion and x4 upscaler folders")
    output = Path(output)
    if output.exists() and any(output.iterdir()):
        raise FileExistsError(f"output {output} already exists and is not an empty folder")
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as folder:
        write_clip_tokenizer(folder)
        tokenizer = CLIPTokenizer.from_pretrained(folder)
    unet_2d, vsr = model["unet_2d"], model["vsr"]
    if unet_2d["cross_attention_dim"] != vsr["unet_2d"]["cross_attention_dim"]:
        raise ValueError("the stand-ins share one text encoder: model.unet_2d and model.vsr.unet_2d need the same "
                         "cross_attention_dim")
    text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                                                eos_token_id=tokenizer.eos_token_id,
                                                **dict(model["text_encoder"], hidden_size=unet_2d["cross_attention_dim"])))
    with torch.no_grad():  # it stays frozen and ships in fp16: make it exactly representable there
        for parameter in text_encoder.parameters():
            parameter.copy_(parameter.half().float())
    version = {"_diffusers_version": diffusers.__version__}
    sd = write_model_folder(output / "stable-diffusion", {
        "tokenizer": tokenizer, "text_encoder": text_encoder, "vae": AutoencoderKL(**model["vae"]),
        "unet": UNet2DConditionModel(**unet_2d), "scheduler": DDPMScheduler(**preset["scheduler"]),
    }, version | {"safety_checker": [None, None], "feature_extractor": [None, None], "image_encoder": [None, None],
                  "requires_safety_checker": False}, pipeline="StableDiffusionPipeline")
    upscaler_unet = UNet2DConditionModel(**vsr["unet_2d"])
    # The noise-level embedding is a table of 1000 rows added to the timestep embedding; drawn N(0, 1) its
    # rows (norm ~11) drown the timestep's (~1.4) until each level has been trained: start them neutral.
    torch.nn.init.zeros_(upscaler_unet.class_embedding.weight)
    upscaler = write_model_folder(output / "x4-upscaler", {
        "tokenizer": tokenizer, "text_encoder": text_encoder, "vae": AutoencoderKL(**vsr["vae"]),
        "unet": upscaler_unet, "scheduler": DDIMScheduler(**vsr["scheduler"]),
        "low_res_scheduler": DDPMScheduler(**vsr["low_res_scheduler"]),
    }, version | {"max_noise_level": 350}, pipeline="StableDiffusionUpscalePipeline")
    return {"sd": sd, "upscaler": upscaler}


def assemble(output, sd, upscaler=None, base=None, interpolation=None, vsr=None, inflate_missing=False,
             preset: str = "paper") -> Path:
    """A model folder from Stable Diffusion 1.x and x4 upscaler folders (or the tiny world's stand-ins, with
    `preset="tiny"`) plus released checkpoints (the official .pt files, or UNet folders in this project's
    diffusers layout); frame counts, sizes and sampling defaults are the preset's.

    A stage with no checkpoint is left out, or with `inflate_missing` inflated afresh from the 2D UNet
    (untrained temporal layers: a starting point for training, not a model to sample from; listed as such).
    """
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler
    from transformers import CLIPTextModel, CLIPTokenizer

    from .config import load_preset
    from .convert import convert_base, convert_interpolation, convert_vsr, load_checkpoint
    from .models import UNet3DConditionModel, UNet3DVSRModel

    preset_name, preset = preset, load_preset(preset)
    across = preset["model"]["group_norm_across_frames"]
    sd = _diffusers_folder(sd, ("tokenizer", "text_encoder", "vae", "unet"), "Stable Diffusion")
    sd_unet_config = json.loads((sd / "unet" / "config.json").read_text())
    components = {
        "tokenizer": lambda: CLIPTokenizer.from_pretrained(sd / "tokenizer"),
        "text_encoder": lambda: CLIPTextModel.from_pretrained(sd / "text_encoder", torch_dtype=torch.float32),
        "vae": lambda: AutoencoderKL.from_pretrained(sd / "vae"),
        "scheduler": lambda: DDPMScheduler(**preset["scheduler"]),
    }
    def released(path, cls, convert, config):
        if Path(path).is_dir():  # a UNet folder (a trained stage, the shipped tiny LaVie's)
            return lambda: cls.from_pretrained(path, torch_dtype=torch.float32)
        return lambda: convert(load_checkpoint(path), config, f"checkpoint {path}")

    if base:
        components["unet_base"] = released(base, UNet3DConditionModel, convert_base, sd_unet_config)
    elif inflate_missing:
        components["unet_base"] = lambda: UNet3DConditionModel.from_pretrained_2d(
            sd, subfolder="unet", group_norm_across_frames=across)
    if interpolation:
        components["unet_interpolation"] = released(interpolation, UNet3DConditionModel, convert_interpolation,
                                                    sd_unet_config)
    elif inflate_missing:
        components["unet_interpolation"] = lambda: UNet3DConditionModel.from_pretrained_2d(
            sd, subfolder="unet", group_norm_across_frames=across, block_design="interpolation",
            in_channels=2 * sd_unet_config["in_channels"])
    if upscaler is not None:
        up = _diffusers_folder(upscaler, ("tokenizer", "text_encoder", "vae", "unet", "scheduler", "low_res_scheduler"),
                               "x4 upscaler")
        up_unet_config = json.loads((up / "unet" / "config.json").read_text())
        components |= {
            "vsr_tokenizer": lambda: CLIPTokenizer.from_pretrained(up / "tokenizer"),
            "vsr_text_encoder": lambda: CLIPTextModel.from_pretrained(up / "text_encoder", torch_dtype=torch.float32),
            "vsr_vae": lambda: AutoencoderKL.from_pretrained(up / "vae"),
            # LaVie samples the upscaler with linear betas (the official VSR code overrides them so).
            "vsr_scheduler": lambda: DDIMScheduler.from_pretrained(up / "scheduler", beta_schedule="linear"),
            "vsr_low_res_scheduler": lambda: DDPMScheduler.from_pretrained(up / "low_res_scheduler"),
        }
        if vsr:
            components["unet_vsr"] = released(vsr, UNet3DVSRModel, convert_vsr, up_unet_config)
        elif inflate_missing:
            components["unet_vsr"] = lambda: UNet3DVSRModel.from_pretrained_2d(
                up, subfolder="unet", group_norm_across_frames=across)
    elif vsr:
        raise ValueError("the VSR checkpoint needs the x4 upscaler folder (--upscaler) it was inflated from")
    scale = 2 ** (len(json.loads((sd / "vae" / "config.json").read_text())["block_out_channels"]) - 1)
    untrained = [f"unet_{stage}" for stage, given in (("base", base), ("interpolation", interpolation), ("vsr", vsr))
                 if not given and f"unet_{stage}" in components]
    return write_model_folder(output, components, generation_settings(preset, scale)
                              | {"preset": preset_name, UNTRAINED: untrained})


def _diffusers_folder(path, parts, what) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{what} folder not found: {path}")
    missing = [part for part in parts if not (path / part).is_dir()]
    if missing:
        raise FileNotFoundError(f"{what} folder {path} lacks {', '.join(f'{m}/' for m in missing)}")
    return path
