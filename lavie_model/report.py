"""The run report: what curation, training and evaluation produced, on one markdown page with its pictures.

    funnel(batch_folder)   the curation funnel of one batch (ingested -> decodable -> clips -> kept -> in
                           shards) and the reason for each quarantined file
    summary_rows(folder)   each stage's headline metric beside the baseline it must beat; rates counted on samples
                           as "31% (10/32, 18%-49%)" (hits of n, 95% Wilson interval), beating chance only where
                           the whole interval lies above it; interpolation beside each blend clip by clip
    write_report(...)      OUT_DIR/report.md: the funnels, the loss curves, the metrics table, the prompt
                           adherence per sample, the gallery and the sample, with the files it shows beside it
"""

import json
import math
import shutil
from pathlib import Path

import pandas as pd

from .evaluation.stats import Rate
from .training.report import loss_curve_png, read_metrics


def funnel(folder) -> dict:
    """Counts of one curated batch from its Parquet tables (LAVIE_HOME/curation/BATCH)."""
    folder = Path(folder)
    raw = pd.read_parquet(folder / "raw.parquet")
    shards = pd.read_parquet(folder / "shards.parquet")
    counts = {"batch": folder.name, "ingested": len(raw), "in_shards": int(shards["samples"].sum()),
              "shards": len(shards)}
    if not (folder / "clips.parquet").exists():  # an image batch: ingested, then sharded
        return counts | {"kind": "images"}
    quarantine = pd.read_parquet(folder / "quarantine.parquet")
    kept = pd.read_parquet(folder / "filtered.parquet")["keep"]
    return counts | {"kind": "videos", "decodable": len(raw) - len(quarantine),
                     "clips": len(pd.read_parquet(folder / "clips.parquet")), "kept": int(kept.sum()),
                     "quarantined": [(row.name, row.reason) for row in quarantine.itertuples()]}


def funnel_line(counts: dict) -> str:
    if counts["kind"] == "images":
        return f"{counts['ingested']} images -> {counts['in_shards']} in {counts['shards']} image-text shard(s)"
    return (f"ingested {counts['ingested']} -> decodable {counts['decodable']} -> clips {counts['clips']} -> kept "
            f"{counts['kept']} -> {counts['in_shards']} samples in {counts['shards']} shard(s)")


def table(rows: list[dict]) -> str:
    """A markdown table of rows with the same keys."""
    if not rows:
        return "(none)"
    names = list(rows[0])
    lines = ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    lines += ["| " + " | ".join(cell(row[name]) for name in names) + " |" for row in rows]
    return "\n".join(lines)


def cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def percent(value) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def decibels(value) -> str:
    return "n/a" if value is None else f"{value:.2f} dB"


def rate_cell(rate: Rate | None) -> str:
    return "n/a" if rate is None else str(rate)


