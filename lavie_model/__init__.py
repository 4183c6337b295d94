"""LaVie models, training, inference and evaluation in plain PyTorch (no Dagster here).

The package, folder by folder (each folder's __init__.py lists its modules):

    models/          the three cascade UNets (base, interpolation, super-resolution), temporal attention with RoPE
    pipelines/       generation: each stage's pipeline and the cascade (LaVieBasePipeline, ..., LaVieCascadePipeline)
    curation/        raw videos to WebDataset shards: probe, quarantine, shots and clips, captions, scores, filter
    training/        training one stage: shard data, rendered scenes, losses, the DeepSpeed trainer, checkpoints
    evaluation/      metrics (CLIPSIM, FVD, PSNR), prompt adherence, rates with intervals, the gate's rules, probes
    finetune/        fine-tuning on one's own clips: LoRA adapters (lora.py), the memory plan (plan.py)
    cluster/         Ray: curation tasks, a local cluster (ray_cluster.py), `lavie train` on Ray Train (ray_train.py)
    tiny/            the tiny world's models: the stand-ins, the tiny LaVie and its motion run, the ablations
    configs/         the presets (tiny.yaml, paper.yaml) and the 2D UNet configs of SD 1.4 and the x4 upscaler
    pretrained/      data, not code: the tiny world's shipped weights with their model cards (tiny/stand_ins.py)
    model_folder.py  a LaVie model folder's layout: loading, init-tiny, the untrained stand-ins, assemble
    convert.py       the released LaVie checkpoints (lavie_base.pt, ...) converted into model folders
    generate.py      `lavie generate`: a prompt through the cascade to an mp4 or gif
    config.py        reading a preset
    text.py          the offline CLIP tokenizer and prompt embeddings
    video.py         writing frames to mp4 or gif, reading a clip back
    report.py        the run report (`make demo`'s report.md)
    cli.py           the model commands of `lavie` (pipelines/cli.py adds the data commands)

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
