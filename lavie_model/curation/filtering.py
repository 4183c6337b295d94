"""Filtering: a keep or drop decision for every clip, with every reason it was dropped.

Decisions read only the stored scores, so re-tuning a threshold re-runs this step alone. Each rule that a clip
fails is named in its `reason` with the value and the threshold ("motion 0.0042 < 0.01"); nothing is dropped
silently. Near duplicates: among the clips that pass every other rule, taken in clip_id order, a clip whose
embedding has a cosine of at least `dedup_similarity` with an already kept clip is dropped, naming that clip
("duplicate of ID (cosine 0.9912)"). A clip dropped by a rule is also called a duplicate when it is one of a
kept clip, so that every reason it would not be kept is there.
"""

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class FilterConfig:
    # Mean caption-frame CLIP cosine. CLIP ViT-L/14 gives about 0.2-0.3 for a matching caption, but the scale
    # depends on the model (the tiny random CLIP of the tests and demo gives -0.2 to 0.2), so it is off by
    # default: set it together with the CLIP model it is for.
    min_clip_score: float | None = None
    # LAION aesthetic score on its 1-10 scale; Open-Sora drops clips below 4.5-5. Applied only to clips that
    # have one (with no aesthetic head configured every clip's score is NaN).
    min_aesthetic: float | None = 4.5
    # Mean optical flow in pixels per frame at a 64 px short side. On the demo corpus, shapes standing still
    # score at most 0.005 (encoder noise) and moving ones at least 0.015.
    min_motion: float | None = 0.01
    max_motion: float | None = None  # off by default; set it to drop shaky footage and flashes
    min_seconds: float | None = 1.0  # the clip step's own minimum, so nothing is dropped here by default
    # CLIP image-embedding cosine at or above which two clips are near duplicates (Open-Sora and Panda-70M
    # use 0.98); None turns dedup off.
    dedup_similarity: float | None = 0.98

    def __post_init__(self):
        if self.dedup_similarity is not None and not 0 < self.dedup_similarity <= 1:
            raise ValueError(f"dedup_similarity must be in (0, 1], got {self.dedup_similarity}")


def has_caption(value) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _unique_ids(table: pd.DataFrame, name: str) -> None:
    repeated = table.clip_id[table.clip_id.duplicated()].unique().tolist()
    if repeated:
        raise ValueError(f"the {name} table lists clip ids more than once: {repeated[:5]}")


def rule_failures(row, config: FilterConfig) -> list[str]:
    """Every threshold rule a merged clip-and-scores row fails, as readable reasons."""
    reasons = [] if has_caption(row.caption) else ["no caption"]
    if not row.scored:
        return reasons + ["not scored"]
    if config.min_seconds is not None and not row.duration >= config.min_seconds:
        reasons.append(f"duration {row.duration:.2f} s < {config.min_seconds} s")
    if config.min_clip_score is not None and has_caption(row.caption) and not row.clip_score >= config.min_clip_score:
        reasons.append(f"clip_score {row.clip_score:.3f} < {config.min_clip_score}")
    if config.min_aesthetic is not None and not math.isnan(row.aesthetic) and row.aesthetic < config.min_aesthetic:
        reasons.append(f"aesthetic {row.aesthetic:.2f} < {config.min_aesthetic}")
    if math.isnan(row.motion) and (config.min_motion is not None or config.max_motion is not None):
        reasons.append("motion not measured (fewer than two frames)")
    elif config.min_motion is not None and row.motion < config.min_motion:
        reasons.append(f"motion {row.motion:.4f} < {config.min_motion}")
    elif config.max_motion is not None and row.motion > config.max_motion:
        reasons.append(f"motion {row.motion:.4f} > {config.max_motion}")
    return reasons


def decide(clips: pd.DataFrame, scores: pd.DataFrame, config: FilterConfig = FilterConfig()) -> pd.DataFrame:
    """One row per clip, in clip_id order: clip_id, keep (bool), reason ("" when kept, else every failed rule)."""
    _unique_ids(clips, "clips")
    _unique_ids(scores, "scores")
    table = clips[["clip_id", "caption"]].merge(
        scores.assign(scored=True), on="clip_id", how="left").sort_values("clip_id", kind="stable")
    table["scored"] = table.scored.eq(True)
    table = table.reset_index(drop=True)
    reasons = [rule_failures(row, config) for row in table.itertuples()]

    if config.dedup_similarity is not None:
        mark_duplicates(table, reasons, config.dedup_similarity)
    return pd.DataFrame({
        "clip_id": table.clip_id,
        "keep": [not failed for failed in reasons],
        "reason": ["; ".join(failed) for failed in reasons],
    })


def mark_duplicates(table: pd.DataFrame, reasons: list[list[str]], threshold: float) -> None:
    """Add "duplicate of ID (cosine C)" to the reasons of near duplicates, greedily in the table's order."""
    scored = [index for index in range(len(table)) if table.scored[index]]
    if not scored:
        return
    embeddings = np.stack([np.asarray(table.clip_embedding[index], np.float64) for index in scored])  # (n, d)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True).clip(min=1e-12)
    kept = np.empty_like(embeddings)  # the kept clips' embeddings in the first len(kept_ids) rows
    kept_ids = []

    def duplicate_of(embedding: np.ndarray) -> str | None:
        if not kept_ids:
            return None
        cosines = kept[:len(kept_ids)] @ embedding  # (kept,)
        best = int(np.argmax(cosines))  # the first of equals: the lowest clip_id
        return f"duplicate of {kept_ids[best]} (cosine {cosines[best]:.4f})" if cosines[best] >= threshold else None

    dropped_by_rules = []
    for index, embedding in zip(scored, embeddings):
        if reasons[index]:
            dropped_by_rules.append((index, embedding))
        elif match := duplicate_of(embedding):
            reasons[index].append(match)
        else:
            kept[len(kept_ids)] = embedding
            kept_ids.append(table.clip_id[index])
    for index, embedding in dropped_by_rules:  # is a clip dropped by a rule also a duplicate of a kept one?
        if match := duplicate_of(embedding):
            reasons[index].append(match)
