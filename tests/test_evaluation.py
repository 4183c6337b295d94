"""Evaluation of a cascade and the promotion gate, in a real Dagster instance, with a tiny model folder."""

import json
from pathlib import Path

import dagster as dg
import pandas as pd
import torch

from lavie_model.cli import main
from lavie_model.curation.shards import write_shards
from lavie_model.evaluation.evaluate import EvalSettings, below_baselines, blend_keyframes, evaluate, regressions
from lavie_model.report import summary_rows, write_report
from lavie_model.training.data import is_validation
from lavie_model.video import write_video
from pipelines.evaluation import EvaluationSettings, evaluation, promoted_model
from tests.test_training import COLOURS, moving_square

FAST = dict(samples_per_prompt=1, validation_clips=2, base_steps=2, interpolation_steps=2, vsr_steps=2, gallery=1)


def shards_with_validation(root: Path) -> Path:
    """A shard holding training clips and clip04 and clip06, which fall in the 5% validation split by their keys."""
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (name, colour) in zip(range(3, 7), [*COLOURS.items()] * 2):
        path = write_video(moving_square(colour, 1), root / f"clip{i}.mp4", fps=8)
        rows.append({"clip_id": f"clip{i:02d}", "path": str(path), "frame_count": 16,
                     "caption": f"a {name} square moving right on a gray background"})
    write_shards(pd.DataFrame(rows), root / "shards" / "videos" / "b1", "b1")
    assert [r["clip_id"] for r in rows if is_validation(r["clip_id"], 5)] == ["clip04", "clip06"]
    return root


def test_evaluate_scores_every_stage_on_prompts_and_held_out_clips(tiny_folder, tmp_path):
    home = shards_with_validation(tmp_path / "home")
    settings = EvalSettings(prompts=["a red circle moving left on a gray background", "a dog"], **FAST)
    result = evaluate(tiny_folder, str(home / "shards" / "videos"), tmp_path / "eval", "tiny", settings)
    metrics = result["metrics"]
    assert result["validation_keys"] == ["clip04", "clip06"]
    assert 0 <= metrics["base/shapes_colour"] <= 1 and 0 <= metrics["base/shapes_direction"] <= 1
    assert -1 <= metrics["base/clipsim"] <= 1 and -1 <= metrics["base/temporal_consistency"] <= 1
    assert metrics["base/fvd"] >= 0 and "NOT I3D" in result["extractor"]
    assert metrics["interpolation/psnr"] > 0 and -1 <= metrics["interpolation/ssim"] <= 1
    assert metrics["vsr/psnr"] > 0 and metrics["vsr/psnr_bicubic"] > metrics["vsr/psnr"]  # untrained: worse
    assert metrics["interpolation/psnr_blend"] > metrics["interpolation/psnr"]  # the untrained UNet: worse
    assert 0 <= metrics["base/shapes_colour_unseen"] <= 1  # "a red circle ..." is no clip of these shards
    assert "base/t2i_colour" not in metrics  # no text-to-image folder given
    assert sorted(short.split(":")[0] for short in below_baselines(metrics)) == ["interpolation/psnr", "vsr/psnr"]
    assert [s["expected_colour"] for s in result["adherence"]] == ["red", None]  # "a dog" is outside the grammar
    row = result["gallery"][0]
    assert all(Path(row[stage]).is_file() for stage in ("base", "interpolation", "vsr"))
    again = evaluate(tiny_folder, str(home / "shards" / "videos"), tmp_path / "eval2", "tiny", settings)
    assert again["metrics"] == metrics  # fixed seeds

    report = write_report(tmp_path / "report", evaluation=tmp_path / "eval",
                          commands={"the UI": "make ui"})
    page = report.read_text()
    assert f"| base/fvd | {metrics['base/fvd']:.4g} |" in page and "NOT I3D" in page
    assert "| a red circle moving left on a gray background |" in page and "a dog |" not in page
    for stage in ("base", "interpolation", "vsr"):
        assert f"(files/gallery0_{stage}.gif)" in page and (report.parent / "files" / f"gallery0_{stage}.gif").is_file()
    assert "- the UI: `make ui`" in page
    vsr_row = next(line for line in page.splitlines() if line.startswith("| vsr | PSNR |"))
    assert f"bicubic {metrics['vsr/psnr_bicubic']:.2f} dB" in vsr_row and vsr_row.endswith("| NO |")


def test_the_keyframe_blend_baseline_and_the_margins_of_the_gate():
    keyframes = torch.stack([torch.full((3, 2, 2), float(v)) for v in (0.0, 1.0, 0.0)])[None]  # (1, 3, 3, 2, 2)
    blend = blend_keyframes(keyframes)  # (1, 9, 3, 2, 2): 4K - 3 frames
    assert [round(float(f.mean()), 2) for f in blend[0]] == [0, 0.25, 0.5, 0.75, 1, 0.75, 0.5, 0.25, 0]
    metrics = {"interpolation/psnr": 20.0, "interpolation/psnr_blend": 20.5, "vsr/psnr": 30.0,
               "vsr/psnr_bicubic": 29.0, "base/shapes_colour": 0.75, "base/t2i_colour": 0.9}
    assert [s.split(":")[0] for s in below_baselines(metrics)] == ["interpolation/psnr"]  # PSNR: no margin
    assert below_baselines(metrics | {"interpolation/psnr": 21.0}) == []  # colour 0.15 below: within the margin
    assert below_baselines(metrics | {"interpolation/psnr": 21.0, "base/shapes_colour": 0.5})[0].startswith(
        "base/shapes_colour: 0.5 below its baseline base/t2i_colour 0.9")
    assert below_baselines({"vsr/psnr": 10.0}) == []  # nothing to compare with


