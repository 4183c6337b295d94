"""Fine-tuning LaVie on one's own clips: LoRA adapters, and the memory a run needs before it is launched.

    lora.py  LoRA adapters of the cascade's UNets (peft): the layers they adapt, saving, loading, merging
             (`lavie train --lora`, `lavie merge-lora`, `--lora` of `lavie generate` and the pipelines)
    plan.py  `lavie plan`: the memory one training rank needs (weights, gradients, optimizer, EMA,
             activations) for a run's settings, and what to change when it does not fit

The training loop itself is lavie_model/training/trainer.py, which adds the adapter when a run asks for one.
Nothing is imported here.
"""
