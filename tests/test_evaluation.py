"""Evaluation of a cascade and the promotion gate, in a real Dagster instance, with a tiny model folder."""

import json
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
import torch
from diffusers import AutoencoderKL

from lavie_model.cli import main
from lavie_model.curation.shards import write_shards
from lavie_model.evaluation.evaluate import EvalSettings, evaluate
from lavie_model.evaluation.gate import below_baselines, paired_verdict, regressions
from lavie_model.evaluation.interpolation import blend_keyframes, hold_keyframes, interpolation_references
from lavie_model.evaluation.stats import Rate, paired_comparison
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
    assert metrics["interpolation/psnr_hold"] > 0 and metrics["interpolation/psnr_latent_blend"] > 0
    assert metrics["interpolation/psnr_vae"] > metrics["interpolation/psnr_latent_blend"]  # the ceiling
    rates = result["rates"]  # the counted metrics: one sample of "a red circle ...", "a dog" not counted
    assert rates["base/shapes_colour"]["n"] == rates["base/shapes_direction"]["n"] == 1
    assert rates["base/shapes_direction"]["hits"] == metrics["base/shapes_direction"]
    assert 0 <= metrics["base/shapes_moving"] <= 1 and "base/shapes_displacement" in metrics
    assert 0 <= metrics["base/shapes_colour_unseen"] <= 1  # "a red circle ..." is no clip of these shards
    assert "base/t2i_colour" not in metrics  # no text-to-image folder given
    per_clip, paired = result["per_clip"], result["paired"]  # interpolation's PSNR of each clip, and clip by clip
    assert {len(psnrs) for psnrs in per_clip.values()} == {2} and len(per_clip) == 5
    assert sum(per_clip["interpolation/psnr_blend"]) / 2 == pytest.approx(metrics["interpolation/psnr_blend"])
    assert list(paired) == ["interpolation/psnr_blend", "interpolation/psnr_latent_blend"]
    assert paired["interpolation/psnr_blend"]["wins"]["hits"] == 0 and paired["interpolation/psnr_blend"]["loses"]
    assert sorted(short.split(":")[0] for short in below_baselines(metrics, paired)) == ["interpolation/psnr",
                                                                                          "vsr/psnr"]
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
    row = next(line for line in page.splitlines() if line.startswith("| interpolation |"))
    assert f"latent blend {metrics['interpolation/psnr_latent_blend']:.2f} dB" in row and "VAE round trip" in row
    assert row.endswith("| NO |")  # below the pixel blend on both clips, beyond the interval
    row = next(line for line in page.splitlines() if line.startswith("| interpolation | clip by clip against the "
                                                                      "pixel blend"))
    assert f"ahead of the pixel blend on {Rate(0, 2)} of the clips" in row and row.endswith("| NO |")
    colour_row = next(line for line in page.splitlines() if line.startswith("| base | colour adherence |"))
    assert "/1, " in colour_row  # hits of one sample, with its interval


def test_interpolation_references_on_a_real_autoencoder(tiny_folder):
    """Hold, pixel blend, latent blend and the VAE round trip, on the in-between frames, with the tiny folder's
    own (untrained) autoencoder."""
    vae = AutoencoderKL.from_pretrained(tiny_folder / "vae").eval()
    keyframes = torch.rand(1, 2, 3, 16, 16, generator=torch.Generator().manual_seed(0))  # (b, K, 3, h, w)
    ramp = blend_keyframes(keyframes)  # (1, 5, 3, 16, 16): frames that go linearly from keyframe to keyframe
    references = {name: psnrs.tolist() for name, psnrs in interpolation_references(vae, ramp).items()}  # per clip
    assert references["interpolation/psnr_blend"] == pytest.approx([100])  # exact, capped at 100 dB
    assert references["interpolation/psnr_hold"][0] < 20  # random keyframes: holding is far off
    assert references["interpolation/psnr_vae"][0] < 100  # a lossy autoencoder
    still = keyframes[:, :1].expand(-1, 5, -1, -1, -1)  # every frame the first keyframe
    references = interpolation_references(vae, torch.cat([ramp, still]))  # (2,) each: one PSNR per clip
    assert references["interpolation/psnr_hold"][1] == references["interpolation/psnr_blend"][1] == pytest.approx(100)
    assert references["interpolation/psnr_hold"][0] < 20  # the first clip scored on its own
    # the blend of equal latents is that latent: the latent blend decodes to the round trip of the truth
    assert float(references["interpolation/psnr_latent_blend"][1]) == pytest.approx(
        float(references["interpolation/psnr_vae"][1]), abs=1e-3)


