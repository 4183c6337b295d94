"""The whole cascade through its stage pipelines at a preset's sizes, random weights: seconds per UNet call and
per stage, extrapolated to the default steps, and the peak memory with every stage loaded.

    python benchmarks/cascade_sampling.py [--preset paper] [--device cuda|cpu] [--steps 3,3,2] [--json out.json]

Batch 1, 16 x 320 x 512 -> 61 frames -> 61 x 1280 x 2048 at the paper preset, for --steps denoising steps of the
base, interpolation and VSR stages (VSR: per 8-frame chunk), guidance as the preset samples. Nothing is downloaded:
the text encoders, VAEs and UNets have random weights of the preset's shapes (Stable Diffusion 1.4's and the x4
upscaler's where the preset names none). benchmarks/device_check.py runs it as an item of its section 3.
"""

import argparse
import json
import statistics
import time
from pathlib import Path

from common import STAGES, first_line, table, to_dtype

SAMPLING_STEPS = {"base": 3, "interpolation": 3, "vsr": 2}  # denoising steps run per stage (VSR: per 8-frame chunk)


def timed_calls(module, sync) -> list[float]:
    """The seconds of each forward call of `module` from now on, recorded by hooks (synchronised)."""
    calls, starts = [], []

    def before(*_):
        sync()
        starts.append(time.perf_counter())

    def after(*_):
        sync()
        calls.append(time.perf_counter() - starts.pop())

    module.register_forward_pre_hook(before)
    module.register_forward_hook(after)
    return calls


def random_cascade(preset: dict, device, dtype):
    """The cascade's three stage pipelines (LaVieCascadePipeline) with random weights at the preset's sizes, made on
    `device`: the preset's text encoder and VAE where it defines them (tiny), else Stable Diffusion 1.4's and the x4
    upscaler's shapes (paper); CLIP's tokenizer from the shipped stand-ins (no download)."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from lavie_model.config import load_preset
    from lavie_model.finetune.plan import build_unet, frozen_configs
    from lavie_model.model_folder import generation_settings
    from lavie_model.pipelines.cascade import STAGE_PIPELINES, LaVieCascadePipeline
    from lavie_model.tiny.stand_ins import shipped

    tokenizer = CLIPTokenizer.from_pretrained(shipped("tiny")["sd"] / "tokenizer")
    x4 = load_preset("tiny")["model"]["vsr"]  # the x4 upscaler's schedulers, as the tiny preset records them
    vae_config, text_config = frozen_configs("base", preset)
    vsr_vae, vsr_text = frozen_configs("vsr", preset)

    def text_encoder(config):
        ids = {"vocab_size": len(tokenizer), "bos_token_id": tokenizer.bos_token_id,
               "eos_token_id": tokenizer.eos_token_id}
        return to_dtype(CLIPTextModel(CLIPTextConfig(**ids | config)), dtype).eval()

    torch.manual_seed(0)
    with torch.device(device):
        parts = {
            "tokenizer": tokenizer, "text_encoder": text_encoder(text_config),
            "vae": to_dtype(AutoencoderKL(**vae_config), dtype).eval(),
            "scheduler": DDPMScheduler(**preset["scheduler"]),
            **{f"unet_{stage}": to_dtype(build_unet(stage, preset), dtype).eval() for stage in STAGES},
            "vsr_tokenizer": tokenizer, "vsr_text_encoder": text_encoder(vsr_text),
            "vsr_vae": to_dtype(AutoencoderKL(**vsr_vae), dtype).eval(),
            "vsr_scheduler": DDIMScheduler(**x4["scheduler"]),
            "vsr_low_res_scheduler": DDPMScheduler(**x4["low_res_scheduler"]),
        }
    settings = generation_settings(preset, 2 ** (len(vae_config["block_out_channels"]) - 1))
    return LaVieCascadePipeline({stage: pipeline(**{name: parts[name] for name in pipeline.components_needed},
                                                 **settings) for stage, pipeline in STAGE_PIPELINES.items()})


def cascade_sampling(preset_name: str, device_name: str, steps: dict, deadline: float) -> dict:
    """The whole cascade with random weights at the preset's sizes, batch 1, `steps[stage]` denoising steps per
    stage (per 8-frame chunk for VSR), guidance as the preset samples (2 UNet rows per call when on). Per stage: the
    UNet calls' seconds (hooks), the stage's fixed cost (text encoding, VAE coding: the rest of its time), its time
    extrapolated to the preset's default steps, and the peak memory with every stage loaded."""
    import resource

    import torch

    from lavie_model.config import load_preset

    cuda = device_name == "cuda"
    device = torch.device(device_name)
    preset = load_preset(preset_name)

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def peak_gib():  # since the last reset on CUDA; of the whole process on the CPU
        if cuda:
            return torch.cuda.max_memory_allocated() / 2**30
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

    started = time.perf_counter()
    cascade = random_cascade(preset, device, torch.bfloat16 if cuda else torch.float32)
    results = {"build_s": time.perf_counter() - started, "stages": {},
               "weights_gib": torch.cuda.memory_allocated() / 2**30 if cuda else None}
    generator = torch.Generator(device).manual_seed(0)
    prompt, video = "a red circle moving left", None
    for stage, pipeline in cascade.stages.items():
        pipeline.set_progress_bar_config(disable=True)
        if time.time() > deadline:
            results["stages"][stage] = {"status": "partial", "error": "not run: its share of the budget was spent"}
            break
        calls = timed_calls(getattr(pipeline, f"unet_{stage}"), sync)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        options = {"num_inference_steps": steps[stage], "generator": generator}
        try:
            video = pipeline(prompt, **options).frames if stage == "base" else pipeline(video, prompt, **options).frames
        except Exception as error:  # an out-of-memory, say: the stages before keep their figures, the next need this
            results["stages"][stage] = {"status": "error", "error": first_line(error), "peak_gib": peak_gib()}
            break
        sync()
        seconds = time.perf_counter() - start
        per_step = statistics.median(calls[1:] or calls)  # the first call warms up
        chunks = len(calls) // steps[stage]
        default = preset["sampling"][stage]["steps"]
        fixed = seconds - sum(calls)
        results["stages"][stage] = {
            "status": "pass", "output": list(video.shape), "steps": steps[stage], "unet_calls": calls,
            "rows": 2 if pipeline.config.sampling[stage]["guidance_scale"] > 1 else 1, "chunks": chunks,
            "seconds": seconds, "per_step_s": per_step, "fixed_s": fixed, "default_steps": default,
            "extrapolated_s": fixed + default * chunks * per_step, "peak_gib": peak_gib()}
    ran = results["stages"].values()
    results["peak_gib"] = max((stage["peak_gib"] for stage in ran if "peak_gib" in stage), default=None)
    results["extrapolated_s"] = sum(stage["extrapolated_s"] for stage in ran if "extrapolated_s" in stage)
    results["memory"] = "CUDA max allocated" if cuda else "peak resident set of the process"
    return results


