"""`lavie generate`: a prompt through the cascade stages of a model folder, to an mp4 or gif."""

import os
from pathlib import Path

import torch

from .video import VIDEO_SUFFIXES, read_video, write_video

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def generate(model, prompt, output, stages="base,interpolation,vsr", negative_prompt=None, scheduler=None,
             steps=None, guidance=None, seed=0, device="cpu", dtype="fp32", video=None, lora=()) -> Path:
    """Generate a video and write it; every argument is checked before any model is loaded. `lora`: LoRA adapter
    folders, each `PATH[:SCALE]` (scale 1 by default), added to the stage each was trained for."""
    from .pipelines.cascade import LaVieCascadePipeline, parse_stages

    output = Path(output)
    if output.suffix.lower() not in VIDEO_SUFFIXES:
        raise ValueError(f"output {output} must end in {' or '.join(VIDEO_SUFFIXES)}")
    if not output.parent.is_dir():  # fail now, not after minutes of sampling
        raise FileNotFoundError(f"cannot write {output}: folder {output.parent} does not exist")
    if output.is_dir() or not os.access(output.parent, os.W_OK):
        raise PermissionError(f"cannot write {output}: " + ("it is a folder" if output.is_dir() else "no permission"))
    stages = parse_stages(stages)
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")
    if dtype == "fp16" and device == "cpu":
        raise ValueError("fp16 is not supported on the CPU; use fp32 or bf16")
    if stages[0] != "base" and video is None:
        raise ValueError(f"a cascade starting at {stages[0]} needs an input video (--video)")
    from .finetune.lora import parse_spec, read_adapter

    adapters = [parse_spec(spec) for spec in lora]
    for path, _ in adapters:
        read_adapter(path)  # fails now, naming what the folder lacks, not after the models are loaded
    frames_in = fps_in = None
    if video is not None:
        frames_in, fps_in = read_video(video)

    pipe = LaVieCascadePipeline.from_pretrained(model, stages=stages, torch_dtype=DTYPES[dtype])
    for path, scale in adapters:
        print(f"LoRA adapter {pipe.load_lora(path, scale)} ({path}) at scale {scale:g}")
    pipe.to(device)
    generator = torch.Generator(device).manual_seed(seed)
    options = {}
    for stage in stages:
        options[stage] = {k: v for k, v in (("num_inference_steps", steps), ("guidance_scale", guidance),
                                            ("scheduler", scheduler)) if v is not None}
    frames = pipe(prompt, negative_prompt=negative_prompt, video=frames_in, generator=generator,
                  stage_options=options).frames[0]  # (f, 3, h, w)
    fps = pipe.fps if fps_in is None else fps_in * (4 if "interpolation" in stages else 1)
    write_video(frames.float(), output, fps)
    print(f"wrote {output}: {frames.shape[0]} frames of {frames.shape[3]}x{frames.shape[2]} at {fps:g} fps")
    return output