def test_the_keyframe_references_and_the_margins_of_the_gate():
    keyframes = torch.stack([torch.full((3, 2, 2), float(v)) for v in (0.0, 1.0, 0.0)])[None]  # (1, 3, 3, 2, 2)
    blend = blend_keyframes(keyframes)  # (1, 9, 3, 2, 2): 4K - 3 frames
    assert [round(float(f.mean()), 2) for f in blend[0]] == [0, 0.25, 0.5, 0.75, 1, 0.75, 0.5, 0.25, 0]
    held = hold_keyframes(keyframes)  # the nearest keyframe, the earlier one halfway
    assert [float(f.mean()) for f in held[0]] == [0, 0, 0, 1, 1, 1, 1, 0, 0]
    metrics = {"vsr/psnr": 30.0, "vsr/psnr_bicubic": 29.0, "base/shapes_colour": 0.75, "base/t2i_colour": 0.9}
    assert below_baselines(metrics) == []  # colour 0.15 below: within the margin
    assert below_baselines(metrics | {"base/shapes_colour": 0.5})[0].startswith(
        "base/shapes_colour: 0.5 below its baseline base/t2i_colour 0.9")
    assert [s.split(":")[0] for s in below_baselines(metrics | {"vsr/psnr": 28.9})] == ["vsr/psnr"]  # PSNR: no margin
    assert below_baselines({"vsr/psnr": 10.0}) == []  # nothing to compare with


def test_the_gate_holds_interpolation_to_each_blend_clip_by_clip():
    """Interpolation beats a blend only where it is ahead on more than half the clips and on average, both beyond
    their 95% intervals; the gate refuses it only where a blend is better on average beyond the interval."""
    blend, latent = [30.0, 31.0, 29.0, 32.0], [30.2, 31.1, 29.3, 32.1]
    lucky = [34.5, 28.1, 33.1, 29.5]  # 0.8 dB above the pixel blend on average, +-6.4 dB: ahead on 2 of 4 clips
    paired = {"interpolation/psnr_blend": paired_comparison(lucky, blend),
              "interpolation/psnr_latent_blend": paired_comparison(lucky, latent)}
    metrics = {"interpolation/psnr": sum(lucky) / 4, "interpolation/psnr_blend": 30.5,
               "interpolation/psnr_latent_blend": 30.675}
    assert metrics["interpolation/psnr"] > metrics["interpolation/psnr_latent_blend"]  # the mean alone said "beats"
    assert paired_verdict(paired, "interpolation/psnr") == "not shown" and below_baselines(metrics, paired) == []
    behind = [29.0, 30.2, 28.1, 31.3]  # below both blends on every clip, by 0.8-1.2 dB
    paired = {baseline: paired_comparison(behind, reference) for baseline, reference in
              (("interpolation/psnr_blend", blend), ("interpolation/psnr_latent_blend", latent))}
    assert paired_verdict(paired, "interpolation/psnr") == "falls short"
    short = below_baselines(metrics | {"interpolation/psnr": sum(behind) / 4}, paired)
    assert [line.split(",")[0] for line in short] == [
        "interpolation/psnr: below interpolation/psnr_blend clip by clip",
        "interpolation/psnr: below interpolation/psnr_latent_blend clip by clip"]
    assert "ahead of it on 0% (0/4" in short[0]
    # 96 clips each 0.1-0.3 dB above both blends: it beats them
    references = torch.linspace(28, 34, 96)  # (96,)
    ahead = references + 0.2 + 0.05 * (torch.arange(96) % 5 - 2)
    paired = {"interpolation/psnr_blend": paired_comparison(ahead, references - 0.5),
              "interpolation/psnr_latent_blend": paired_comparison(ahead, references)}
    assert paired_verdict(paired, "interpolation/psnr") == "beats" and below_baselines(metrics, paired) == []
    # ahead of the pixel blend but not of the latent one: beats only where it beats both
    paired["interpolation/psnr_latent_blend"] = paired_comparison(ahead, references + 0.2)
    assert paired_verdict(paired, "interpolation/psnr") == "not shown"
    assert paired_verdict({}, "interpolation/psnr") is None and below_baselines(metrics) == []  # not compared


