"""One prepared GPU check: does this machine run the pipeline, and how fast, in one run of under 9 minutes.

    python benchmarks/device_check.py --out DIR [--smoke] [--budget-seconds 540]

Writes DIR/device_check.json and DIR/device_check.md, a report: per section its figures, pass or fail, and the
error if any. No section stops the others: each runs within its own share of the budget, records its error and
the next one goes on; sections 3 and 4 run their work in processes of their own, so that a CUDA out-of-memory
or a crash there ends only that item. Each section imports what it needs when it runs, so a missing package
(deepspeed, open_clip, av, dagster) is that section's error, not the script's.

1. Environment: the card, its memory, the CUDA, cuDNN, torch, diffusers, transformers and DeepSpeed versions,
   bf16 support, and which scaled-dot-product-attention backends run a small bf16 input.
2. Correctness: the tiny preset's three UNets (random, seeded weights; the zero-initialised temporal layers
   given weights) on the GPU in fp32 (TF32 off) and in bf16 against fp32 on the CPU, as ||gpu - cpu|| / ||cpu||;
   and the test suite's official-equivalence fixtures (tests/fixtures/official_*_reference.pt: the official
   LaVie UNets' outputs on small configs) replayed on the GPU in fp32, as the max abs error.
3. Paper-size cost (random weights, nothing downloaded): a training step of each stage at the paper preset's
   sizes (benchmarks/paper_step.py: bf16, gradient checkpointing, DeepSpeed ZeRO-2 when deepspeed imports, else a
   plain AdamW step): seconds, samples/s, peak memory, model FLOPs and MFU, and for the base stage what reading
   pixels would add; then the whole cascade (16 x 320 x 512 -> 61 frames -> 61 x 1280 x 2048) through its stage
   pipelines for a few denoising steps per stage, the UNet calls timed, extrapolated to the preset's default
   steps, with the peak memory of the cascade with every stage loaded.
4. The motion run: a stretch of the tiny LaVie's never-ending motion run (`tiny_lavie continue`, as `make motion`
   runs it on the CPU) for the time left: it resumes from the shipped base UNet, scores it on the held-out clips,
   trains with the card's leading recipe (CUDA graphs through torch.compile), scores again, and ships into
   OUT/lavie when the classifier's interval moved up. The card in OUT/lavie records the stretch either way: copy
   OUT/lavie/* over lavie_model/pretrained/tiny/lavie/ to keep it (at most 6 files, each under 16 MB).

`--quick` runs sections 1-3 in their smallest form (one timed step per stage, one sampling step) so that the
motion run gets most of the budget. `--smoke` runs sections 1-3 on the CPU with the tiny preset and one step, in
about a minute (a test runs it), and skips section 4: the motion run's stretch has its own test
(tests/test_motion_run.py). In smoke mode section 3's items are forked from multiprocessing's fork server, which
imports torch, diffusers, transformers and paper_step once (SMOKE_PRELOAD), instead of spawned: each spawned
process imports them again, most of a smoke run's time on a small CPU. Each item is still a process of its own.
"""

import argparse
import json
import multiprocessing
import os
import shlex
import signal
import subprocess
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

from cascade_sampling import SAMPLING_STEPS, cascade_sampling, sampling_md
from common import STAGES, first_line, in_own_process, table, to_dtype

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("diffusers", "transformers", "deepspeed", "webdataset", "braceexpand", "open_clip_torch", "av", "dagster")
THRESHOLDS = {"fp32": 1e-3, "bf16": 5e-2}  # relative error against fp32 on the CPU
OFFICIAL_THRESHOLD = 1e-4  # max abs error against the official outputs, as tests/test_convert.py asserts
PAPER_STEPS = 5  # timed training steps per stage, after one warm-up step
MFU_GOAL = 0.40  # issue 26's goal for the paper-size base step
MOTION_OPTIONS = ("--compile", "reduce-overhead", "--set", "batch_size=128", "learning_rate=0.001")  # on a GPU: CUDA
# graphs, and the batch and rate of the shipped base's GPU runs (the card's leading recipe is the CPU's batch 16)
LEARNING_OVERHEAD_S = 90  # the motion run's start-up, its last probe and shipping beside its training: a guess so far
QUICK_PAPER_SHARE = 0.3  # --quick: section 3's cap (it ends sooner, one step per stage), the rest to the motion run
REPORT_S = 10  # kept at the end of the budget for stopping the last section and writing the report
# --smoke: what section 3's fork server imports once for all its items (not deepspeed: paper_step.paper_steps
# imports it after setting DeepSpeed's environment)
SMOKE_PRELOAD = ["paper_step", "lavie_model.training.trainer", "lavie_model.pipelines.cascade", "transformers"]
SMOKE_LEARNING = ("skipped in smoke mode: a stretch of the motion run has its own test "
                  "(tests/test_motion_run.py::test_a_stretch_resumes_its_run_and_is_recorded_in_the_card)")


