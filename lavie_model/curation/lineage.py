"""Lineage of a shard sample: from its key back to the shard, the source file, the time range and the runs."""

import json
from pathlib import Path

import pandas as pd

from .url_tables import spans_of


def lineage(key: str, home: Path) -> dict:
    """Everything recorded about the sample `key` of any shard under `home`; KeyError when no shard holds it."""
    for manifest in sorted((home / "shards").glob("*/*/*.json")):
        if key not in json.loads(manifest.read_text())["keys"]:
            continue
        kind, batch = manifest.parent.parent.name, manifest.parent.name
        folder = home / "curation" / batch
        found = {"key": key, "kind": kind, "batch": batch, "shard": str(manifest.with_suffix(".tar")),
                 "latents": latents_of(key, home)}
        raw = pd.read_parquet(folder / "raw.parquet")
        if kind == "images":
            source = _row(raw, "sha256", key)
            return found | {"source_file": source["source_path"], "source_sha256": key,
                            "caption": source["caption"], "caption_source": source["caption_source"]}
        clip = _row(pd.read_parquet(folder / "captions.parquet"), "clip_id", key)
        scores = _row(pd.read_parquet(folder / "scores.parquet"), "clip_id", key)
        decision = _row(pd.read_parquet(folder / "filtered.parquet"), "clip_id", key)
        source = _row(raw, "sha256", clip["source_sha256"])
        spans = spans_of(source.get("spans"))
        if spans:  # cut from a URL table's span
            span = spans[int(clip["shot"])]
            found["span"] = f"{span['start']:g}-{span['end']:g} s, row {span['row']} of the URL table ({span['url']})"
        return found | {
            "source_file": source["source_path"], "source_sha256": clip["source_sha256"],
            "stored_copy": source["stored_path"],
            "time_range": f"{clip['start_time']:.3f}-{clip['end_time']:.3f} s "
                          f"(frames {clip['start_frame']}-{clip['end_frame']})",
            "caption": clip["caption"], "caption_source": clip["caption_source"],
            "clip_run": clip["run_id"], "filter_run": decision["run_id"],
            "scores": {name: scores[name] for name in ("clip_score", "aesthetic", "motion", "duration", "width",
                                                        "height", "clip_model", "aesthetic_model")},
            "decision": "kept" if decision["keep"] else f"dropped: {decision['reason']}",
        }
    raise KeyError(f"no shard under {home / 'shards'} holds a sample {key!r}")


def latents_of(key: str, home: Path) -> list[dict]:
    """The latent shards (LAVIE_HOME/latents/FAMILY/BATCH) holding `key`: family, shard, the shard it encodes."""
    found = []
    for manifest in sorted((home / "latents").glob("*/*/*.json")):
        record = json.loads(manifest.read_text())
        if key in record.get("keys", []):
            found.append({"family": record["family"], "shard": str(manifest.with_suffix(".tar")),
                          "encodes": f"{record['source']['name']} (sha256 {record['source']['sha256']})"})
    return found


def _row(table: pd.DataFrame, column: str, value) -> dict:
    rows = table[table[column] == value]
    if rows.empty:
        raise KeyError(f"{value!r} is missing from the {column} column of a curation table")
    return rows.iloc[0].to_dict()
