"""The code location loaded by workspace.yaml."""

import dagster as dg

from .curation import IMAGE_ASSETS, VIDEO_ASSETS, CurationSettings, curate_images, curate_videos

defs = dg.Definitions(
    assets=[*VIDEO_ASSETS, *IMAGE_ASSETS],
    jobs=[curate_videos, curate_images],
    resources={"settings": CurationSettings()},
)
