"""Evaluation assets (group `evaluation`): the trained cascade scored, then promoted if no stage falls short of its
baseline and nothing regressed.

`evaluation` scores the folder `vsr_model` exported (all three stages) with lavie_model.evaluation, and beside
it (`score_start`) the folder the training started from (base_model's `started_from`: the shipped tiny LaVie,
the released LaVie, or the inflated image model), and shows every metric as its own numeric entry
(`metric/<name>`, a rate as hits/n: the UI plots each across materializations), a metrics table (`metrics`,
table metadata: each metric's value, its 95% interval (a rate's hits/samples and Wilson interval), the start
model's value, its baseline and the gate's verdict), the same as markdown beside the change against the previous
materialization (`metrics_markdown`) and a gallery. Two blocking checks: `beats_baselines` (interpolation not
below the pixel or the latent blend of its keyframes clip by clip beyond the 95% interval of the mean difference,
super-resolution above bicubic, the base stage's colour adherence not below the text-to-image model's beyond its
margin; its metadata says, clip by clip, whether interpolation beats each blend: ahead on more than half the clips
and on average, both beyond their intervals, or is "not shown" better) and `no_regression` (no rate or
clip-averaged PSNR of the start model's or the promoted model's lies above the candidate's 95% interval, and no
other metric of the promoted model's is better than the candidate's by more than `tolerance`). `promoted_model` runs only when both
pass and points LAVIE_HOME/models/promoted, what `lavie generate` uses by default, at the candidate.
"""

import os
from dataclasses import asdict, fields
from pathlib import Path

import dagster as dg
import pandas as pd

from lavie_model.curation import store
from lavie_model.curation.scores import ScoreConfig
from lavie_model.evaluation.gate import (BASELINES, PAIRED, baseline_text, below_baselines, metric_rows,
                                         paired_verdict, rates_of, regressions)
from lavie_model.evaluation.stats import paired_text

from . import automation
from .metadata import markdown_table, numbers, picture, table
from .training import previous_model, vsr_model


class EvaluationSettings(dg.ConfigurableResource):
    preset: str = "tiny"
    lavie_home: str | None = None
    samples_per_prompt: int = 2
    validation_clips: int = 8
    base_steps: int = 25
    interpolation_steps: int = 10
    vsr_steps: int = 10
    gallery: int = 2  # prompts shown through the whole cascade
    clip_model: str = ScoreConfig.clip_model  # as EvalSettings'
    clip_weights: str | None = None
    i3d_path: str | None = None
    tolerance: float = 0.05  # relative regression allowed against the start and promoted models (no interval)
    score_start: bool = True  # score the model the training started from too, the reference of no_regression

    def home(self) -> Path:
        return store.lavie_home(self.lavie_home)

    def eval_settings(self):
        """The lavie_model EvalSettings of the same names (the prompts and seed stay EvalSettings' own)."""
        from lavie_model.evaluation.evaluate import EvalSettings  # torch: loaded by the runs, not the code location

        return EvalSettings(**{f.name: getattr(self, f.name) for f in fields(EvalSettings) if hasattr(self, f.name)})


# the metrics table's schema (metric_rows' columns): a rate's value is hits/n, its interval text
METRICS_COLUMNS = {"metric": "string", "value": "float", "interval": "string", "start model": "float",
                   "baseline": "string", "verdict": "string"}


def latest_metrics(instance, asset: str) -> dict | None:
    event = instance.get_latest_materialization_event(dg.AssetKey(asset))
    if event is None or "metrics_json" not in event.asset_materialization.metadata:
        return None
    return event.asset_materialization.metadata["metrics_json"].value


def gif(path) -> str:
    return picture(Path(path).read_bytes(), "gif", Path(path).stem)


def started_from(instance) -> Path | None:
    """The folder the latest base_model training started from (None: never trained, or it is gone)."""
    event = instance.get_latest_materialization_event(dg.AssetKey("base_model"))
    entry = event.asset_materialization.metadata.get("started_from") if event else None
    return Path(entry.value) if entry is not None and Path(entry.value).is_dir() else None


def latest_folder(instance, asset: str) -> Path | None:
    event = instance.get_latest_materialization_event(dg.AssetKey(asset))
    return Path(event.asset_materialization.metadata["model_folder"].value) if event else None


@dg.asset(deps=[vsr_model], group_name="evaluation", kinds={"pytorch"},
          automation_condition=automation.with_parent("vsr_model"),
          check_specs=[dg.AssetCheckSpec("beats_baselines", asset="evaluation", blocking=True,
                                         description="No stage falls short of its trivial baseline "
                                                     "(interpolation: clip by clip, beyond the interval)."),
                       dg.AssetCheckSpec("no_regression", asset="evaluation", blocking=True,
                                         description="No metric worse than the promoted model's beyond tolerance.")])
