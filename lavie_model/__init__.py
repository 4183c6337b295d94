"""LaVie models, training, inference and evaluation in plain PyTorch (no Dagster here).

The models import lazily, so that `lavie --help` answers without loading torch and diffusers.
"""

__all__ = ["UNet3DConditionModel", "UNet3DConditionOutput"]


def __getattr__(name):
    if name in __all__:
        from . import models

        return getattr(models, name)
    raise AttributeError(f"module 'lavie_model' has no attribute {name!r}")
