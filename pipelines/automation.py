"""Declarative Automation: what the daemon does by itself once files arrive (the inbox sensor, pipelines/sensors.py,
watches the outside world and starts curation; everything after it is a condition on the assets):

    2D models     once, when missing and a batch has shards (a fresh deployment's t2i_model and upscaler_model)
    latents       eager: a batch's latents as soon as its shards are curated and its encoders exist (again if
                  its encoder changes)
    base_model    after a tick of the retraining cron (weekly by default), once the shards changed since the last
                  training and no curation or encoding is in progress: at most one retraining per cron period.
                  With no cron, on every change of the shards.
    the rest      interpolation_model, vsr_model, evaluation and its gate, requested with their parent in the
                  same run

One sensor evaluates them all, `lavie_automation`, running by default (toggle it in the UI, Automation tab). The
cron comes from LAVIE_RETRAIN_CRON ("0 3 * * 1", Monday 03:00 UTC, when unset; "none" retrains on every change).
"""

import os

import dagster as dg

AC = dg.AutomationCondition
RETRAIN_CRON = "0 3 * * 1"
SHARDS = dg.AssetSelection.assets("video_shards", "image_shards")


def retrain_cron() -> str | None:
    cron = os.environ.get("LAVIE_RETRAIN_CRON", RETRAIN_CRON).strip()
    return None if cron.lower() in ("", "none") else cron


def once_shards_exist() -> dg.AutomationCondition:
    """Missing while some batch has shards: requested once when that becomes true (not again after a failed run,
    which a person looks at; a wiped asset is missing anew)."""
    shards_exist = AC.any_deps_match(~AC.missing() | AC.will_be_requested()).allow(SHARDS)
    return ((AC.missing() & shards_exist).newly_true() & ~AC.in_progress()).with_label("once shards exist")


def latents() -> dg.AutomationCondition:
    """Eager, but only once its encoders exist (eager alone would start it beside the run that makes them)."""
    return (AC.in_latest_time_window() & (AC.newly_missing() | AC.any_deps_updated()).since_last_handled()
            & ~AC.any_deps_match(AC.missing() | AC.in_progress() | AC.will_be_requested()) & ~AC.in_progress()
            ).with_label("eager, once its encoders exist")


def retrain(cron: str | None) -> dg.AutomationCondition:
    """base_model: its shards changed since it was last requested (or it was never trained), on a cron tick since
    then too when `cron` is given, while none of its inputs is being made."""
    changed = (AC.newly_missing() | AC.any_deps_updated().allow(SHARDS)).since_last_handled()
    # an input updated on this very tick (a batch's shards, the encoders) has what follows from it (that batch's
    # latents, every batch's) requested on it in runs of their own, which will_be_requested does not see: wait a
    # tick, by when those runs are in progress
    busy = AC.any_deps_match(AC.in_progress() | AC.newly_updated()) | AC.in_progress()
    models_missing = AC.any_deps_missing().allow(dg.AssetSelection.assets("t2i_model", "upscaler_model"))
    condition = changed & AC.any_deps_match(~AC.missing()).allow(SHARDS) & ~models_missing & ~busy
    if cron:
        condition = AC.cron_tick_passed(cron).since_last_handled() & condition
    return condition.with_label(f"retrain ({f'cron {cron}' if cron else 'on every change'})")


def with_parent(parent: str) -> dg.AutomationCondition:
    """Requested in the same tick as `parent`: the cascade's later stages and the gate run in its run."""
    return AC.any_deps_match(AC.will_be_requested()).allow(dg.AssetSelection.assets(parent)).with_label(
        f"with {parent}")


def sensor(assets) -> dg.AutomationConditionSensorDefinition:
    return dg.AutomationConditionSensorDefinition(
        "lavie_automation", target=dg.AssetSelection.assets(*assets), default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=int(os.environ.get("LAVIE_AUTOMATION_INTERVAL", "30")),
        description="curation -> latents -> retraining -> evaluation and the gate (pipelines/automation.py)")