def summary_rows(evaluation) -> list[dict]:
    """Each stage's headline metric beside the model the training started from (when the evaluation folder holds
    its scores under start/) and the baseline it must beat, from an evaluation folder's metrics.json.

    A rate beats chance only where its 95% Wilson interval lies wholly above it (10 of 32 directions, 18%-49%, does
    not beat 25%); the base stage's colour is held to the text-to-image model's within COLOUR_MARGIN, as the gate
    holds it (to chance when no t2i model was scored); the super-resolution PSNR beats bicubic when above it.
    Interpolation is set beside each blend clip by clip (a row each: the clips it is ahead on and the mean
    difference, with their 95% intervals): "yes" where both intervals clear, "NO" where the blend is better beyond
    the interval of the mean difference, else "not shown"; its PSNR row reads "yes" where it beats both blends,
    "NO" where it falls short of one (the gate refuses it), else "not shown".
    The new concept (big shapes, base/new_concept) is held to the start model: learned where the candidate's
    interval lies wholly above the start model's rate. `vs start`: "better" or "worse" where the start model's figure lies outside the candidate's 95% interval, else
    "same" (within it).
    """
    from .evaluation.evaluate import CHANCE
    from .evaluation.gate import COLOUR_MARGIN, paired_verdict, rates_of
    from .evaluation.stats import paired_text
    from .evaluation.shapes import MIN_SHIFT

    result = json.loads((Path(evaluation) / "metrics.json").read_text())
    metrics, rates, intervals = result["metrics"], rates_of(result), result.get("intervals", {})
    paired = result.get("paired", {})
    start_file = Path(evaluation) / "start" / "metrics.json"
    start = json.loads(start_file.read_text()) if start_file.is_file() else None
    start_rates = rates_of(start) if start else {}
    m = metrics.get

    def verdict(passed) -> str:
        return "n/a" if passed is None else "yes" if passed else "NO"

    def against_start(name: str) -> str:
        reference = None if start is None else start["metrics"].get(name)
        if reference is None or m(name) is None or name not in intervals:
            return "n/a"
        low, high = intervals[name]
        return "better" if reference < low else "worse" if reference > high else "same"

    def row(stage: str, metric: str, name: str, value: str, start_value: str, baseline: str, beats: str) -> dict:
        return {"stage": stage, "metric": metric, "value": value,
                "start model": start_value if start is not None else "not scored", "vs start": against_start(name),
                "baseline": baseline, "beats it": beats}

    def rate_row(name: str, metric: str, kind: str) -> dict:
        """A rate beside chance: beaten where its whole interval lies above it."""
        rate = rates.get(name)
        return row("base", metric, name, rate_cell(rate), rate_cell(start_rates.get(name)),
                   f"chance {CHANCE[kind]:.0%}", verdict(None if rate is None else rate.beats(CHANCE[kind])))

    def psnr_row(stage: str, metric: str, name: str, baseline: str, beats: str) -> dict:
        shown = decibels(m(name)) + (f" ({intervals[name][0]:.2f}-{intervals[name][1]:.2f})" if name in intervals
                                     and math.isfinite(intervals[name][0]) else "")
        return row(stage, metric, name, shown, decibels(start["metrics"].get(name)) if start else "n/a", baseline,
                   beats)

    def paired_row(label: str, reference: str) -> dict:
        """Interpolation beside one blend clip by clip: "yes" where both intervals clear, "NO" where the blend is
        better beyond the interval of the mean difference, else "not shown"."""
        comparison, before = paired.get(reference), start.get("paired", {}).get(reference) if start else None
        return row("interpolation", f"clip by clip against the {label}: clips ahead; mean difference", "paired",
                   "n/a" if comparison is None else paired_text(comparison, f"the {label}"),
                   "n/a" if before is None else paired_text(before, f"the {label}"), "more than half; above 0 dB",
                   "n/a" if comparison is None else "yes" if comparison["beats"]
                   else "NO" if comparison["loses"] else "not shown")

    def concept_row() -> dict:
        """The new concept beside the start model: learned where the whole interval lies above the start's rate."""
        name = "base/new_concept"
        rate, before = rates.get(name), start_rates.get(name)
        return row("base", "new concept: big shapes for \"a big ...\" prompts", name, rate_cell(rate),
                   rate_cell(before), "the start model",
                   verdict(None if rate is None or before is None else rate.beats(before.value)))

    colour = rate_row("base/shapes_colour", "colour adherence", "colour")
    shapes, t2i = rates.get("base/shapes_colour"), rates.get("base/t2i_colour")
    if shapes is not None and t2i is not None:  # held to the image model's colour, as the gate holds it
        colour["baseline"] = f"t2i {t2i} (within {COLOUR_MARGIN:.0%}); {colour['baseline']}"
        colour["beats it"] = verdict(shapes.value >= t2i.value - COLOUR_MARGIN)
    shift, start_shift = m("base/shapes_displacement"), start["metrics"].get("base/shapes_displacement") if start else None
    references = [("hold", "psnr_hold"), ("pixel blend", "psnr_blend"), ("latent blend", "psnr_latent_blend"),
                  ("VAE round trip (ceiling)", "psnr_vae")]
    interpolation = {"beats": "yes", "falls short": "NO", "not shown": "not shown", None: "n/a"}[
        paired_verdict(paired, "interpolation/psnr")]
    vsr, bicubic = m("vsr/psnr"), m("vsr/psnr_bicubic")  # strictly above: a tie with bicubic does not beat it
    return [
        colour,
        rate_row("base/shapes_direction", "direction adherence", "direction"),
        row("base", f"moving at all (net shift >= {MIN_SHIFT:.0%} of the side); mean shift", "unranked",
            f"{rate_cell(rates.get('base/shapes_moving'))}; " + ("n/a" if shift is None else f"{shift:.2f} of the side"),
            f"{rate_cell(start_rates.get('base/shapes_moving'))}; "
            + ("n/a" if start_shift is None else f"{start_shift:.2f} of the side"), "-", "-"),
        concept_row(),
        rate_row("base/shapes_colour_unseen", "colour, prompts not in the shards", "colour"),
        rate_row("base/shapes_direction_unseen", "direction, prompts not in the shards", "direction"),
        psnr_row("interpolation", "PSNR of the filled-in frames", "interpolation/psnr",
                 "; ".join(f"{label} {decibels(m('interpolation/' + name))}" for label, name in references),
                 interpolation),
        paired_row("pixel blend", "interpolation/psnr_blend"),
        paired_row("latent blend", "interpolation/psnr_latent_blend"),
        psnr_row("vsr", "PSNR", "vsr/psnr", f"bicubic {decibels(bicubic)}",
                 verdict(None if vsr is None or bicubic is None else vsr > bicubic)),
    ]


def copy(path, out_dir: Path, name: str) -> str:
    """Copy a picture next to the report; its relative path for the page."""
    (out_dir / "files").mkdir(exist_ok=True)
    shutil.copyfile(path, out_dir / "files" / name)
    return f"files/{name}"


