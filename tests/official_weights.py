"""Deterministic weights for a checkpoint layout, shared by the official-reference fixture and its test."""

import torch


def deterministic_state_dict(shapes: dict, seed: int = 0) -> dict:
    """Random but reproducible tensors for {name: shape}: scaled weights, norms near 1, small biases."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name in sorted(shapes):
        shape = tuple(shapes[name])
        noise = torch.randn(shape, generator=generator)
        if name.endswith("rotary_emb.freqs"):
            # The official UNet shares one rotary module, so every block holds the same frequencies;
            # they are perturbed so that a model ignoring the loaded ones fails.
            perturbation = torch.randn(shape, generator=torch.Generator().manual_seed(seed + 1))
            exponents = torch.arange(0, 2 * shape[0], 2).float() / (2 * shape[0])
            state[name] = (1.0 / 10000**exponents) * (1 + 0.1 * perturbation)
        elif len(shape) >= 2:
            fan_in = 1
            for size in shape[1:]:
                fan_in *= size
            state[name] = noise / fan_in**0.5
        elif "norm" in name and name.endswith("weight"):
            state[name] = 1 + 0.1 * noise
        else:
            state[name] = 0.1 * noise
    return state