def evaluation(context: dg.AssetExecutionContext, evaluation_settings: EvaluationSettings) -> dg.MaterializeResult:
    """Every stage of the trained cascade scored on fixed prompts and held-out validation clips."""
    home = evaluation_settings.home()
    model = previous_model(context, "vsr_model")
    out_dir = home / "evaluation" / context.run.run_id
    t2i = latest_folder(context.instance, "t2i_model")

    def score(folder, folder_out, t2i=None):
        from lavie_model.evaluation.evaluate import evaluate

        return evaluate(folder, str(home / "shards" / "videos"), folder_out, evaluation_settings.preset,
                        evaluation_settings.eval_settings(), log=context.log.info, t2i=t2i)

    result = score(model, out_dir, t2i)  # the image model's colour once: the start model shares it
    metrics, rates = result["metrics"], rates_of(result)
    start, start_metrics, start_rates = started_from(context.instance), {}, {}
    if evaluation_settings.score_start and start is not None:
        context.log.info(f"scoring the start model {start}")
        start_result = score(start, out_dir / "start")
        start_metrics, start_rates = start_result["metrics"], rates_of(start_result)

    previous = latest_metrics(context.instance, "evaluation") or {}
    markdown = pd.DataFrame([{"metric": name, "value": None if v is None else round(v, 4),
                              "hits/samples, 95% interval": str(rates[name]) if name in rates else None,
                              "start model": str(start_rates[name]) if name in start_rates
                              else None if start_metrics.get(name) is None else round(start_metrics[name], 4),
                              "baseline": baseline_text(metrics, name),
                              "previous": None if previous.get(name) is None else round(previous[name], 4),
                              "change": None if v is None or previous.get(name) is None
                              else round(v - previous[name], 4)}
                             for name, v in metrics.items()])
    promoted = latest_metrics(context.instance, "promoted_model")
    # against the start model, the metrics with an interval (rates, clip-averaged PSNRs); against the promoted
    # one, every ranked metric
    start_reference = {name: value for name, value in start_metrics.items() if name in result["intervals"]}
    references = {"start model": start_reference, "promoted model": promoted or {}}
    worse = [f"against the {name}: {line}" for name, reference in references.items()
             for line in regressions(metrics, reference, evaluation_settings.tolerance, result["intervals"])]
    rows = metric_rows(result, start_metrics, references, evaluation_settings.tolerance)
    paired = result["paired"]  # interpolation beside each blend clip by clip ({} without that stage)
    short = below_baselines(metrics, paired)
    clip_by_clip = {name: paired_verdict(paired, name) for name in PAIRED} if paired else {}
    clip_by_clip |= {baseline: paired_text(comparison, "it") for baseline, comparison in paired.items()}
    gallery = "\n\n".join(
        f"**{row['prompt']}**\n\n" + " -> ".join(gif(row[stage]) for stage in ("base", "interpolation", "vsr")
                                               if stage in row)
        for row in result["gallery"])
    return dg.MaterializeResult(
        metadata={
            "model_folder": dg.MetadataValue.path(str(model)),
            # every figure its own entry, plotted across materializations (a rate: hits/n)
            **numbers(metrics, prefix="metric/"),
            "metrics": table(rows, METRICS_COLUMNS),
            "metrics_markdown": markdown_table(markdown),  # the same, with the change against the previous one
            "metrics_json": dg.MetadataValue.json(metrics),
            "rates": dg.MetadataValue.json(result["rates"]),
            "start_model": dg.MetadataValue.path(str(start)) if start_metrics else "not scored",
            "start_metrics_json": dg.MetadataValue.json(start_metrics),
            "fvd_features": result["extractor"],
            "clip": result["clip"],
            "validation_keys": dg.MetadataValue.json(result["validation_keys"]),
            "gallery": dg.MetadataValue.md(gallery or "no gallery"),
            "report": dg.MetadataValue.path(str(out_dir / "metrics.json")),
        },
        check_results=[
            dg.AssetCheckResult(check_name="beats_baselines", passed=not short, metadata={
                "below_baseline": dg.MetadataValue.json(short),
                "pairs": dg.MetadataValue.json({name: list(baselines) for name, baselines in BASELINES.items()}),
                "clip_by_clip": dg.MetadataValue.json(clip_by_clip)}),
            dg.AssetCheckResult(check_name="no_regression", passed=not worse, metadata={
                "regressions": dg.MetadataValue.json(worse),
                "against": ", ".join(name for name, present in (("the start model", start_metrics),
                                                                ("the promoted model", promoted)) if present)
                or "nothing: no start model scored, nothing promoted yet"})],
    )


def promote(candidate: Path, home: Path) -> Path:
    """Point LAVIE_HOME/models/promoted at `candidate` (a symbolic link swapped atomically)."""
    link = store.promoted_path(home)
    link.parent.mkdir(parents=True, exist_ok=True)
    partial = link.with_name(".promoted.partial")
    if partial.is_symlink() or partial.exists():
        partial.unlink()
    partial.symlink_to(Path(candidate).absolute(), target_is_directory=True)
    os.replace(partial, link)
    return link


@dg.asset(deps=[evaluation], group_name="evaluation", kinds={"pytorch"},
          automation_condition=automation.with_parent("evaluation"))
def promoted_model(context: dg.AssetExecutionContext, evaluation_settings: EvaluationSettings) -> dg.MaterializeResult:
    """The model `lavie generate` uses by default: the last candidate that passed `no_regression`."""
    event = context.instance.get_latest_materialization_event(dg.AssetKey("evaluation"))
    metadata = event.asset_materialization.metadata
    candidate = Path(metadata["model_folder"].value)
    link = promote(candidate, evaluation_settings.home())
    return dg.MaterializeResult(metadata={
        "model_folder": dg.MetadataValue.path(str(candidate)), "link": dg.MetadataValue.path(str(link)),
        **numbers(metadata["metrics_json"].value, prefix="metric/"),
        "metrics_json": dg.MetadataValue.json(metadata["metrics_json"].value),
        "settings": dg.MetadataValue.json(asdict(evaluation_settings.eval_settings())),
    })


EVALUATION_ASSETS = [evaluation, promoted_model]
