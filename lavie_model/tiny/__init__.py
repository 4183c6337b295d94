"""The tiny world's models: what stands in for Stable Diffusion, the x4 upscaler and the released LaVie stages
where no real weights exist, and the paper's findings measured on them.

    stand_ins.py   the shipped stand-ins for Stable Diffusion and the x4 upscaler: where they are
                   (lavie_model/pretrained/PRESET/), shipping new ones (`make pretrain`), their model card
    tiny_lavie.py  the tiny LaVie: its base and interpolation UNets trained on rendered clips (resumable), scored
                   on held-out clips, shipped, written as a cascade; the never-ending motion run (`make motion`;
                   run as `python -m lavie_model.tiny.tiny_lavie`)
    ablations.py   the paper's two findings (the temporal module, joint image-video training) on the tiny world:
                   variants, runs, tables, reports (the `ablations` assets, `make ablations`)

The shipped weights are data, not code: they stay in lavie_model/pretrained/, which stand_ins.SHIPPED names.
Nothing is imported here.
"""
