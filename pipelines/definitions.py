"""The code location loaded by workspace.yaml."""

import dagster as dg

from .curation import IMAGE_ASSETS, VIDEO_ASSETS, CurationSettings, curate_images, curate_videos
from .sensors import inbox_sensor

defs = dg.Definitions(
    assets=[*VIDEO_ASSETS, *IMAGE_ASSETS],
    jobs=[curate_videos, curate_images],
    sensors=[inbox_sensor],
    resources={"settings": CurationSettings()},
)
