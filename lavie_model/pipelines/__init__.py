from .base import LaVieBasePipeline
from .cascade import LaVieCascadePipeline
from .common import VideoPipelineOutput
from .interpolation import LaVieInterpolationPipeline
from .vsr import LaVieVSRPipeline

__all__ = ["LaVieBasePipeline", "LaVieCascadePipeline", "LaVieInterpolationPipeline", "LaVieVSRPipeline",
           "VideoPipelineOutput"]
