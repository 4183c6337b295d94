"""The code location loaded by workspace.yaml."""

import dagster as dg

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
from .latents import LATENT_ASSETS, encode_image_latents, encode_video_latents, latents_sensor
from .pretraining import PRETRAINING_ASSETS
from .sensors import inbox_sensor
from .training import (
    TRAINING_ASSETS,
    TrainingSettings,
    new_shards_sensor,
    retrain_schedule,
    train_cascade,
)

# Every run, of a job or of assets picked in the UI, executes each asset in its own process, at most
# `max_concurrent` at a time. Step processes fork from a server that imported this module once, instead of
# each importing torch anew. How many runs (batches) go at once is `concurrency: runs` in dagster.yaml;
# on a cluster this executor is the one setting to swap (docs/cluster.md).
executor = dg.multiprocess_executor.configured({
    "max_concurrent": 2,
    "start_method": {"forkserver": {"preload_modules": ["pipelines.definitions"]}},
})

defs = dg.Definitions(
    assets=[*URL_ASSETS, *VIDEO_ASSETS, *IMAGE_ASSETS, *PRETRAINING_ASSETS, *LATENT_ASSETS, *TRAINING_ASSETS, *EVALUATION_ASSETS,
            *ABLATION_ASSETS],
    jobs=[download_videos, curate_videos, curate_images, encode_video_latents, encode_image_latents, train_cascade],
    schedules=[retrain_schedule],
    sensors=[inbox_sensor, new_shards_sensor, latents_sensor],
    resources={"settings": CurationSettings(), "training": TrainingSettings(), "pipes": dg.PipesSubprocessClient(),
               "evaluation_settings": EvaluationSettings(), "ablations": AblationSettings()},
    executor=executor,
)