def test_the_interpolation_probe_sets_each_clip_beside_the_latent_blend(tiny_folder):
    """The motion training's probe (tiny_lavie.interpolation_probe): the mean PSNRs, each clip's, and the clips it
    is ahead of the latent blend on, with the mean difference and its interval; a row that curve.jsonl can hold."""
    from lavie_model.models.unet_3d import UNet3DConditionModel
    from lavie_model.tiny.tiny_lavie import interpolation_probe
    from lavie_model.training.trainer import preset_with_overrides

    probe = interpolation_probe(tiny_folder, preset_with_overrides("tiny", {}), torch.device("cpu"),
                                sampling_steps=2, count=4)
    row = json.loads(json.dumps(probe(0, UNet3DConditionModel.from_pretrained(tiny_folder / "unet_interpolation"))))
    per_clip = row["per_clip"]
    assert set(per_clip) == {"psnr", "psnr_hold", "psnr_blend", "psnr_latent_blend", "psnr_vae"}
    assert all(len(psnrs) == 4 and sum(psnrs) / 4 == pytest.approx(row[name], abs=1e-3)
               for name, psnrs in per_clip.items())
    wins, difference = row["beats_latent_blend"], row["latent_blend_difference"]
    assert wins == Rate(wins["hits"], 4).as_dict()
    assert wins["hits"] == sum(a > b for a, b in zip(per_clip["psnr"], per_clip["psnr_latent_blend"]))
    assert difference["mean"] == pytest.approx(row["psnr"] - row["psnr_latent_blend"], abs=1e-4)
    assert difference["low"] < difference["mean"] < difference["high"]


def test_regressions_respect_direction_and_tolerance():
    reference = {"base/clipsim": 0.30, "base/fvd": 100.0, "vsr/psnr": None, "base/shapes_displacement": 0.4}
    assert regressions({"base/clipsim": 0.29, "base/fvd": 104.0}, reference, 0.05) == []
    worse = regressions({"base/clipsim": 0.20, "base/fvd": 130.0}, reference, 0.05)
    assert [w.split(":")[0] for w in worse] == ["base/clipsim", "base/fvd"]
    assert regressions({"base/shapes_displacement": 0.1}, reference, 0.05) == []  # motion describes, not ranks


def test_the_gate_refuses_a_regression_beyond_the_candidates_interval():
    """Where the candidate's metric has a 95% interval (a rate, a clip-averaged PSNR), it regressed only when the
    reference lies beyond it, however far the values differ; FVD the other way round."""
    rate = Rate(10, 32)  # 31%, 18%-49%
    intervals = {"base/shapes_direction": (rate.low, rate.high), "interpolation/psnr": (31.5, 32.5),
                 "base/fvd": (90.0, 110.0)}
    candidate = {"base/shapes_direction": rate.value, "interpolation/psnr": 32.0, "base/fvd": 100.0}
    within = {"base/shapes_direction": 0.45, "interpolation/psnr": 32.4, "base/fvd": 91.0}
    assert regressions(candidate, within, 0.05, intervals) == []  # 45% against 31%: within 18-49%
    assert regressions(candidate, within, 0.05) != []  # without intervals, the relative tolerance refuses it
    beyond = {"base/shapes_direction": 0.55, "interpolation/psnr": 32.6, "base/fvd": 85.0}
    worse = regressions(candidate, beyond, 0.05, intervals)
    assert [line.split(":")[0] for line in worse] == ["base/shapes_direction", "interpolation/psnr", "base/fvd"]
    assert worse[0] == "base/shapes_direction: 0.3125 (95% interval 0.1795-0.4857) against 0.55"
    assert regressions(candidate, {"base/fvd": 120.0, "interpolation/psnr": 20.0}, 0.05, intervals) == []


