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
# `max_concurrent` at a time. Step processes fork from a server that imported this module and torch once, instead
# of each importing them anew (this module leaves torch to the assets that use it, so that the code server and
# run workers load fast; almost every step needs it). How many runs (batches) go at once is `concurrency: runs`
# in dagster.yaml; on a cluster this executor is the one setting to swap (docs/cluster.md).
executor = dg.multiprocess_executor.configured({
    "max_concurrent": 2,
    "start_method": {"forkserver": {"preload_modules": ["pipelines.definitions", "torch"]}},
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
