"""Orthogonal Hadamard transforms against outliers (HQ-DiT's "universal identity transform").

For a Linear y = x W^T and an orthonormal H (H H^T = I): y = (x H)(W H)^T. The weight is stored
as W H (absorbed), the activation is rotated as x H at run time (or absorbed into the previous
layer where one exists); both spread an outlier channel's energy over many channels, which
shrinks the range a 4-bit grid has to cover.

Sizes that are not a power of two: the transform is block-diagonal, H_b on consecutive blocks of
b channels, b the largest power of two dividing the width (DiT-XL/2's 1152 = 9 x 128, 4608 =
9 x 512). It stays orthonormal and exact; outliers spread within their block only. Widths with no
power-of-two factor above 1 are left untransformed.

Where the activation's rotation goes: in a DiT block no quantized Linear's input can take it from
the layer before. q/k/v and fc1 read LayerNorm output modulated by adaLN, x (1 + scale) + shift
with a per-sample, per-channel scale, which does not commute with H; fc2 reads GELU output;
the attention output projection reads softmax(QK^T) V per head, which would take H into V's
weight only if each Hadamard block stayed inside one head (DiT-XL/2's heads are 72 channels,
the blocks 128). So the weights absorb H and the activations are rotated at run time (in the
exported graph, a MatMul with one H block; exporter/onnx/qdq.py).

The rotation's arithmetic, which the FP4 activation quantizer (exporter/kernels/activation_quant.py)
repeats operation for operation, so both round alike: the fast Walsh-Hadamard transform, stages of
stride 1, 2, 4, ..., b / 2, each replacing the pair (u, v) at channels (i, i + stride) of a
2-stride span by (u + v, u - v), then one multiplication by 1 / sqrt(b) rounded to x's dtype.
Sylvester's H is symmetric, so this is x H with H = hadamard_matrix(b).
"""

from __future__ import annotations

import math

import torch


def hadamard_matrix(n: int) -> torch.Tensor:
    """Orthonormal Sylvester Hadamard matrix [n, n]; n a power of two."""
    if n < 1 or n & (n - 1):
        raise ValueError(f"Sylvester Hadamard matrices need a power-of-two size, not {n}")
    h = torch.ones(1, 1)
    while len(h) < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h / math.sqrt(n)


def block_size_for(width: int) -> int:
    """The largest power of two dividing ``width`` (1 when it is odd)."""
    return width & -width


def norm(block: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """1 / sqrt(block) in ``dtype``: the factor that ends the transform."""
    return torch.tensor(1 / math.sqrt(block), dtype=dtype)


def rotate(x: torch.Tensor, block: int | None = None) -> torch.Tensor:
    """x @ H along the last axis, H block-diagonal with blocks of ``block`` (default: the largest
    power of two dividing the width), by the butterflies above."""
    k = x.shape[-1]
    b = block or block_size_for(k)
    if b == 1:
        return x
    if b & (b - 1) or k % b:
        raise ValueError(f"Hadamard blocks of {b} channels: a power of two dividing the width {k}")
    y = x.reshape(-1, k)
    stride = 1
    while stride < b:
        pairs = y.reshape(len(y), k // (2 * stride), 2, stride)
        u, v = pairs[:, :, 0], pairs[:, :, 1]
        y = torch.stack([u + v, u - v], dim=2).reshape(len(y), k)
        stride *= 2
    return (y * norm(b, y.dtype).to(y.device)).reshape(x.shape)


def rotate_linear_weight(weight: torch.Tensor, block: int | None = None) -> torch.Tensor:
    """W H for a Linear weight [N, K], so that rotate(x) @ (W H)^T == x @ W^T."""
    return rotate(weight, block)