def metrics_metadata(metadata) -> dict[str, dict]:
    """The evaluation's figures as Dagster shows them, checked against metrics_json: each one a float entry
    `metric/<name>` (a rate's hits/n), and the `metrics` table, its schema's columns and a row per metric holding
    the same value (a rate's interval as text). Returns the rows by metric."""
    metrics, rates = metadata["metrics_json"].value, metadata["rates"].value
    figures = {key.removeprefix("metric/"): entry for key, entry in metadata.items() if key.startswith("metric/")}
    assert figures.keys() == {name for name, value in metrics.items() if value is not None}
    for name, entry in figures.items():
        assert isinstance(entry, dg.FloatMetadataValue) and type(entry.value) is float and entry.value == metrics[name]
    for name, rate in rates.items():
        assert figures[name].value == rate["hits"] / rate["n"]
    table = metadata["metrics"]
    assert isinstance(table, dg.TableMetadataValue)
    assert [(column.name, column.type) for column in table.schema.columns] == [
        ("metric", "string"), ("value", "float"), ("interval", "string"), ("start model", "float"),
        ("baseline", "string"), ("verdict", "string")]
    rows = {row.data["metric"]: row.data for row in table.records}
    assert len(table.records) == len(rows) and rows.keys() == metrics.keys()
    assert all(row["value"] == metrics[name] for name, row in rows.items())
    assert all(f"({rate['hits']}/{rate['n']}, " in rows[name]["interval"] for name, rate in rates.items())
    return rows


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
        clip_by_clip = checks["beats_baselines"].metadata["clip_by_clip"].value  # the gate's paired decision
        assert clip_by_clip["interpolation/psnr"] == "falls short"
        assert clip_by_clip["interpolation/psnr_blend"].startswith("ahead of it on 0% (0/2, ")
        assert not link.exists() and instance.get_latest_materialization_event(dg.AssetKey("promoted_model")) is None
        # as the instance stored it: every figure a float entry, and the table with the gate's verdicts
        stored = instance.get_latest_materialization_event(dg.AssetKey("evaluation")).asset_materialization.metadata
        rows = metrics_metadata(stored)
        assert rows["vsr/psnr"]["baseline"].endswith("(psnr_bicubic)")
        assert rows["vsr/psnr"]["verdict"] == rows["interpolation/psnr"]["verdict"] == "falls short of its baseline"
        assert rows["interpolation/psnr"]["interval"] is not None and rows["base/clipsim"]["interval"] is None
        # colour and direction as hits of the 8 prompts' samples, with their interval
        assert "/8, " in rows["base/shapes_colour"]["interval"] and "/8, " in rows["base/shapes_direction"]["interval"]
        markdown = stored["metrics_markdown"].value  # the same for people to read, with the previous values
        assert "(psnr_bicubic)" in markdown and "(psnr_blend)" in markdown and "/8, " in markdown

        # the base stage alone beats what it is compared with (no text-to-image model here): promoted
        candidate = base_only(tiny_folder, tmp_path / "base-only")
        instance.report_runless_asset_event(dg.AssetMaterialization(
            "vsr_model", metadata={"model_folder": dg.MetadataValue.path(str(candidate))}))
        result = dg.materialize([evaluation, promoted_model], instance=instance,
                                resources={"evaluation_settings": settings})
        assert result.success
        assert link.resolve() == candidate.resolve()
        checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
        assert checks["beats_baselines"].metadata["clip_by_clip"].value == {}  # no interpolation stage
        metadata = result.asset_materializations_for_node("evaluation")[0].metadata
        assert "base/clipsim" in metrics_metadata(metadata) and "<img" not in metadata["gallery"].value
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


