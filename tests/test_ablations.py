"""The ablation assets: both findings materialize on a tiny budget in a real Dagster instance, from the shipped
text-to-image stand-in and real curated shards, and their tables hold every variant."""

import json
from pathlib import Path

import dagster as dg
import pytest

from lavie_model.tiny.ablations import (
    FINDINGS,
    HELD_OUT_CONCEPTS,
    AblationBudget,
    run_ablation,
    summary_table,
)
from lavie_model.config import load_preset
from lavie_model.training.data import TrainingStream, expand_shards
from lavie_model.training.stages import stage_data
from pipelines.ablations import ABLATION_ASSETS, AblationSettings
from pipelines.pretraining import autoencoders, t2i_model
from pipelines.training import TrainingSettings


def test_ablation_assets_materialize_with_every_variant_in_their_tables(demo_shards):
    home = Path(demo_shards["videos"]).parent.parent
    training = TrainingSettings(lavie_home=str(home))  # the shipped stand-ins, passed through
    budget = AblationSettings(lavie_home=str(home), steps=1, evals=[0, 1], seeds=[0, 1], samples_per_prompt=1,
                              sampling_steps=2, validation_clips=2)
    with dg.instance_for_test() as instance:
        assert dg.materialize([autoencoders, t2i_model], instance=instance,
                              resources={"training": training, "pipes": dg.PipesSubprocessClient()}).success
        result = dg.materialize(ABLATION_ASSETS, instance=instance, resources={"ablations": budget})
        assert result.success
        events = {e.asset_key.path[-1]: e.materialization.metadata for e in result.get_asset_materialization_events()}
    for finding in FINDINGS:
        metadata = events[f"{finding}_ablation"]
        results = json.loads(Path(metadata["results_json"].value).read_text())
        variants = list(FINDINGS[finding]["variants"])
        assert [row["variant"] for row in results["table"]] == variants
        assert all(row["seeds"] == 2 for row in results["table"])
        # every run scored at step 0 and after its step, with every metric of the finding
        assert len(results["runs"]) == 2 * len(variants)
        for run in results["runs"]:
            assert [point["step"] for point in run["points"]] == [0, 1]
            assert set(FINDINGS[finding]["metrics"]) <= set(run["points"][0])
        for variant in variants:
            assert f"| {variant} | 2 |" in metadata["table"].value
            assert (Path(metadata["report"].value).parent / f"grid_{variant}.png").is_file()
        assert metadata["curves"].value.startswith("![curves](data:image/png;base64,")
        report = Path(metadata["report"].value).read_text()
        assert report.startswith(f"# Ablation: {finding}") and "Chance: colour 1 in 6" in report
    module = json.loads(Path(events["temporal_module_ablation"]["results_json"].value).read_text())
    assert "NOT I3D" in module["labels"]["fvd"]  # the fallback extractor is labelled as such
    joint = events["joint_training_ablation"]
    assert joint["held_out_concepts"].value == ", ".join(HELD_OUT_CONCEPTS)


def test_joint_training_keeps_held_out_concepts_out_of_the_videos_only(demo_shards):
    """The video stream of the joint-training ablation never yields a clip naming a held-out concept; the image
    stream still does."""
    preset = load_preset("tiny")
    stage = stage_data("base", preset, 2)
    videos = expand_shards(demo_shards["videos"])
    images = expand_shards(demo_shards["images"])
    stream = iter(TrainingStream(videos, stage, seed=0, images=images, exclude_words=HELD_OUT_CONCEPTS))
    captions, image_captions = [], []
    named = lambda texts: any(word in text.split() for text in texts for word in HELD_OUT_CONCEPTS)  # noqa: E731
    while len(captions) < 40 or not named(image_captions) and len(captions) < 400:
        example = next(stream)
        captions.append(example["caption"])
        image_captions += example["image_captions"]
    assert not any(word in caption.split() for caption in captions for word in HELD_OUT_CONCEPTS)
    assert any(word in caption.split() for caption in image_captions for word in HELD_OUT_CONCEPTS)
    everything = iter(TrainingStream(videos, stage, seed=0, exclude_words=("a", "an")))  # every caption has one
    with pytest.raises(ValueError, match="name an excluded word"):
        for _ in range(100_000):
            next(everything)


def test_ablation_refuses_a_budget_it_cannot_score(tmp_path):
    with pytest.raises(ValueError, match="unknown ablation 'colour'"):
        run_ablation("colour", "sd", [], [], tmp_path, AblationBudget())
    with pytest.raises(ValueError, match=r"evaluation steps \[0, 80\] must lie within 0..60"):
        run_ablation("joint_training", "sd", [], [], tmp_path, AblationBudget(evals=[0, 80]))


def test_summary_table_gives_mean_and_spread_over_seeds():
    runs = [{"variant": "a", "seed": s, "points": [{"step": 5, "x": v}]} for s, v in ((0, 0.2), (1, 0.4))]
    runs += [{"variant": "b", "seed": 0, "points": [{"step": 5, "x": float("nan")}]}]
    rows = summary_table(runs, ("x",), 5)
    assert rows[0] == {"variant": "a", "seeds": 2, "x": pytest.approx(0.3), "x_spread": pytest.approx(0.1)}
    assert rows[1]["seeds"] == 1 and rows[1]["x"] != rows[1]["x"]  # no value: NaN, not a made-up number
