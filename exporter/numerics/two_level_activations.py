"""Two-level static INT4 activation scales: the deployable W4A4 (INT) activation grid, the
activation side of QServe's progressive group quantization (two_level.py has the weight side).

    x[..., k] = (q - z[b, g]) * s[b] * f[b, g],    g = k // group_size, b the timestep bucket
    q    UINT4 0..15: round(x / (s f) + z), clamped (ties to even)
    z    0..15, the group's integer zero point (from its calibrated, clipped range)
    f    1..8 (ACT_GROUP_FACTORS), one per bucket and group
    s    float32, one per bucket, its low CLEARED_BITS mantissa bits 0 so that s * f is exact

(q - z) f lies in [-120, 120]: an exact INT8 operand that the activation quantizer writes
(activation_quant.quantize_rows, format "int4"), so the GEMM is w4a8's pure INT8 MMA and s[b]
joins the weight's row scale in the epilogue. StaticActivationQuant's table holds the products
s[b] f[b, g] [buckets, G]; split_two_level(table, ACT_GROUP_FACTORS) recovers s and f from it.

A bucket's s is its largest group scale over 8; each group's f is its own scale over s, rounded
to the nearest integer in 1..8. A group whose range is more than 8 times narrower than the
bucket's widest keeps the step s. DilateQuant's distillation trains the scales through this
projection (straight-through), so the scales it settles on are on the grid.
"""

from __future__ import annotations

import torch

from exporter.numerics.primitives import SMALLEST_SCALE
from exporter.numerics.two_level import clear_low_mantissa, split_two_level

ACT_GROUP_FACTORS = (1, 8)  # smallest and largest factor f: |q - z| f <= 15 * 8 < 128


def bucket_scales(scale: torch.Tensor) -> torch.Tensor:
    """s [buckets] of group scales [buckets, G]: the largest over the largest factor, low mantissa bits cleared."""
    return clear_low_mantissa((scale.float().amax(-1) / ACT_GROUP_FACTORS[1]).clamp_min(SMALLEST_SCALE))


def project(scale: torch.Tensor) -> torch.Tensor:
    """Group scales [buckets, G] moved onto the two-level grid: s[b] * f[b, g], exact in float32."""
    if scale.dim() != 2:
        raise ValueError(f"two-level activation scales are [buckets, groups], got {tuple(scale.shape)}")
    s = bucket_scales(scale)
    f = (scale.float() / s[:, None]).round().clamp(*ACT_GROUP_FACTORS)
    return s[:, None] * f


def straight_through(scale: torch.Tensor) -> torch.Tensor:
    """project(scale) forward, the identity backward: training moves the scales, the forward sees the grid."""
    return scale + (project(scale.detach()) - scale).detach()


def kernel_tables(scale: torch.Tensor, zero: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The activation quantizer's static tables from group scales and zero points [buckets, G]:
    s float32 [buckets] and uint8 [buckets, G, 2] holding each group's f and z
    (activation_quant.quantize_rows, format "int4"); ValueError when the scales are off the grid
    or a zero point is not an integer in 0..15."""
    if zero.shape != scale.shape:
        raise ValueError(f"zero points {tuple(zero.shape)} do not match the scales {tuple(scale.shape)}")
    z = zero.float()
    if not bool(((z == z.round()) & (z >= 0) & (z <= 15)).all()):
        raise ValueError("zero points of UINT4 activations must be integers in 0..15")
    s, f = split_two_level(scale.float().contiguous(), ACT_GROUP_FACTORS)
    return s, torch.stack([f, z.long()], -1).to(torch.uint8).contiguous()


__all__ = ["ACT_GROUP_FACTORS", "bucket_scales", "kernel_tables", "project", "straight_through"]
