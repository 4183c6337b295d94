"""Ablation assets (group `ablations`): the paper's two findings on the tiny world, downstream of the text-to-image
model the base stage starts from (pipelines/pretraining.py: t2i_model) and of the curated shards.

    temporal_module_ablation  rotary / no / sinusoidal / learned temporal positions, same start, data and seeds
    joint_training_ablation   joint image-video against video-only fine-tuning, concepts kept out of the videos

Each trains every variant with every seed in this process (lavie_model/tiny/ablations.py), writes a markdown report
under LAVIE_HOME/ablations/<finding>/<run id>/ and records the table (mean and spread per variant), the curves
and sample grids. `AblationSettings` (resource `ablations`) sets the budget: the default is the CPU one of
`make ablations`; on a GPU, `device: cuda` and more steps.
"""

import math
from dataclasses import fields
from pathlib import Path

import dagster as dg

from lavie_model.curation import store
from lavie_model.tiny.ablations import FINDINGS, AblationBudget, markdown_table, run_ablation

from .curation import image_shards, video_shards
from .metadata import picture
from .pretraining import t2i_model
from .training import previous_model, trained_shards

ABLATIONS = {"group_name": "ablations", "pool": "gpu", "kinds": {"pytorch"}}


class AblationSettings(dg.ConfigurableResource):
    """The budget of each ablation run (lavie_model.tiny.ablations.AblationBudget, whose defaults these are) and
    where to find the data."""

    preset: str = "tiny"
    lavie_home: str | None = None
    steps: int = AblationBudget.steps
    evals: list[int] = AblationBudget().evals  # step counts each run is scored at
    seeds: list[int] = AblationBudget().seeds
    batch_size: int = AblationBudget.batch_size
    samples_per_prompt: int = AblationBudget.samples_per_prompt
    sampling_steps: int = AblationBudget.sampling_steps
    validation_clips: int = AblationBudget.validation_clips
    device: str = AblationBudget.device

    def budget(self) -> AblationBudget:
        """The lavie_model budget of the same names."""
        return AblationBudget(**{f.name: getattr(self, f.name) for f in fields(AblationBudget)})


def ablate(context: dg.AssetExecutionContext, settings: AblationSettings, finding: str) -> dg.MaterializeResult:
    from lavie_model.config import load_preset

    if "pretraining" not in load_preset(settings.preset):
        raise dg.Failure(f"the ablations score prompts of the demo's shapes grammar, which the {settings.preset} "
                         "preset does not train on: run them with the tiny preset (or a preset YAML with its "
                         "pretraining section)")
    home = store.lavie_home(settings.lavie_home)
    sd = previous_model(context, "t2i_model")
    videos, images = trained_shards(home, "base")
    out_dir = home / "ablations" / finding / context.run.run_id
    try:
        result = run_ablation(finding, sd, [Path(p) for p in videos["path"]], [Path(p) for p in images["path"]],
                              out_dir, settings.budget(), settings.preset, log=context.log.info)
    except ValueError as error:
        raise dg.Failure(f"{finding}: {error}") from error
    metrics = FINDINGS[finding]["metrics"]
    grids = "\n\n".join(f"**{path.stem.removeprefix('grid_')}**\n\n{picture(path.read_bytes(), 'png', path.stem)}"
                        for path in sorted(out_dir.glob("grid_*.png")))
    return dg.MaterializeResult(metadata={
        "question": result["question"],
        "table": dg.MetadataValue.md(markdown_table(result)),
        "curves": dg.MetadataValue.md(picture((out_dir / "curves.png").read_bytes(), "png", "curves")),
        "samples": dg.MetadataValue.md(grids or "none"),
        "report": dg.MetadataValue.path(result["report"]),
        "results_json": dg.MetadataValue.path(str(out_dir / "results.json")),
        "start_model": dg.MetadataValue.path(str(sd)),
        "feature_extractors": dg.MetadataValue.json(result["labels"]),
        "held_out_concepts": ", ".join(result["held_out_concepts"]) or "none",
        **{f"{row['variant']}/{m}": row[m] for row in result["table"] for m in metrics if not math.isnan(row[m])},
    })


@dg.asset(deps=[t2i_model, video_shards, image_shards], **ABLATIONS)
def temporal_module_ablation(context: dg.AssetExecutionContext, ablations: AblationSettings) -> dg.MaterializeResult:
    """Finding 1: the base stage fine-tuned from the same text-to-image model, data, steps and seeds with rotary
    temporal positions (LaVie), none, or sinusoidal or learned absolute ones; direction and colour adherence,
    temporal consistency and FVD per variant."""
    return ablate(context, ablations, "temporal_module")


@dg.asset(deps=[t2i_model, video_shards, image_shards], **ABLATIONS)
def joint_training_ablation(context: dg.AssetExecutionContext, ablations: AblationSettings) -> dg.MaterializeResult:
    """Finding 2: with some concepts only in the images, the base stage fine-tuned on joint image-video batches or on
    the videos alone; adherence to the held-out concepts in generated videos, and to the seen ones."""
    return ablate(context, ablations, "joint_training")


ABLATION_ASSETS = [temporal_module_ablation, joint_training_ablation]