# ---------------------------------------------------------------------------------------------- helpers

def need_cuda(smoke: bool) -> None:
    import torch

    if not smoke and not torch.cuda.is_available():
        raise RuntimeError("CUDA is not available here: this section needs a GPU (--smoke runs it on the CPU)")


def status_of(items: dict) -> str:
    """A section's status from its items': error > fail > partial > pass."""
    for status in ("error", "fail", "partial"):
        if any(item.get("status") == status for item in items.values()):
            return status
    return "pass"


# ---------------------------------------------------------------------------------------------- 1. environment

def package_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def sdpa_backends(device, dtype) -> dict:
    """Per torch.nn.attention.SDPBackend: "ok" when it runs (1, 8, 256, 64) queries, else its error and the reasons
    torch warned of."""
    import warnings

    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q = torch.randn(1, 8, 256, 64, device=device, dtype=dtype)  # (b, heads, tokens, head dim)
    results = {}
    for name in ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                with sdpa_kernel(getattr(SDPBackend, name)):
                    F.scaled_dot_product_attention(q, q, q)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                results[name] = "ok"
            except Exception as error:  # RuntimeError "No available kernel", or a backend this torch lacks
                reasons = "; ".join(str(w.message).splitlines()[0] for w in caught)
                results[name] = (first_line(error) + (f" ({reasons})" if reasons else ""))[:400]
    return results


def environment(args, deadline: float) -> dict:
    import platform

    import torch

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    figures = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
               "cudnn": torch.backends.cudnn.version(), **{name: package_version(name) for name in PACKAGES}}
    if cuda:
        properties = torch.cuda.get_device_properties(0)
        figures |= {"card": properties.name, "memory_gib": round(properties.total_memory / 2**30, 1),
                    "compute_capability": f"{properties.major}.{properties.minor}",
                    "bf16": torch.cuda.is_bf16_supported()}
    else:
        figures |= {"card": "none (CPU only)", "bf16": False}
    figures["sdpa"] = sdpa_backends(device, torch.bfloat16)
    fused = figures["sdpa"]["FLASH_ATTENTION"] == "ok" or figures["sdpa"]["EFFICIENT_ATTENTION"] == "ok"
    if args.smoke:
        ok, why = figures["sdpa"]["MATH"] == "ok", "smoke mode: the CPU, the MATH attention backend runs"
    else:
        ok, why = cuda and figures["bf16"] and fused, "a CUDA card with bf16 and a fused attention backend"
    return {"status": "pass" if ok else "fail", "figures": figures, "criterion": why}


# ---------------------------------------------------------------------------------------------- 2. correctness