def sampling_md(sampling: dict) -> tuple[list[str], list[str]]:
    """The report of `cascade_sampling`: its table's markdown lines, and its errors as list items."""
    lines, errors = [], []
    if "stages" in sampling:
        rows = [[stage, tuple(s["output"]), s["rows"], f"{s['steps']} x {s['chunks']}", f"{s['per_step_s']:.3f}",
                 f"{s['fixed_s']:.1f}", f"{s['extrapolated_s']:.1f} ({s['default_steps']} steps)",
                 f"{s['peak_gib']:.1f}"] for stage, s in sampling["stages"].items() if "output" in s]
        lines += ["", "Sampling through the stage pipelines in cascade order, batch 1, every stage loaded (weights "
                  + (f"{sampling['weights_gib']:.1f} GiB" if sampling["weights_gib"] is not None else "on the CPU")
                  + "); s/step is one UNet call (all guidance rows), the fixed cost the rest of the stage's time:", ""]
        lines += table(["stage", "output (b, f, 3, h, w)", "UNet rows", "steps x chunks", "s/step", "fixed s",
                        "extrapolated s", "peak GiB"], rows)
        if sampling["peak_gib"] is not None:
            lines += ["", f"Whole cascade: peak {sampling['peak_gib']:.1f} GiB ({sampling['memory']}) over the stages "
                      f"run; {sampling['extrapolated_s']:.0f} s extrapolated to the default steps."]
        errors += [f"- sampling {stage}: {s['error']}" for stage, s in sampling["stages"].items() if "error" in s]
    elif "error" in sampling:
        errors.append(f"- sampling: {sampling['error']}")
    return lines, errors


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--steps", default=",".join(map(str, SAMPLING_STEPS.values())),
                        help="denoising steps of the base, interpolation and VSR stages")
    parser.add_argument("--json", help="write the results here as JSON")
    args = parser.parse_args()
    steps = dict(zip(STAGES, map(int, args.steps.split(","))))
    results = cascade_sampling(args.preset, args.device, steps, deadline=float("inf"))
    lines, errors = sampling_md(results)
    print("\n".join(lines + (["", "Errors:", ""] + errors if errors else [])))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n")
        print(f"\nresults written to {args.json}")


if __name__ == "__main__":
    main()
