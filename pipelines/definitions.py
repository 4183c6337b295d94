"""The code location loaded by workspace.yaml: `defs`, built by `definitions` (which a deployment or a test may call
with resources of its own)."""

import dagster as dg

from . import automation
from .ablations import ABLATION_ASSETS, AblationSettings
from .curation import (
    IMAGE_ASSETS,
    URL_ASSETS,
    VIDEO_ASSETS,
    CurationSettings,
    curate_images,
    curate_videos,
    download_videos,
)
from .evaluation import EVALUATION_ASSETS, EvaluationSettings
from .latents import LATENT_ASSETS, encode_image_latents, encode_video_latents
from .pretraining import PRETRAINING_ASSETS
from .sensors import inbox_sensor
from .training import TrainingSettings, base_model, interpolation_model, train_cascade, vsr_model

# Every run, of a job or of assets picked in the UI, executes each asset in its own process, at most
# `max_concurrent` at a time. This module leaves the ML stack to the asset bodies, so that the code server and each
# run worker load it in about a second; the step processes fork from a server that imported it and the ML stack
# once per run (the modules the asset bodies import: torch, diffusers' and transformers' models, webdataset,
# open_clip), instead of each importing them anew. How many runs (batches) go at once is `concurrency: runs` in
# dagster.yaml; on a cluster this executor is the one setting to swap (docs/cluster.md).
STEP_PRELOAD = ["pipelines.definitions", "lavie_model.training.latents", "lavie_model.evaluation.evaluate", "open_clip"]
executor = dg.multiprocess_executor.configured({
    "max_concurrent": 2,
    "start_method": {"forkserver": {"preload_modules": STEP_PRELOAD}},
})


def definitions(cron: str | None = automation.retrain_cron(), **resources) -> dg.Definitions:
    """The assets, jobs, the inbox sensor and the automation sensor; base_model retrains after each tick of `cron`
    (None: on every change of the shards); the default resources updated by `resources` (e.g.
    training=TrainingSettings(max_steps=...))."""
    retrained = base_model.map_asset_specs(lambda spec: spec.replace_attributes(
        automation_condition=automation.retrain(cron)))
    automated = [*PRETRAINING_ASSETS, *LATENT_ASSETS, retrained, interpolation_model, vsr_model, *EVALUATION_ASSETS]
    return dg.Definitions(
        assets=[*URL_ASSETS, *VIDEO_ASSETS, *IMAGE_ASSETS, *automated, *ABLATION_ASSETS],
        jobs=[download_videos, curate_videos, curate_images, encode_video_latents, encode_image_latents, train_cascade],
        sensors=[inbox_sensor, automation.sensor(automated)],
        resources={"settings": CurationSettings(), "training": TrainingSettings(), "pipes": dg.PipesSubprocessClient(),
                   "evaluation_settings": EvaluationSettings(), "ablations": AblationSettings(), **resources},
        executor=executor,
    )


defs = definitions()