def test_the_evaluation_scores_the_model_the_training_started_from_beside_the_candidate(tiny_folder, tmp_path):
    """base_model's `started_from` is scored too: its figures in the table and the summary, and the gate holds the
    candidate to it (the same weights: nothing regressed)."""
    home = shards_with_validation(tmp_path / "home")
    candidate = base_only(tiny_folder, tmp_path / "base-only")
    with dg.instance_for_test() as instance:
        instance.report_runless_asset_event(dg.AssetMaterialization(
            "base_model", metadata={"started_from": dg.MetadataValue.path(str(candidate))}))
        instance.report_runless_asset_event(dg.AssetMaterialization(
            "vsr_model", metadata={"model_folder": dg.MetadataValue.path(str(candidate))}))
        result = dg.materialize([evaluation], instance=instance, raise_on_error=False, resources={
            "evaluation_settings": EvaluationSettings(lavie_home=str(home), **FAST | {"samples_per_prompt": 2})})
        metadata = result.asset_materializations_for_node("evaluation")[0].metadata
        checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert metadata["start_model"].value == str(candidate)
    assert metadata["start_metrics_json"].value == metadata["metrics_json"].value  # the same weights and seeds
    rows = metrics_metadata(metadata)
    assert all(row["start model"] == row["value"] for row in rows.values())
    assert rows["base/shapes_colour"]["verdict"] == "no regression"  # held to the start model's, within its interval
    assert "start model" in metadata["metrics_markdown"].value
    assert checks["no_regression"].passed and checks["no_regression"].metadata["against"].value == "the start model"
    folder = Path(metadata["report"].value).parent
    rows = {row["metric"].split(":")[0]: row for row in summary_rows(folder)}
    assert rows["new concept"]["start model"] == rows["new concept"]["value"]  # 16 samples of the "big" prompts
    assert rows["new concept"]["value"].split("(")[1].split(",")[0].endswith("/16")
    assert rows["direction adherence"]["vs start"] == "same"


def summary(folder: Path, rates: dict[str, Rate], paired: dict | None = None, **metrics) -> dict[str, str]:
    """summary_rows of an evaluation folder with these rates, clip-by-clip comparisons and metrics:
    {metric: "beats it"}."""
    folder.mkdir(exist_ok=True)
    metrics = {name: rate.value for name, rate in rates.items()} | metrics
    (folder / "metrics.json").write_text(json.dumps({"metrics": metrics, "paired": paired or {}, "rates": {
        name: rate.as_dict() for name, rate in rates.items()}}))
    return {row["metric"]: row["beats it"] for row in summary_rows(folder)}


PIXEL, LATENT = (f"clip by clip against the {blend}: clips ahead; mean difference" for blend in ("pixel blend",
                                                                                                 "latent blend"))


def test_a_rate_beats_chance_only_with_its_interval_and_a_tie_with_a_baseline_does_not_beat_it(tmp_path):
    """The summary's "beats it": a rate's whole 95% interval above chance; interpolation beside each blend clip by
    clip, "yes" only where both intervals clear; a PSNR strictly above bicubic; colour adherence within its margin
    of the t2i model's."""
    rates = {"base/shapes_colour": Rate(27, 32), "base/t2i_colour": Rate(32, 32), "base/shapes_direction": Rate(10, 32),
             "base/shapes_moving": Rate(30, 32), "base/shapes_colour_unseen": Rate(8, 16),
             "base/shapes_direction_unseen": Rate(5, 16)}
    psnrs = {"interpolation/psnr": 30.0, "interpolation/psnr_blend": 30.0, "interpolation/psnr_latent_blend": 29.0,
             "interpolation/psnr_hold": 28.0, "interpolation/psnr_vae": 40.0, "vsr/psnr": 30.5,
             "vsr/psnr_bicubic": 30.0}
    clips = [29.5, 30.5, 29.8, 30.2]  # interpolation's PSNR of each clip
    paired = {"interpolation/psnr_blend": paired_comparison(clips, clips),  # a tie on every clip
              "interpolation/psnr_latent_blend": paired_comparison(clips, [c - 1 for c in clips])}  # 1 dB ahead
    verdicts = summary(tmp_path, rates, paired, **psnrs)
    # 10/32 and 5/16: not above 25%; the new concept unscored; a tie with the pixel blend does not beat it, nor
    # is it beaten
    assert list(verdicts.values()) == ["yes", "NO", "-", "n/a", "yes", "NO", "not shown", "not shown", "yes", "yes"]
    assert verdicts["direction adherence"] == "NO" and Rate(10, 32).value > 0.25
    rows = {row["metric"]: row for row in summary_rows(tmp_path)}
    assert rows["direction adherence"]["value"] == str(Rate(10, 32))
    assert rows["colour adherence"]["baseline"].startswith(f"t2i {Rate(32, 32)}")
    assert rows["PSNR of the filled-in frames"]["baseline"] == ("hold 28.00 dB; pixel blend 30.00 dB; latent blend "
                                                               "29.00 dB; VAE round trip (ceiling) 40.00 dB")
    assert str(Rate(30, 32)) in next(value for metric, value in ((r["metric"], r["value"]) for r in rows.values())
                                     if metric.startswith("moving at all"))
    assert rows[LATENT]["value"] == (f"ahead of the latent blend on {Rate(4, 4)} of the clips, +1.00 dB "
                                     "(95% +1.00 to +1.00)")

    ahead = [c + 0.5 + 0.1 * i for i, c in enumerate(clips)]  # 0.5-0.8 dB above the pixel blend on every clip
    paired = {"interpolation/psnr_blend": paired_comparison(ahead, clips),
              "interpolation/psnr_latent_blend": paired_comparison(ahead, [c + 1 for c in clips])}
    better = summary(tmp_path, rates | {"base/shapes_direction": Rate(20, 32), "base/shapes_colour": Rate(20, 32)},
                     paired, **psnrs | {"interpolation/psnr": 30.5, "interpolation/psnr_latent_blend": 31.0})
    assert better["direction adherence"] == "yes"  # 20/32: 45-78%
    assert better["colour adherence"] == "NO"  # 63% against the t2i model's 100%: more than 0.2 below
    # above the pixel blend on every clip; below the latent one on every clip: it falls short
    assert better[PIXEL] == "yes"
    assert better[LATENT] == "NO"
    assert better["PSNR of the filled-in frames"] == "NO"
    alone = summary(tmp_path, {"base/shapes_colour": Rate(3, 8)})  # no t2i model scored: held to chance
    assert alone["colour adherence"] == "NO" and alone["direction adherence"] == "n/a"