def randomize_zero_parameters(model, seed: int = 0):
    """Seeded weights for every parameter that starts at zero (the temporal layers' output projections, ...), as
    training would give them: else the temporal layers are the identity and go untested."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if not param.any():
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    return model


def tiny_unets(preset: dict) -> dict:
    """The tiny preset's three UNets with random, seeded weights: base inflated from its 2D UNet, interpolation
    from that base (stages.interpolation_from_base), VSR inflated from its x4-upscaler-shaped 2D UNet."""
    import torch
    from diffusers import UNet2DConditionModel

    from lavie_model.models import UNet3DConditionModel, UNet3DVSRModel
    from lavie_model.training.stages import interpolation_from_base

    across = preset["model"]["group_norm_across_frames"]
    torch.manual_seed(0)
    base = UNet3DConditionModel.from_pretrained_2d(UNet2DConditionModel(**preset["model"]["unet_2d"]),
                                                   group_norm_across_frames=across)
    unet_2d = UNet2DConditionModel(**preset["model"]["vsr"]["unet_2d"])
    vsr = UNet3DVSRModel.from_pretrained_2d(unet_2d, group_norm_across_frames=across)
    unets = {"base": base, "interpolation": interpolation_from_base(base), "vsr": vsr}
    return {stage: randomize_zero_parameters(unet, seed).eval() for seed, (stage, unet) in enumerate(unets.items())}


def official_replay(stage: str, device) -> dict:
    """The official-equivalence fixture of `stage` replayed on `device` in fp32: its model converted from the
    fixture's deterministic weights (as tests/test_convert.py and tests/test_vsr.py build it), its stored inputs,
    the max abs error against the stored official output."""
    import torch

    sys.path.insert(0, str(ROOT / "tests"))
    from official_weights import deterministic_state_dict

    from lavie_model.convert import CONVERTERS

    reference = torch.load(ROOT / "tests" / "fixtures" / f"official_{stage}_reference.pt", weights_only=True)
    model = CONVERTERS[stage](deterministic_state_dict(reference["shapes"], reference["seed"]),
                              reference["unet2d_config"]).to(device).eval()
    kwargs = {"class_labels": reference["class_labels"].to(device)} if "class_labels" in reference else {}
    with torch.no_grad():
        output = model(reference["sample"].to(device), reference["timestep"].to(device),
                       reference["encoder_hidden_states"].to(device), **kwargs).sample.cpu()
    error = (output - reference["output"]).abs().max().item()
    return {"max_abs_error": error, "threshold": OFFICIAL_THRESHOLD, "output": list(output.shape),
            "status": "pass" if error <= OFFICIAL_THRESHOLD else "fail"}


def against_cpu(unet, inputs: tuple, reference, device, dtype: str) -> dict:
    """The relative error of `unet` run on `device` in `dtype` ("fp32", "bf16") against its fp32 CPU output."""
    import copy

    import torch

    sample, timesteps, text, kwargs = inputs
    precision = torch.float32 if dtype == "fp32" else torch.bfloat16
    model = to_dtype(copy.deepcopy(unet).to(device), precision)
    kwargs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in kwargs.items()}
    with torch.no_grad():
        output = model(sample.to(device, precision), timesteps.to(device), text.to(device, precision),
                       **kwargs).sample.float().cpu()
    error = ((output - reference).norm() / reference.norm()).item()
    return {"relative_error": error, "threshold": THRESHOLDS[dtype], "output": list(output.shape),
            "status": "pass" if error < THRESHOLDS[dtype] else "fail"}


def correctness(args, deadline: float) -> dict:
    import torch

    from lavie_model.config import load_preset
    from lavie_model.finetune.plan import stage_inputs

    need_cuda(args.smoke)
    device = torch.device("cpu" if args.smoke else "cuda")
    preset = load_preset("tiny")
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # fp32 means fp32 here
    items, official, notes = {}, {}, []
    try:
        for stage, unet in tiny_unets(preset).items():
            torch.manual_seed(1)
            sample, timesteps, text, kwargs, _ = stage_inputs(unet, stage, preset, preset["training"]["image_frames"])
            with torch.no_grad():
                reference = unet(sample, timesteps, text, **kwargs).sample  # fp32 on the CPU
            for dtype in THRESHOLDS:
                if time.time() > deadline:
                    notes.append(f"stopped at the section's budget before {stage} {dtype}")
                    items[f"{stage} {dtype}"] = {"status": "partial"}
                    continue
                try:
                    items[f"{stage} {dtype}"] = against_cpu(unet, (sample, timesteps, text, kwargs), reference,
                                                            device, dtype)
                except Exception as error:
                    items[f"{stage} {dtype}"] = {"status": "error", "error": first_line(error)}
        for stage in STAGES:
            try:
                official[stage] = official_replay(stage, device)
            except Exception as error:
                official[stage] = {"status": "error", "error": first_line(error)}
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
        torch.cuda.empty_cache()
    return {"status": status_of(items | {f"official {k}": v for k, v in official.items()}), "notes": notes,
            "figures": {"device": str(device), "unets": items, "official": official}}


# ---------------------------------------------------------------------------------------------- 3. paper-size cost

def paper_cost(args, deadline: float) -> dict:
    from paper_step import paper_steps

    need_cuda(args.smoke)
    preset, device = ("tiny", "cpu") if args.smoke else ("paper", "cuda")
    steps = 1 if args.smoke or args.quick else PAPER_STEPS
    sampling_steps = {stage: 1 for stage in STAGES} if args.smoke or args.quick else SAMPLING_STEPS
    work = [(f"train {stage}", paper_steps, (preset, steps, None, device, stage)) for stage in STAGES]
    work.append(("sampling", cascade_sampling, (preset, device, sampling_steps)))
    start = "spawn"
    if args.smoke:  # the CPU: each item forked from a server that imported the heavy modules once (SMOKE_PRELOAD)
        multiprocessing.get_context("forkserver").set_forkserver_preload(SMOKE_PRELOAD)
        start = "forkserver"
    items = {}
    for i, (name, function, function_args) in enumerate(work):
        started = time.time()
        left = deadline - started
        if left < 10:
            items[name] = {"status": "partial", "error": "not run: the section's budget was spent"}
            continue
        # each item gets a fair share of what is left to time its steps in; it is killed only at the section's end
        result = in_own_process(function, (*function_args, time.time() + left / (len(work) - i)), left, start)
        if "error" in result:
            result["status"] = "error"
        elif name == "sampling":
            result["status"] = status_of(result["stages"])
        else:
            result["status"] = "partial" if result["stopped_by_deadline"] else "pass"
        items[name] = result
        print(f"  3. {name}: {result['status']} ({time.time() - started:.0f} s)", file=sys.stderr, flush=True)
    base = items["train base"]
    notes = []
    if base.get("mfu") is not None:
        notes.append(f"base step MFU {base['mfu']:.1%}: the goal of {MFU_GOAL:.0%} is "
                     + ("met" if base["mfu"] >= MFU_GOAL else "not met"))
    return {"status": status_of(items), "notes": notes, "figures": {"preset": preset, "device": device, **items}}


# ---------------------------------------------------------------------------------------------- 4. learning

def learning(args, deadline: float) -> dict:
    """A stretch of the tiny LaVie's motion run on this device (`tiny_lavie continue`) for the time left: it
    resumes from the shipped base UNet, scores it, trains, scores again and, when the classifier moved up, ships
    into OUT/lavie, with the card recording the stretch either way. What to bring back: OUT/lavie."""
    import shutil

    from lavie_model.tiny.tiny_lavie import lavie_root

    shipped = Path(args.out) / "lavie"
    command = [sys.executable, "-m", "lavie_model.tiny.tiny_lavie", "continue", "--stage", "base",
               "--shipped", str(shipped), *MOTION_OPTIONS]
    if args.smoke:
        return {"status": "skipped", "notes": [SMOKE_LEARNING], "figures": {"command": shlex.join(command)}}
    need_cuda(args.smoke)
    seconds = deadline - time.time() - LEARNING_OVERHEAD_S
    if seconds < 30:
        return {"status": "skipped", "notes": [f"only {deadline - time.time():.0f} s were left: too little to train"]}
    command += ["--max-seconds", f"{seconds:.0f}"]
    shipped.mkdir(parents=True, exist_ok=True)
    for name in ("card.json", "MODEL_CARD.md", "unet_base"):  # the stage continued, and the card it is recorded in
        source = lavie_root() / name
        (shutil.copytree if source.is_dir() else shutil.copy2)(source, shipped / name)
    log_file = Path(args.out) / "motion_log.txt"
    with open(log_file, "w") as log:  # its own process group: a timeout ends it and its workers
        process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, process_group=0)
        try:
            code = process.wait(timeout=max(1.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            code = process.wait()
    card = json.loads((shipped / "card.json").read_text())
    figures = {"command": shlex.join(command), "exit": code, "log": str(log_file)}
    if card["continuations"]:
        entry = card["continuations"][-1]
        figures |= {"run": entry["run"], "steps": entry["steps"], "clips": entry["clips"], "shipped": entry["shipped"],
                    "curve": entry["curve"], "stretch": entry["stretches"][-1]}
    if code == 0:
        return {"status": "pass", "figures": figures}
    why = "stopped at the section's budget" if code == -signal.SIGKILL else f"tiny_lavie continue exited with {code}"
    return {"status": "error", "error": f"{why}; the end of its log:\n{log_file.read_text()[-1500:]}",
            "figures": figures}


# ---------------------------------------------------------------------------------------------- report

SECTIONS = (  # name, title, share of the budget (None: what is left)
    ("environment", "1. Environment", 0.04),
    ("correctness", "2. Correctness on the GPU", 0.12),
    ("paper", "3. Paper-size cost per stage", 0.46),
    ("learning", "4. The motion run", None),
)


def gib(mb) -> str:
    return f"{mb / 1024:.1f}" if mb is not None else ""


def environment_md(figures: dict) -> list[str]:
    lines = table(["figure", "value"], [[key, value] for key, value in figures.items() if key != "sdpa"])
    return lines + ["", "Attention backends (torch.nn.attention.sdpa_kernel, bf16):", ""] + table(
        ["backend", "result"], [[name, result] for name, result in figures["sdpa"].items()])


def correctness_md(figures: dict) -> list[str]:
    rows = [[name, f"{item['relative_error']:.2e}" if "relative_error" in item else item.get("error", ""),
             f"< {THRESHOLDS[name.split()[-1]]:g}", item["status"]] for name, item in figures["unets"].items()]
    lines = [f"The tiny preset's UNets on {figures['device']} against fp32 on the CPU, ||a - b|| / ||b||:", ""]
    lines += table(["UNet, dtype", "relative error", "threshold", "result"], rows)
    rows = [[stage, f"{item['max_abs_error']:.2e}" if "max_abs_error" in item else item.get("error", ""),
             f"<= {OFFICIAL_THRESHOLD:g}", item["status"]] for stage, item in figures["official"].items()]
    return lines + ["", f"Official-equivalence fixtures replayed on {figures['device']} (fp32), max abs error against "
                    "the official LaVie output:", ""] + table(["stage", "max abs error", "threshold", "result"], rows)


def paper_md(figures: dict) -> list[str]:
    rows, errors = [], []
    for stage in STAGES:
        item = figures[f"train {stage}"]
        if "median_s" not in item:
            errors.append(f"- train {stage}: {item.get('error', item['status'])}")
            continue
        memory = gib(item["max_allocated_mb"]) if item["max_allocated_mb"] is not None else \
            f"{gib(item['peak_rss_mb'])} (RSS)"
        rows.append([stage, item["engine"], tuple(item["sample"]),
                     f"{item['parameters'] / 1e6:.0f} M ({item['trainable_parameters'] / 1e6:.0f} M)",
                     f"{item['median_s']:.3f} ({len(item['seconds'])})", f"{item['samples_per_s']:.2f}", memory,
                     f"{item['step_flops'] / 1e12:.2f}", f"{item['tflops_per_s']:.1f}",
                     f"{item['mfu']:.1%}" if item["mfu"] is not None else "(peak unknown)"])
    lines = [f"Training steps, {figures['preset']} preset on {figures['device']}: random weights and inputs, gradient "
             "checkpointing; model FLOPs counted on the meta device (no recomputation); MFU against the card's "
             "dense bf16 peak.", ""]
    lines += table(["stage", "engine", "sample (b, c, f, h, w)", "parameters (trainable)", "s/step (steps)",
                    "samples/s", "peak GiB", "TFLOP/step", "TFLOP/s", "MFU"], rows)
    base = figures["train base"]
    if "encode_s" in base:
        size = " x ".join(map(str, base["encode_size"]))
        lines += ["", f"Base from pixels instead of latents: the VAE encoder over {base['encode_frames']} frames of "
                  f"{size} and the text encoder add {base['encode_s']:.3f} s per step, {base['vae_share']:.0%} of a "
                  "pixel step: the share precomputed latents remove."]
    sampling_lines, sampling_errors = sampling_md(figures["sampling"])
    lines += sampling_lines
    errors += sampling_errors
    return lines + (["", "Errors:", ""] + errors if errors else [])


def learning_md(figures: dict) -> list[str]:
    from lavie_model.tiny.tiny_lavie import rate

    lines = ["```bash", figures["command"], "```"]
    if "curve" in figures:
        lines += ["", f"Run {figures['run']}: step {figures['steps']}, {figures['clips']:,} clips since the shipped "
                  f"weights; {'shipped into OUT/lavie' if figures['shipped'] else 'not shipped (did not move up)'}.", ""]
        lines += table(["step", "clips", "loss", "classifier direction", "sampled direction", "sampled colour"],
                       [[r["step"], r["samples"], f"{r['loss']:.4f}", rate(r, "direction_classifier"),
                         rate(r, "sampled_direction"), rate(r, "sampled_colour")] for r in figures["curve"]])
    return lines


def markdown(report: dict) -> str:
    sections = report["sections"]
    lines = [f"# Device check: {sections.get('environment', {}).get('figures', {}).get('card', '?')}", "",
             f"{report['mode']}; {report['started']}; commit {report['commit']}; {report['total_s']:.0f} s of a "
             f"{report['budget_s']:.0f} s budget.", ""]
    lines += table(["section", "status", "seconds (budget)"],
                   [[s["title"], s["status"], f"{s['seconds']:.0f} ({s['budget_s']:.0f})"] for s in sections.values()])
    render = {"environment": environment_md, "correctness": correctness_md, "paper": paper_md,
              "learning": learning_md}
    for name, section in sections.items():
        lines += ["", f"## {section['title']}: {section['status']}", ""]
        if section.get("criterion"):
            lines += [f"Pass: {section['criterion']}.", ""]
        if section.get("figures"):
            try:
                lines += render[name](section["figures"])
            except Exception as error:  # a figure missing must not lose the report
                lines += [f"(figures not rendered: {first_line(error)}; see device_check.json)"]
        lines += [f"- {note}" for note in section.get("notes", [])]
        if section.get("error"):
            lines += ["", "Error:", "", "```text", section["error"], "```"]
    return "\n".join(lines) + "\n"


def write(out: Path, report: dict) -> None:
    (out / "device_check.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out / "device_check.md").write_text(markdown(report))


def main() -> int:
    from lavie_model.tiny.tiny_lavie import commit

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for device_check.json and device_check.md")
    parser.add_argument("--smoke", action="store_true", help="the CPU, the tiny preset, one step; no section 4")
    parser.add_argument("--quick", action="store_true", help="sections 1-3 in their smallest form, the rest of the "
                        "budget to the motion run")
    parser.add_argument("--budget-seconds", type=float, default=540, help="for all sections together")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    began = time.time()
    ends = began + args.budget_seconds
    report = {"mode": "smoke (CPU, tiny preset, one step)" if args.smoke else "GPU, quick" if args.quick else "GPU",
              "started": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "commit": commit(),
              "budget_s": args.budget_seconds, "total_s": 0.0, "sections": {}}
    runs = {"environment": environment, "correctness": correctness, "paper": paper_cost, "learning": learning}
    for name, title, share in SECTIONS:
        start = time.time()
        if args.quick and name == "paper":
            share = QUICK_PAPER_SHARE
        budget = ends - REPORT_S - start if share is None else min(share * args.budget_seconds, ends - start)
        print(f"{title} ({budget:.0f} s)", file=sys.stderr, flush=True)
        section = {"title": title, "budget_s": budget}
        try:
            section |= runs[name](args, start + budget)
        except Exception as error:
            section |= {"status": "error", "error": f"{first_line(error)}\n\n{traceback.format_exc()}"}
        section["seconds"] = time.time() - start
        report["sections"][name] = section
        report["total_s"] = time.time() - began
        write(out, report)  # after each section: whatever comes later, this much is kept
    print((out / "device_check.md").read_text())
    return 1 if any(s["status"] in ("error", "fail") for s in report["sections"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
