"""Scoring a trained cascade: every stage on fixed prompts and on the held-out validation clips, beside the
trivial baseline it must beat.

    base           CLIPSIM and temporal consistency on the fixed prompts and the validation captions; FVD
                   against the validation clips; shapes adherence (colour, direction) on prompts of the
                   demo's shapes grammar (demo_corpus.PROMPTS), beside the text-to-image model's colour on the same
                   prompts (base/t2i_colour: does video fine-tuning keep what the image model knew?), and how
                   far the shapes move (base/shapes_moving, base/shapes_displacement); the new concept: the
                   share of samples for "a big ..." prompts (demo_corpus.CONCEPT_PROMPTS) that show a big shape
                   (base/new_concept), a word the shipped tiny LaVie never saw and the demo's batch teaches
    interpolation  PSNR and SSIM of the frames it fills in, from every 4th frame of validation clips, beside
                   four references on the same frames: holding the nearest keyframe (interpolation/psnr_hold),
                   the linear blend of the two neighbouring keyframes (psnr_blend), the blend of their VAE
                   latents decoded (psnr_latent_blend), and the VAE round trip of the true frames (psnr_vae, the
                   ceiling of a latent model); each also per clip (`per_clip`), and the model beside each blend
                   clip by clip (`paired`: stats.paired_comparison)
    vsr            PSNR and SSIM of validation clips upscaled from x4 smaller copies, beside bicubic upscaling
                   (vsr/psnr_bicubic)

Adherence is counted on a few dozen samples, so each rate is kept with its count (`rates`: hits, n and the 95%
Wilson interval, see stats.py). Seeds are fixed, so the same model gives the same numbers. A gallery of
prompt -> base -> interpolated -> super-resolved videos is written as GIFs.
"""

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ..config import load_preset
from ..curation.demo_corpus import COLOURS, CONCEPT_PROMPTS, DIRECTIONS, PROMPTS
from ..curation.scores import ScoreConfig, load_clip
from ..training.data import expand_shards, is_validation, raw_samples, resize_crop, validation_clips
from ..video import write_video
from .interpolation import interpolation_references
from .metrics import clipsim, fvd, load_video_extractor, psnr, psnr_per_video, ssim, temporal_consistency
from .shapes import parse_prompt, shapes_adherence
from .stand_ins import t2i_images, t2i_pipeline
from .gate import BASELINES
from .stats import Rate, mean_interval, paired_comparison

# The rate that following a prompt by chance gives: 1 in 6 colours, 1 in 4 directions.
CHANCE = {"colour": 1 / len(COLOURS), "direction": 1 / len(DIRECTIONS)}


@dataclass
class EvalSettings:
    prompts: list[str] = field(default_factory=lambda: list(PROMPTS))
    concept_prompts: list[str] = field(default_factory=lambda: list(CONCEPT_PROMPTS))  # [] to skip
    samples_per_prompt: int = 2
    validation_clips: int = 8
    base_steps: int = 25
    interpolation_steps: int = 10
    vsr_steps: int = 10
    gallery: int = 2
    seed: int = 0
    clip_model: str = ScoreConfig.clip_model
    clip_weights: str | None = None
    i3d_path: str | None = None  # the StyleGAN-V I3D TorchScript file; without it a labelled fallback


def trained_combinations(shards, percent: float) -> set[tuple]:
    """(colour, shape, direction, background) of every training clip of the shapes grammar in the shards (the
    validation split left out)."""
    from ..curation.demo_corpus import parse_caption

    combinations = set()
    for shard in expand_shards(shards, "video shards"):
        for sample in raw_samples(shard):
            parsed = None if is_validation(sample["__key__"], percent) else parse_caption(sample["txt"].decode())
            if parsed is not None:
                combinations.add(parsed)
    return combinations


def prompt_adherence_base(pipe, settings, prompts, generator):
    """Base-stage videos for prompts, `samples_per_prompt` each: (n, f, 3, h, w) in [0, 1] and their prompts."""
    repeated = [p for p in prompts for _ in range(settings.samples_per_prompt)]
    videos = torch.cat([pipe(repeated[i:i + 4], num_inference_steps=settings.base_steps, generator=generator).frames
                        for i in range(0, len(repeated), 4)])
    return videos, repeated


