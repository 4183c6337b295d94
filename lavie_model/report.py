"""The run report: what curation, training and evaluation produced, on one markdown page with its pictures.

    funnel(batch_folder)   the curation funnel of one batch (ingested -> decodable -> clips -> kept -> in
                           shards) and the reason for each quarantined file
    summary_rows(folder)   each stage's headline metric beside the baseline it must beat
    write_report(...)      OUT_DIR/report.md: the funnels, the loss curves, the metrics table, the prompt
                           adherence per sample, the gallery and the sample, with the files it shows beside it
"""

import json
import math
import shutil
from pathlib import Path

import pandas as pd

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


def summary_rows(evaluation) -> list[dict]:
    """Each stage's headline metric beside the baseline it must beat, from an evaluation folder's metrics.json."""
    from .evaluation.evaluate import COLOUR_MARGIN

    metrics = json.loads((Path(evaluation) / "metrics.json").read_text())["metrics"]

    def beats(value, baseline, margin=None):
        """Above the baseline (a tie with chance or a blend is not beating it); with a margin, within it of the
        baseline (colour adherence keeping the image model's, counted on few samples)."""
        if value is None or baseline is None:
            return "n/a"
        return "yes" if (value >= baseline - margin if margin is not None else value > baseline) else "NO"

    m = metrics.get
    colour, t2i = m("base/shapes_colour"), m("base/t2i_colour")
    rows = [
        {"stage": "base", "metric": "colour adherence", "value": percent(colour),
         "baseline": f"t2i {percent(t2i)}; chance 17%", "beats it": beats(colour, t2i, COLOUR_MARGIN)},
        {"stage": "base", "metric": "direction adherence", "value": percent(m("base/shapes_direction")),
         "baseline": "chance 25%", "beats it": beats(m("base/shapes_direction"), 0.25)},
        {"stage": "base", "metric": "colour, prompts not in the shards", "value": percent(m("base/shapes_colour_unseen")),
         "baseline": "chance 17%", "beats it": beats(m("base/shapes_colour_unseen"), 1 / 6)},
        {"stage": "base", "metric": "direction, prompts not in the shards",
         "value": percent(m("base/shapes_direction_unseen")), "baseline": "chance 25%",
         "beats it": beats(m("base/shapes_direction_unseen"), 0.25)},
        {"stage": "interpolation", "metric": "PSNR of the filled-in frames", "value": decibels(m("interpolation/psnr")),
         "baseline": f"keyframe blend {decibels(m('interpolation/psnr_blend'))}",
         "beats it": beats(m("interpolation/psnr"), m("interpolation/psnr_blend"))},
        {"stage": "vsr", "metric": "PSNR", "value": decibels(m("vsr/psnr")),
         "baseline": f"bicubic {decibels(m('vsr/psnr_bicubic'))}", "beats it": beats(m("vsr/psnr"), m("vsr/psnr_bicubic"))},
    ]
    return rows


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
        page += ["## Pretrained stand-ins", "", f"The cascade started from the stand-ins in `{pretrained}` "
                 f"(see its MODEL_CARD.md; rebuilt by `{card['command']}`). Their held-out scores:", "",
                 table([{"model": "t2i", "metric": "colour adherence", "value": percent(t2i["colour"]),
                         "baseline": "chance 17%"},
                        {"model": "t2i", "metric": "background adherence", "value": percent(t2i["background"]),
                         "baseline": "chance 17%"},
                        {"model": "upscaler", "metric": "PSNR", "value": decibels(up["psnr"]),
                         "baseline": f"bicubic {decibels(up['psnr_bicubic'])}"}]), ""]

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
        result = json.loads((Path(evaluation) / "metrics.json").read_text())
        page += ["## Evaluation", "", f"Model: `{result.get('model', '?')}`. CLIP: {result['clip']}. "
                 f"FVD features: {result['extractor']}.", "", "Each stage beside the baseline it must beat:", "",
                 table(summary_rows(evaluation)), "", "All metrics:", "",
                 table([{"metric": name, "value": value} for name, value in result["metrics"].items()]), ""]
        adherence = [{"prompt": s["prompt"], "colour": s["colour"], "direction": s["direction"],
                      "colour ok": s["colour_ok"], "direction ok": s["direction_ok"]}
                     for s in result.get("adherence", []) if s["expected_colour"] is not None]
        if adherence:
            page += ["Prompt adherence of the base samples (`shapes_adherence`: the tracked shape's colour and "
                     "direction of motion):", "", table(adherence), ""]
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