def test_regressions_respect_direction_and_tolerance():
    reference = {"base/clipsim": 0.30, "base/fvd": 100.0, "vsr/psnr": None}
    assert regressions({"base/clipsim": 0.29, "base/fvd": 104.0}, reference, 0.05) == []
    worse = regressions({"base/clipsim": 0.20, "base/fvd": 130.0}, reference, 0.05)
    assert [w.split(":")[0] for w in worse] == ["base/clipsim", "base/fvd"]


def base_only(folder: Path, out: Path) -> Path:
    """A model folder with the base stage only (its later stages left out, so there is nothing for them to lose)."""
    out.mkdir()
    for entry in folder.iterdir():
        if entry.name not in ("unet_interpolation", "unet_vsr"):
            (out / entry.name).symlink_to(entry)
    return out


def test_a_candidate_below_a_baseline_or_regressing_is_not_promoted_and_generate_uses_the_promoted_model(
        tiny_folder, tmp_path, monkeypatch):
    home = shards_with_validation(tmp_path / "home")
    settings = EvaluationSettings(lavie_home=str(home), **FAST)
    link = home / "models" / "promoted"
    with dg.instance_for_test() as instance:
        # untrained interpolation and super-resolution UNets lose to the blend and to bicubic: refused
        instance.report_runless_asset_event(dg.AssetMaterialization(
            "vsr_model", metadata={"model_folder": dg.MetadataValue.path(str(tiny_folder))}))
        result = dg.materialize([evaluation, promoted_model], instance=instance, raise_on_error=False,
                                resources={"evaluation_settings": settings})
        checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
        assert not checks["beats_baselines"].passed and checks["no_regression"].passed
        short = checks["beats_baselines"].metadata["below_baseline"].value
        assert sorted(s.split(":")[0] for s in short) == ["interpolation/psnr", "vsr/psnr"]
        assert not link.exists() and instance.get_latest_materialization_event(dg.AssetKey("promoted_model")) is None
        table = result.asset_materializations_for_node("evaluation")[0].metadata["metrics"].value
        assert "(psnr_bicubic)" in table and "(psnr_blend)" in table

        # the base stage alone beats what it is compared with (no text-to-image model here): promoted
        candidate = base_only(tiny_folder, tmp_path / "base-only")
        instance.report_runless_asset_event(dg.AssetMaterialization(
            "vsr_model", metadata={"model_folder": dg.MetadataValue.path(str(candidate))}))
        result = dg.materialize([evaluation, promoted_model], instance=instance,
                                resources={"evaluation_settings": settings})
        assert result.success
        assert link.resolve() == candidate.resolve()
        metadata = result.asset_materializations_for_node("evaluation")[0].metadata
        assert "base/clipsim" in metadata["metrics"].value and "<img" not in metadata["gallery"].value
        assert metadata["gallery"].value.count("data:image/gif;base64,") == 1

        # a promoted model far better than any candidate: the blocking check fails, nothing is promoted
        better = {name: (0.0 if name == "base/fvd" else 1e6) for name in metadata["metrics_json"].value}
        instance.report_runless_asset_event(dg.AssetMaterialization(
            "promoted_model", metadata={"metrics_json": dg.MetadataValue.json(better)}))
        before = instance.get_latest_materialization_event(dg.AssetKey("promoted_model")).run_id
        result = dg.materialize([evaluation, promoted_model], instance=instance, raise_on_error=False,
                                resources={"evaluation_settings": settings})
        checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
        assert checks == {"beats_baselines": True, "no_regression": False}
        assert instance.get_latest_materialization_event(dg.AssetKey("promoted_model")).run_id == before

    monkeypatch.setenv("LAVIE_HOME", str(home))
    output = tmp_path / "sample.gif"
    assert main(["generate", "--prompt", "a red circle", "--stages", "base", "--steps", "1",
                 "--output", str(output)]) == 0
    assert output.is_file()
    assert json.loads((tiny_folder / "model_index.json").read_text())["num_frames"] == 8


def test_a_tie_with_chance_or_the_blend_does_not_beat_it(tmp_path):
    """The summary's "beats it": above chance and the baselines; colour adherence within its margin of the t2i's."""
    metrics = {"base/shapes_colour": 0.85, "base/t2i_colour": 1.0, "base/shapes_direction": 0.25,
               "base/shapes_colour_unseen": 0.5, "base/shapes_direction_unseen": 0.3125, "interpolation/psnr": 30.0,
               "interpolation/psnr_blend": 30.0, "vsr/psnr": 30.5, "vsr/psnr_bicubic": 30.0}
    (tmp_path / "metrics.json").write_text(json.dumps({"metrics": metrics}))
    verdicts = [row["beats it"] for row in summary_rows(tmp_path)]
    assert verdicts == ["yes", "NO", "yes", "yes", "NO", "yes"]
