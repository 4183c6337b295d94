"""LaVie models, training, inference and evaluation in plain PyTorch (no Dagster here).

The models import lazily, so that `lavie --help` answers without loading torch and diffusers.
"""

MODELS = ["UNet3DConditionModel", "UNet3DConditionOutput", "UNet3DVSRModel"]
PIPELINES = ["LaVieBasePipeline", "LaVieCascadePipeline", "LaVieInterpolationPipeline", "LaVieVSRPipeline"]
__all__ = MODELS + PIPELINES


def __getattr__(name):
    if name in MODELS:
        from . import models

        return getattr(models, name)
    if name in PIPELINES:
        from . import pipelines

        return getattr(pipelines, name)
    raise AttributeError(f"module 'lavie_model' has no attribute {name!r}")
