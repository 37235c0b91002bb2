"""DilateQuant's temporal parallel quantizer: the per-timestep activation scales of a quantized
block trained together, all timesteps in every step, by distillation against the FP block.

For each block, after its weights are quantized and its static activation scales set from the
calibration ranges, the scales (log-parametrised, one per timestep bucket and layer) minimise
the relative MSE between the quantized block's output and the FP block's on the same inputs,
with straight-through rounding (qlinear.StaticActivationQuant; two-level scales also through their
projection onto the grid, two_level_activations.py). The weights stay as quantized.

Memory: the block's calibration inputs and the FP block's outputs are held at once. For the
embedded model (1,600 inputs of 64 tokens x 128 channels) that is 100 MB; for DiT-XL/2 (256
tokens x 1,152 channels, float32) it is 1.2 MB per input and output pair, so 512 inputs (256
calibration points with their null-class halves) take about 1.2 GB, plus one batch of
activations and gradients of a block (about 1 GB at batch 32).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from exporter.numerics import two_level_activations
from exporter.quant.qlinear import StaticActivationQuant

LEARNING_RATE = 5e-3


def train_activation_scales(block: nn.Module, targets: list[torch.Tensor], forward: Callable[[int], torch.Tensor],
                            iterations: int, lr: float = LEARNING_RATE,
                            advance: Callable[[], None] | None = None) -> list[float]:
    """Trains the StaticActivationQuant scales inside ``block`` so that ``forward(i)`` (the block
    on input batch i) matches ``targets[i]``; returns the loss of every iteration."""
    quantizers = [m for m in block.modules() if isinstance(m, StaticActivationQuant)]
    if not quantizers or iterations <= 0:
        return []
    for p in block.parameters():
        p.requires_grad_(False)  # only the scales learn
    for q in quantizers:
        q.learned_log_scale = nn.Parameter(q.scale.clamp_min(torch.finfo(torch.float32).tiny).log())
    optimizer = torch.optim.Adam([q.learned_log_scale for q in quantizers], lr=lr)
    losses = []
    try:
        with torch.enable_grad():
            for it in range(iterations):
                i = it % len(targets)
                target = targets[i]
                loss = (forward(i) - target).pow(2).mean() / target.pow(2).mean().clamp_min(1e-12)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                losses.append(float(loss.detach()))
                if advance is not None:
                    advance()
    finally:
        for q in quantizers:
            learned = q.learned_log_scale.detach().exp()
            q.scale.copy_(two_level_activations.project(learned) if q.two_level else learned)
            q.learned_log_scale = None
    return losses