def t2i_colour(t2i, prompts: list[str], size: tuple[int, int], settings: "EvalSettings") -> Rate:
    """Colour adherence of the text-to-image model's stills for the prompts, as many samples as the base stage."""
    from ..model_folder import load_components

    parts = load_components(t2i, ["tokenizer", "text_encoder", "vae", "unet", "scheduler"], "t2i")[0]
    pipe = t2i_pipeline(parts["unet"], parts["tokenizer"], parts["text_encoder"], parts["vae"], parts["scheduler"])
    repeated = [p for p in prompts for _ in range(settings.samples_per_prompt)]
    images = t2i_images(pipe, repeated, size, settings.base_steps, seed=settings.seed)
    adherence = shapes_adherence(images[:, None], repeated)
    return Rate(adherence["colour_hits"], adherence["n"])


def evaluate(model, videos, out_dir, preset: str = "tiny", settings: EvalSettings = EvalSettings(),
             log=print, t2i=None) -> dict:
    """Score the stages a model folder holds, each beside its baseline (`t2i`: the folder of the text-to-image
    model the base stage started from, for base/t2i_colour); returns {"model", "metrics", "rates", "intervals",
    "per_clip", "paired", "extractor", "clip", "validation_keys", "adherence", "gallery"}, also written to
    OUT_DIR/metrics.json beside the gallery GIFs. `rates` holds each counted metric with samples (Rate.as_dict:
    value, hits, n, Wilson low and high); `intervals` the 95% interval [low, high] of every rate and of the PSNRs
    averaged over clips (Student t over the clips' PSNRs); `per_clip` the interpolation PSNR of each validation
    clip, the model's and its references'; `paired` the model beside each blend clip by clip ({baseline:
    stats.paired_comparison})."""
    from ..model_folder import present_components
    from ..pipelines import LaVieBasePipeline, LaVieInterpolationPipeline, LaVieVSRPipeline

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = load_preset(preset)
    percent = config["training"]["validation_percent"]
    present = present_components(model)
    metrics, rates, intervals, per_clip, paired, gallery = {}, {}, {}, {}, {}, []
    clip_model, preprocess, tokenizer, clip_label = load_clip(
        ScoreConfig(clip_model=settings.clip_model, clip_weights=settings.clip_weights))
    extractor = load_video_extractor(settings.i3d_path)

    def generator():
        return torch.Generator().manual_seed(settings.seed)

    base = LaVieBasePipeline.from_pretrained(model)
    size = (base.config.height, base.config.width)
    keyframes = config["training"]["interpolation"]["keyframes"]
    validation = validation_clips(videos, percent, settings.validation_clips, 4 * keyframes - 3, size)
    log(f"{len(validation)} validation clips; CLIP {clip_label}; FVD features {extractor.name}")

    log("base: fixed prompts and validation captions")
    fixed, fixed_prompts = prompt_adherence_base(base, settings, settings.prompts, generator())
    adherence = shapes_adherence(fixed, fixed_prompts)
    n = adherence["n"]
    rates["base/shapes_colour"] = Rate(adherence["colour_hits"], n)
    if t2i is not None and n:
        rates["base/t2i_colour"] = t2i_colour(t2i, settings.prompts, size, settings)
    rates["base/shapes_direction"] = Rate(adherence["direction_hits"], n)
    rates["base/shapes_moving"] = Rate(adherence["moving"], n)
    seen = trained_combinations(videos, percent)
    unseen = [sample for sample in adherence["per_sample"] if sample["expected_colour"] is not None
              and parse_prompt(sample["prompt"]) not in seen]
    for name in ("colour", "direction"):
        rates[f"base/shapes_{name}_unseen"] = Rate(sum(sample[f"{name}_ok"] for sample in unseen), len(unseen))
    if settings.concept_prompts:
        log("base: the new concept's prompts")
        concept = shapes_adherence(*prompt_adherence_base(base, settings, settings.concept_prompts, generator()))
        rates["base/new_concept"] = Rate(concept["big_hits"], concept["big"])
    metrics.update({name: rate.value for name, rate in rates.items()})
    metrics["base/shapes_displacement"] = adherence["mean_displacement"]
    metrics["base/clipsim"] = clipsim(clip_model, preprocess, tokenizer, fixed, fixed_prompts)
    metrics["base/temporal_consistency"] = temporal_consistency(clip_model, preprocess, fixed)
    if validation:
        captions = [clip["caption"] for clip in validation]
        generated = torch.cat([base(captions[i:i + 4], num_inference_steps=settings.base_steps,
                                    generator=generator()).frames for i in range(0, len(captions), 4)])
        real = torch.stack([clip["frames"][:generated.shape[1]] for clip in validation])
        metrics["base/clipsim_validation"] = clipsim(clip_model, preprocess, tokenizer, generated, captions)
        if len(validation) >= 2:  # a covariance needs two videos per set
            metrics["base/fvd"] = fvd(extractor, real, generated)["value"]
    del base
    # each later stage is loaded once, for its metrics and the gallery
    interpolate = LaVieInterpolationPipeline.from_pretrained(model) if "unet_interpolation" in present else None
    upscale = LaVieVSRPipeline.from_pretrained(model) if "unet_vsr" in present else None

    if interpolate is not None and validation:
        log("interpolation: validation clips from every 4th frame")
        truth = torch.stack([clip["frames"] for clip in validation])  # (n, 4K-3, 3, h, w)
        filled = torch.cat([interpolate(truth[i:i + 2, ::4], [c["caption"] for c in validation[i:i + 2]],
                                        num_inference_steps=settings.interpolation_steps, generator=generator()).frames
                            for i in range(0, len(truth), 2)])
        between = torch.arange(truth.shape[1]) % 4 != 0  # the frames filled in; the keyframes were given
        psnrs = psnr_per_video(filled[:, between], truth[:, between])  # (n,): one PSNR per clip
        references = interpolation_references(interpolate.vae, truth)  # {name: (n,)} on the same frames
        mean, low, high = mean_interval(psnrs)  # over the clips
        metrics["interpolation/psnr"], intervals["interpolation/psnr"] = mean, (low, high)
        metrics["interpolation/ssim"] = ssim(filled[:, between], truth[:, between])
        metrics.update({name: float(values.mean()) for name, values in references.items()})
        per_clip = {"interpolation/psnr": psnrs} | references
        paired = {baseline: paired_comparison(psnrs, references[baseline])
                  for baseline in BASELINES["interpolation/psnr"]}

    if upscale is not None and validation:
        log("vsr: validation clips from x4 smaller copies")
        # the decoded clips at the super-resolution size: base-size frames scaled up would be a blurred truth,
        # which bicubic upscaling matches better than any sharp output
        vsr_size, frames = tuple(config["training"]["vsr"]["size"]), config["training"]["vsr"]["num_frames"]
        truth = torch.stack([(resize_crop(clip["source"][:frames], vsr_size) + 1) / 2
                             for clip in validation])  # (n, f, 3, H, W)
        small = F.interpolate(truth.flatten(0, 1), scale_factor=0.25, mode="bicubic", antialias=True)
        small = small.clamp(0, 1).unflatten(0, truth.shape[:2])
        upscaled = torch.cat([upscale(small[i:i + 2], [c["caption"] for c in validation[i:i + 2]],
                                      num_inference_steps=settings.vsr_steps, generator=generator()).frames
                              for i in range(0, len(small), 2)])
        mean, low, high = mean_interval(psnr_per_video(upscaled, truth))
        metrics["vsr/psnr"], intervals["vsr/psnr"] = mean, (low, high)
        metrics["vsr/ssim"] = ssim(upscaled, truth)
        metrics["vsr/psnr_bicubic"] = psnr(F.interpolate(small.flatten(0, 1), scale_factor=4, mode="bicubic")
                                           .clamp(0, 1).unflatten(0, truth.shape[:2]), truth)

    log("gallery")
    for index, prompt in enumerate(settings.prompts[:settings.gallery]):
        video = fixed[index * settings.samples_per_prompt][None]  # (1, f, 3, h, w)
        row = {"prompt": prompt, "base": write_video(video[0], out_dir / f"gallery{index}_base.gif", 8)}
        for stage, pipe, steps in (("interpolation", interpolate, settings.interpolation_steps),
                                   ("vsr", upscale, settings.vsr_steps)):
            if pipe is not None:
                video = pipe(video, prompt, num_inference_steps=steps, generator=generator()).frames
                row[stage] = write_video(video[0], out_dir / f"gallery{index}_{stage}.gif", 32)
        gallery.append(row)
    metrics = {name: (None if isinstance(v, float) and math.isnan(v) else float(v)) for name, v in metrics.items()}
    intervals |= {name: (rate.low, rate.high) for name, rate in rates.items() if rate.n}
    result = {"model": str(model), "metrics": metrics,
              "rates": {name: rate.as_dict() for name, rate in rates.items() if rate.n},
              "intervals": {name: [float(low), float(high)] for name, (low, high) in intervals.items()},
              "per_clip": {name: values.tolist() for name, values in per_clip.items()}, "paired": paired,
              "extractor": extractor.name, "clip": clip_label,
              "validation_keys": [clip["key"] for clip in validation], "adherence": adherence["per_sample"],
              "gallery": gallery}
    (out_dir / "metrics.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result