def test_the_summary_sets_each_figure_beside_the_start_models(tmp_path):
    """With the start model scored (start/metrics.json): its figure beside the candidate's, "better"/"worse" where
    it lies outside the candidate's interval, and the new concept learned only where the candidate's whole interval
    lies above the start model's rate."""
    start = {"base/shapes_direction": Rate(8, 32), "base/new_concept": Rate(0, 16), "base/shapes_colour": Rate(30, 32)}
    summary(tmp_path / "start", start, **{"interpolation/psnr": 31.0})
    candidate = {"base/shapes_direction": Rate(9, 32), "base/new_concept": Rate(6, 16),
                 "base/shapes_colour": Rate(20, 32)}
    folder = tmp_path / "candidate"
    folder.mkdir()
    metrics = {name: rate.value for name, rate in candidate.items()} | {"interpolation/psnr": 32.0}
    intervals = {name: [rate.low, rate.high] for name, rate in candidate.items()} | {"interpolation/psnr": [31.5, 32.5]}
    (folder / "metrics.json").write_text(json.dumps({"metrics": metrics, "intervals": intervals, "rates": {
        name: rate.as_dict() for name, rate in candidate.items()}}))
    (folder / "start").symlink_to(tmp_path / "start")
    rows = {row["metric"].split(":")[0]: row for row in summary_rows(folder)}
    concept = rows["new concept"]
    assert concept["value"] == str(Rate(6, 16)) and concept["start model"] == str(Rate(0, 16))
    assert concept["beats it"] == "yes" and concept["vs start"] == "better"  # 6/16: 18%-61%, above 0%
    assert rows["direction adherence"]["vs start"] == "same"  # 25% lies within 9/32's 15%-45%
    assert rows["colour adherence"]["vs start"] == "worse"  # 94% lies above 20/32's 45%-77%
    assert rows["PSNR of the filled-in frames"]["vs start"] == "better"  # 31.0 below 31.5-32.5
    assert rows["PSNR of the filled-in frames"]["value"] == "32.00 dB (31.50-32.50)"

    summary(tmp_path / "start", start | {"base/new_concept": Rate(3, 16)})
    assert {row["metric"].split(":")[0]: row for row in summary_rows(folder)}["new concept"]["beats it"] == "NO"
    assert {row["start model"] for row in summary_rows(tmp_path / "start")} == {"not scored"}
