"""HQ-DiT's per-layer choice of FP4 format: the one whose grid, clipped at its best, quantizes a
layer's weights with the lowest squared error."""

from __future__ import annotations

import torch

from exporter.numerics.fp4 import FP4_FORMATS, Fp4Format
from exporter.numerics.primitives import choose_qparams, fake_quantize, search_clip_ratio


def select_format(x: torch.Tensor, group_size: int, candidates: tuple[Fp4Format, ...] = FP4_FORMATS,
                  clip_search: bool = True) -> tuple[Fp4Format, dict[str, float]]:
    """HQ-DiT's per-layer choice: the FP4 format (with its best clipping) that quantizes ``x``
    (a layer's weight, or a sample of its calibrated inputs) with the lowest squared error.
    Returns the format and each candidate's error, for reports."""
    errors = {}
    for fmt in candidates:
        ratio = search_clip_ratio(x, fmt, group_size, p=2.0) if clip_search else 1.0
        scale, zero = choose_qparams(x, fmt, group_size, clip_ratio=ratio)
        errors[fmt.name] = float((fake_quantize(x, scale, zero, fmt, group_size) - x).pow(2).mean())
    best = min(candidates, key=lambda f: errors[f.name])
    return best, errors
