"""What a person looks at after training: the metrics log, a loss curve, the shard list it trained on."""

import hashlib
import io
import json
from pathlib import Path

import pandas as pd


def read_metrics(run_dir) -> pd.DataFrame:
    """RUN_DIR/metrics.jsonl as a table, one row per step."""
    path = Path(run_dir) / "metrics.jsonl"
    return pd.DataFrame([json.loads(line) for line in path.read_text().splitlines() if line])


def loss_curve_png(metrics: pd.DataFrame, title: str) -> bytes:
    """The per-step loss and its running mean, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5, 3), dpi=100)
    axis.plot(metrics["step"], metrics["loss"], color="0.7", linewidth=1, label="loss")
    window = max(1, len(metrics) // 10)
    axis.plot(metrics["step"], metrics["loss"].rolling(window, min_periods=1).mean(), color="C0",
              label=f"mean of {window}")
    axis.set(xlabel="step", ylabel="loss", title=title)
    axis.legend()
    figure.tight_layout()
    out = io.BytesIO()
    figure.savefig(out, format="png")
    plt.close(figure)
    return out.getvalue()


def current_shards(folder) -> pd.DataFrame:
    """The shards under a folder (all batches), from their manifests: name, path, samples, bytes, sha256."""
    rows = []
    for manifest in sorted(Path(folder).glob("*/*.json")):
        record = json.loads(manifest.read_text())
        tar = manifest.with_suffix(".tar")
        if tar.is_file():
            rows.append({"name": record["name"], "path": str(tar), "samples": record["samples"],
                         "bytes": record["bytes"], "sha256": record["sha256"]})
    return pd.DataFrame(rows, columns=["name", "path", "samples", "bytes", "sha256"])


def fingerprint(*tables: pd.DataFrame) -> str:
    """One SHA-256 over the shard lists' names and contents: it changes exactly when the data does."""
    lines = sorted(f"{row.name} {row.sha256}" for table in tables for row in table.itertuples())
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def probe_curve(metrics: pd.DataFrame) -> list[dict]:
    """The trainer's held-out probes (`evaluate_every`) as rows: step, samples seen, then each score."""
    if "probe" not in metrics:
        return []
    rows = metrics.dropna(subset=["probe"])
    return [{"step": int(row.step), **{name: value for name, value in row.probe.items() if name != "n"}}
            for row in rows.itertuples()]


def curves_png(curves: dict[str, list[dict]]) -> bytes:
    """One panel per model: each score of its probe rows against the step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 3.2), dpi=100, squeeze=False)
    for axis, (name, rows) in zip(axes[0], curves.items()):
        steps = [row["step"] for row in rows]
        for score in [key for key in rows[0] if key != "step"]:
            axis.plot(steps, [row[score] for row in rows], marker="o", markersize=3, label=score)
        axis.set(xlabel="step", title=name)
        axis.legend()
    figure.tight_layout()
    out = io.BytesIO()
    figure.savefig(out, format="png")
    plt.close(figure)
    return out.getvalue()


def run_figures(metrics: pd.DataFrame) -> dict:
    """A run's headline figures from its metrics log (read_metrics): `steps` and `final_loss` (the last step's),
    `samples_per_s` (the median over the steps, so the first step's warm-up does not count), `peak_memory_mb`
    (rank 0's peak: CUDA's max_memory_allocated, or the process's peak resident memory on the CPU) and
    `skipped_clips` (over the run)."""
    last = metrics.iloc[-1]
    return {"steps": int(last["step"]), "final_loss": float(last["loss"]),
            "samples_per_s": float(metrics["samples_per_s"].median()),
            "peak_memory_mb": float(metrics["memory_mb"].max()), "skipped_clips": int(metrics["skipped_clips"].sum())}