def write_report(out_dir, batches=(), runs: dict | None = None, evaluation=None, sample=None,
                 title: str = "LaVie run report", commands: dict | None = None, pretrained=None) -> Path:
    """Write OUT_DIR/report.md (replacing an earlier one) and the pictures it shows under OUT_DIR/files/.

    batches: curated batch folders; runs: {stage: training run dir}; evaluation: an evaluation folder
    (metrics.json and gallery GIFs); sample: a GIF generated by the cascade; commands: {what: command} to list
    at the end; pretrained: the folder of the shipped stand-ins the cascade started from (its card.json).
    """
    out_dir = Path(out_dir)
    if (out_dir / "files").exists():
        shutil.rmtree(out_dir / "files")
    out_dir.mkdir(parents=True, exist_ok=True)
    page = [f"# {title}", ""]

    if batches:
        page += ["## Curation", ""]
        for folder in batches:
            counts = funnel(folder)
            page.append(f"- {counts['kind']} batch `{counts['batch']}`: {funnel_line(counts)}")
            page += [f"  - quarantined `{name}`: {reason}" for name, reason in counts.get("quarantined", [])]
        page.append("")

    if pretrained is not None:
        card = json.loads((Path(pretrained) / "card.json").read_text())
        t2i, up = card["scores"]["t2i"], card["scores"]["upscaler"]
        counted = {name: Rate(round(t2i[name] * t2i["n"]), t2i["n"]) for name in ("colour", "background")}
        page += ["## Pretrained stand-ins", "", f"The cascade started from the stand-ins in `{pretrained}` "
                 f"(see its MODEL_CARD.md; rebuilt by `{card['command']}`). Their held-out scores:", "",
                 table([{"model": "t2i", "metric": "colour adherence", "value": str(counted["colour"]),
                         "baseline": "chance 17%"},
                        {"model": "t2i", "metric": "background adherence", "value": str(counted["background"]),
                         "baseline": "chance 17%"},
                        {"model": "upscaler", "metric": "PSNR", "value": decibels(up["psnr"]),
                         "baseline": f"bicubic {decibels(up['psnr_bicubic'])}"}]), ""]
        if (Path(pretrained) / "lavie" / "MODEL_CARD.md").is_file():
            page += [f"Beside them, the tiny LaVie's base and interpolation UNets (`{Path(pretrained) / 'lavie'}`, "
                     "its MODEL_CARD.md), which the training starts from unless told to inflate the 2D UNets: the "
                     "evaluation's \"start model\" column.", ""]

    if runs:
        page += ["## Training", ""]
        rows, curves = [], []
        for stage, run_dir in runs.items():
            metrics = read_metrics(run_dir)
            head, tail = metrics["loss"].head(10).mean(), metrics["loss"].tail(10).mean()
            rows.append({"stage": stage, "steps": int(metrics["step"].iloc[-1]), "loss, first 10 steps": head,
                         "loss, last 10 steps": tail, "peak memory MB": float(metrics["memory_mb"].max()),
                         "skipped clips": int(metrics["skipped_clips"].sum()), "run": f"`{run_dir}`"})
            (out_dir / "files").mkdir(exist_ok=True)
            (out_dir / "files" / f"loss_{stage}.png").write_bytes(loss_curve_png(metrics, f"{stage} loss"))
            curves.append(f"![{stage} loss](files/loss_{stage}.png)")
        page += [table(rows), "", " ".join(curves), ""]

    if evaluation is not None:
        from .evaluation.gate import rates_of

        result = json.loads((Path(evaluation) / "metrics.json").read_text())
        rates = rates_of(result)
        page += ["## Evaluation", "", f"Model: `{result.get('model', '?')}`. CLIP: {result['clip']}. "
                 f"FVD features: {result['extractor']}.", "", "Each stage beside the baseline it must beat (rates "
                 "as hits/samples with their 95% Wilson interval; a rate beats chance where the whole interval lies "
                 "above it):", "", table(summary_rows(evaluation)), "", "All metrics:", "",
                 table([{"metric": name, "value": value, "hits/samples, 95% interval": rate_cell(rates.get(name))}
                        for name, value in result["metrics"].items()]), ""]
        adherence = [{"prompt": s["prompt"], "colour": s["colour"], "direction": s["direction"],
                      "shift": s["displacement"], "colour ok": s["colour_ok"], "direction ok": s["direction_ok"]}
                     for s in result.get("adherence", []) if s["expected_colour"] is not None]
        if adherence:
            page += ["Prompt adherence of the base samples (`shapes_adherence`: the tracked shape's colour, "
                     "direction of motion and net shift as a fraction of the frame side):", "", table(adherence), ""]
        if result.get("gallery"):
            page += ["### Gallery: prompt -> base -> interpolated -> super-resolved", ""]
            for index, row in enumerate(result["gallery"]):
                pictures = [f"![{stage}]({copy(row[stage], out_dir, f'gallery{index}_{stage}.gif')})"
                            for stage in ("base", "interpolation", "vsr") if stage in row]
                page += [f"**{row['prompt']}**", "", " ".join(pictures), ""]

    if sample is not None:
        page += ["## Sample", "", f"![sample]({copy(sample, out_dir, Path(sample).name)})", ""]
    if commands:
        page += ["## Next", ""] + [f"- {what}: `{command}`" for what, command in commands.items()] + [""]
    report = out_dir / "report.md"
    report.write_text("\n".join(page))
    return report
