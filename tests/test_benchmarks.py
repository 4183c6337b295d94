"""Each benchmark script runs end to end at its smallest size and prints its table (the figures themselves
are measured by hand and reported, never asserted)."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_training import clean_env

ROOT = Path(__file__).resolve().parent.parent

# --threads 1 where a script sets torch's threads itself (its default, 2, is for measuring): under `pytest -n 2` on a
# 2-core machine two-thread runs oversubscribe the cores, and OpenMP's spinning threads then make them 2-4x slower.
# Longest first, so that pytest-xdist's workers finish together.
SMALLEST = {
    "plan_calibration": (["--cases", "tiny-lora", "--steps", "1"], "against the H100 peaks measured before"),
    "latents_vs_pixels": (["--steps", "1", "--loader-samples", "4", "--threads", "1"],
                          "speed-up fed by the loaders, pixels / latents"),
    "lora_vs_full": (["--steps", "1", "--threads", "1"], "LoRA / full step time"),
    "data_loader": (["--steps", "1", "--loader-samples", "4", "--threads", "1"], "fed / fixed"),
    "deepspeed_overhead": (["--steps", "1", "--threads", "1"], "deepspeed / plain"),
    "curation": (["--n", "2", "--seconds", "3", "--preset", "tiny", "--workers", "1", "--repeat", "1", "--ray"],
                 "Ray / pool"),
    "motion_speed": (["--smoke"], "| variant | clips/s | vs eager |"),
    "generate": (["--presets", "tiny", "--stages", "base", "--threads", "1"], "s/step"),
    "unet_step": (["--presets", "tiny", "--repeats", "1", "--models", "ours", "--threads", "1"], "fwd+bwd s"),
    "code_location": (["--repeats", "1"], "code location + ML stack / code location"),
}


# The longest tests come first (pytest-xdist hands tests out in file order): the end-to-end runs, then the smallest
# sizes.
def test_motion_sweep_smoke_scores_both_stages_and_ships_the_best(tmp_path):
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "motion_sweep.py"), "--smoke", "--out", str(out)],
                          cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    results = json.loads((out / "sweep.json").read_text())
    assert {r["stage"] for r in results.values()} == {"base", "interpolation"}
    for result in results.values():
        assert result["exit"] == 0 and [row["step"] for row in result["curve"]] == [0, 2]
    base = next(r for r in results.values() if r["stage"] == "base")["curve"][-1]
    assert base["direction_classifier"]["n"] == 2 and base["sampled_direction"]["n"] == 2
    interpolation = next(r for r in results.values() if r["stage"] == "interpolation")["curve"][-1]
    assert interpolation["psnr_latent_blend"] < interpolation["psnr_vae"]
    assert "| step | loss | classifier direction |" in (out / "sweep.md").read_text()
    assert (out / "best_base.tar").stat().st_size > 0 and (out / "best_interpolation.tar").stat().st_size > 0


def test_device_check_smoke_reports_every_section(tmp_path):
    """`make gpu-check`'s script in its CPU mode, so that it cannot rot between the tasks that have a GPU: every
    section runs (the learning one is skipped: motion_sweep's smoke run is tested above) and the report has a
    status and a heading for each."""
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "device_check.py"), "--smoke", "--out", str(out)],
                          cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    sections = json.loads((out / "device_check.json").read_text())["sections"]
    assert {name: section["status"] for name, section in sections.items()} == {
        "environment": "pass", "correctness": "pass", "paper": "pass", "learning": "skipped"}
    headings = [line for line in (out / "device_check.md").read_text().splitlines() if line.startswith("## ")]
    assert headings == [f"## {section['title']}: {section['status']}" for section in sections.values()]
    paper = sections["paper"]["figures"]
    assert all(paper[f"train {stage}"]["step_flops"] > paper[f"train {stage}"]["forward_flops"] > 0
               for stage in ("base", "interpolation", "vsr"))
    assert paper["sampling"]["stages"]["vsr"]["output"] == [1, 29, 3, 128, 128]  # 8 frames -> 29 -> x4


def test_motion_levers_resume_and_share_the_start_scores(tmp_path):
    """Two levers from the shipped base at their smallest size: the first measures the start weights' probe, the
    second reuses it; a rerun resumes both (nothing trained again) and the report lists their curves."""
    runs = tmp_path / "levers"
    command = [sys.executable, str(ROOT / "benchmarks" / "motion_levers.py"), "--runs", str(runs), "--levers",
               "batch-16,high-noise-0.5", "--steps", "1", "--eval-every", "1", "--held-out-clips", "2",
               "--sampling-steps", "2", "--parallel", "2"]
    done = subprocess.run(command, cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    curves = {name: [json.loads(line) for line in (runs / name / "curve.jsonl").read_text().splitlines()]
              for name in ("batch-16", "high-noise-0.5")}
    assert all([row["step"] for row in curve] == [0, 1] for curve in curves.values())
    assert curves["batch-16"][0] == curves["high-noise-0.5"][0]  # the start probe, measured once
    assert curves["high-noise-0.5"][1]["sampled_direction"]["n"] == 2  # sampled at the last probe
    rerun = subprocess.run(command, cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0 and "## high-noise-0.5" in (runs / "levers.md").read_text()
    assert all(len((runs / name / "curve.jsonl").read_text().splitlines()) == 2 for name in curves)


@pytest.mark.parametrize("name", SMALLEST)
def test_each_benchmark_runs_at_its_smallest_size(name, tmp_path):
    args, expected = SMALLEST[name]
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / f"{name}.py"), *args], cwd=tmp_path,
                          env=clean_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert expected in done.stdout, done.stdout[-2000:]


def test_shapes_learning_curve_runs_at_its_smallest_size(tiny_folder, demo_shards, tmp_path):
    out = tmp_path / "curve.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "shapes_learning.py"), "--model", str(tiny_folder),
         "--videos", demo_shards["videos"], "--images", demo_shards["images"], "--steps", "2", "--evals", "1",
         "--batch-size", "1", "--samples-per-prompt", "1", "--sampling-steps", "1", "--guidance", "7.5",
         "--set", "image_frames=1", "--grid", str(tmp_path / "grid.png"), "--json", str(out)],
        cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| step | samples seen |" in done.stdout
    results = json.loads(out.read_text())["results"]
    assert [row["step"] for row in results] == [1, 2] and all(0 <= row["colour"] <= 1 for row in results)
    assert (tmp_path / "grid.png").stat().st_size > 0


def test_device_check_survives_a_crash_and_a_hang():
    """Work in a process of its own: a crash (a segfault, the kernel's out-of-memory killer) or a hang past its
    budget becomes that item's error, and the check goes on."""
    from benchmarks.common import in_own_process

    assert "exit code 3" in in_own_process(os._exit, (3,), timeout=60)["error"]
    started = time.time()
    assert "over the section's budget" in in_own_process(time.sleep, (300,), timeout=2)["error"]
    assert time.time() - started < 30
