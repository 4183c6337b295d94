"""Evaluation metrics in plain PyTorch (no Dagster here), as functions over video tensors (b, f, 3, h, w) in [0, 1].

    metrics.py  CLIPSIM, temporal consistency, PSNR, SSIM, Frechet distance and FVD with a pluggable video
                feature extractor (the StyleGAN-V I3D TorchScript file, or a labelled fallback without weights)
    shapes.py   prompt adherence on the demo's moving-shapes corpus: a colour-and-motion tracker, a background
                recogniser
    evaluate.py every stage of a cascade scored beside its baselines, and a gallery
    gate.py     the gate's rules on numbers: the baselines each metric must beat, verdicts, regressions
    stats.py    rates counted on n samples, with their 95% Wilson interval and a binomial p-value; a model and a
                reference compared clip by clip (paired_comparison)
    stand_ins.py  held-out scores of the pretrained stand-ins (t2i adherence, upscaler PSNR, the autoencoders'
                colour fidelity) and the trainer's probes
"""
