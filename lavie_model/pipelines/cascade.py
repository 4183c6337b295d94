"""The whole cascade: base text-to-video -> temporal interpolation -> video super-resolution."""

import torch

from ..model_folder import STAGES, load_components
from .base import LaVieBasePipeline
from .common import VideoPipelineOutput
from .interpolation import LaVieInterpolationPipeline
from .vsr import LaVieVSRPipeline

STAGE_PIPELINES = {"base": LaVieBasePipeline, "interpolation": LaVieInterpolationPipeline, "vsr": LaVieVSRPipeline}


class LaVieCascadePipeline:
    """Runs the stages of a model folder in order; each stage is a pipeline of its own (`.stages`)."""

    def __init__(self, stages: dict):
        self.stages = stages  # {"base": LaVieBasePipeline, ...} for the stages loaded

    @classmethod
    def from_pretrained(cls, path, stages=STAGES, torch_dtype=None):
        """Load the given stages of a model folder, sharing the components they have in common."""
        stages = parse_stages(stages)
        loaded, pipelines = {}, {}
        for stage in stages:
            pipeline_class = STAGE_PIPELINES[stage]
            needed = [name for name in pipeline_class.components_needed if name not in loaded]
            components, settings = load_components(path, needed, stage, torch_dtype)
            loaded.update(components)
            pipelines[stage] = pipeline_class(**{n: loaded[n] for n in pipeline_class.components_needed}, **settings)
        return cls(pipelines)

    def to(self, device):
        for pipeline in self.stages.values():
            pipeline.to(device)
        return self

    def load_lora(self, path, scale: float = 1.0, adapter_name: str | None = None) -> str:
        """Add a LoRA adapter to the stage it was trained for (its file names the stage); see
        LaVieStagePipeline.load_lora. Returns the adapter's name."""
        from ..finetune.lora import read_adapter

        stage = read_adapter(path)[2]["lavie_stage"]
        if stage not in self.stages:
            raise ValueError(f"LoRA adapter {path} adapts the {stage} stage, which this cascade has not loaded "
                             f"(stages: {', '.join(self.stages)})")
        return self.stages[stage].load_lora(path, scale, adapter_name)

    @property
    def fps(self) -> float:
        """Frame rate of the cascade's output: interpolation puts four frames in each base interval."""
        base = next(iter(self.stages.values())).config.fps
        return base * 4 if "interpolation" in self.stages else base

    @torch.no_grad()
    def __call__(self, prompt, negative_prompt=None, video=None, generator=None, stage_options=None):
        """Run the loaded stages on `prompt`; `video` (b, f, 3, h, w) in [0, 1] starts a cascade without base.

        stage_options: per stage, keyword arguments for that stage's pipeline (steps, guidance, ...).
        Returns the frames of the last stage, (b, f, 3, h, w) in [0, 1].
        """
        stage_options = stage_options or {}
        for stage, pipeline in self.stages.items():
            options = dict(stage_options.get(stage, {}), generator=generator)
            if negative_prompt is not None:
                options["negative_prompt"] = negative_prompt
            if stage == "base":
                video = pipeline(prompt, **options).frames
            else:
                if video is None:
                    raise ValueError(f"the {stage} stage needs a video: run the base stage first or pass one")
                video = pipeline(video, prompt, **options).frames
        return VideoPipelineOutput(frames=video)


def parse_stages(stages) -> list[str]:
    """Stages as a list in cascade order, from a list or a comma-separated string; unknown names raise."""
    names = [s.strip() for s in stages.split(",")] if isinstance(stages, str) else list(stages)
    unknown = [name for name in names if name not in STAGES]
    if unknown or not names:
        raise ValueError(f"unknown stage {', '.join(unknown) or '(none given)'}; stages are {', '.join(STAGES)}")
    ordered = [stage for stage in STAGES if stage in names]
    if ordered != names:
        raise ValueError(f"stages run in cascade order {', '.join(STAGES)}; got {', '.join(names)}")
    return ordered
