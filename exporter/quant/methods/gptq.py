"""GPTQ (Frantar et al., 2022) for integer or 4-bit float weights with group-wise scales.

Columns are quantized left to right; each column's rounding error is spread over the columns
not yet quantized through the inverse Hessian of the layer's inputs (H = 2 X^T X). A group's
scale is chosen when the group's first column is reached, from the weights as updated so far,
as in the reference implementation (no activation reordering). With two-level INT4 scales
(exporter/numerics/two_level.py) the row scale s is fixed up front from the weight before any
update, and what is chosen at a group's first column is its integer factor f; with FP4
power-of-two group scales (exporter/numerics/fp4_groups.py) likewise s up front and, at a group's
first column, its exponent t.
"""

from __future__ import annotations

import torch

from exporter.numerics import fp4_groups
from exporter.numerics.fp4 import Fp4Format
from exporter.numerics.primitives import (
    PER_CHANNEL,
    PER_TENSOR,
    IntFormat,
    QuantFormat,
    choose_qparams,
    num_groups,
    search_clip_ratio,
)
from exporter.numerics.two_level import row_scales, search_factors


class SharedProducts:
    """X^T X of the last input, for accumulators fed the same tensor (q, k and v read one input):
    give them one instance and each input's product is computed once."""

    def __init__(self) -> None:
        self.last: tuple[torch.Tensor, torch.Tensor] | None = None

    def product(self, x: torch.Tensor) -> torch.Tensor:
        """X^T X of x [..., K] in float64 (float32 products); the same tensor object, the same product."""
        if self.last is None or self.last[0] is not x:
            flat = x.detach().reshape(-1, x.shape[-1]).float()
            self.last = (x, (flat.T @ flat).double())
        return self.last[1]

    def forget(self) -> None:
        """Drops the last input and its product (they hold memory until then)."""
        self.last = None


class HessianAccumulator:
    """Running 2/n X^T X of a Linear layer's inputs [..., K] (float32 products, float64 sum)."""

    def __init__(self, k: int, shared: SharedProducts | None = None) -> None:
        self.h = torch.zeros(k, k, dtype=torch.float64)
        self.n = 0
        self.shared = shared if shared is not None else SharedProducts()

    def add(self, x: torch.Tensor) -> None:
        xtx = self.shared.product(x)
        rows = x.numel() // x.shape[-1]
        total = self.n + rows
        self.h *= self.n / total
        self.h += (2.0 / total) * xtx
        self.n = total


def _group_qparams(w: torch.Tensor, fmt: QuantFormat, clip_search: bool) -> tuple[torch.Tensor, torch.Tensor]:
    ratio = search_clip_ratio(w, fmt, PER_CHANNEL) if clip_search else 1.0
    return choose_qparams(w, fmt, PER_CHANNEL, clip_ratio=ratio)


def gptq_quantize(weight: torch.Tensor, hessian: torch.Tensor, fmt: QuantFormat, group_size: int,
                  clip_search: bool = False, damp: float = 0.01, block_size: int = 128,
                  two_level: bool = False,
                  pow2_groups: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Integer codes [N, K], scales and zero-points [N, groups] of a Linear weight [N, K].
    ``two_level``: symmetric INT4 scales s[n] * f[n, g] (exporter/numerics/two_level.py);
    ``pow2_groups``: FP4 scales s[n] * 2**t[n, g] (exporter/numerics/fp4_groups.py)."""
    if group_size == PER_TENSOR:
        raise ValueError("GPTQ needs per-channel or group-wise weight scales")
    if two_level and fmt != IntFormat(4, symmetric=True):
        raise ValueError(f"two-level scales are for symmetric INT4 weights, not {fmt.name}")
    if pow2_groups and (two_level or not isinstance(fmt, Fp4Format)):
        raise ValueError(f"power-of-two group scales are for FP4 weights, not {fmt.name}")
    w = weight.detach().double().clone()
    n, k = w.shape
    g = k if group_size == PER_CHANNEL or group_size >= k else group_size
    h = hessian.double().clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += damp * torch.diag(h).mean() * torch.eye(k, dtype=h.dtype)
    if two_level:
        row_scale = row_scales(w.float(), g, clip_search)

        def group_scale(span: torch.Tensor) -> torch.Tensor:
            return row_scale * search_factors(span, row_scale, PER_CHANNEL)[:, 0].float()
    elif pow2_groups:
        row_scale = fp4_groups.row_scales(w.float(), g, fmt.kind, clip_search)

        def group_scale(span: torch.Tensor) -> torch.Tensor:
            t = fp4_groups.search_exponents(span, row_scale, PER_CHANNEL, fmt.kind)[:, 0]
            return row_scale * torch.exp2(t.float())
    else:
        row_scale = None
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)

    groups = num_groups(k, g)
    scales = torch.zeros(n, groups)
    zeros = torch.zeros(n, groups)
    codes = torch.zeros(n, k)
    block = max(g, block_size // g * g) if g < k else block_size
    for b0 in range(0, k, block):
        b1 = min(b0 + block, k)
        w1 = w[:, b0:b1].clone()
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[b0:b1, b0:b1]
        for i in range(b1 - b0):
            col = b0 + i
            if col % g == 0:
                gi = col // g
                span = w1[:, i:i + g] if g < k else w[:, :].clone()
                if row_scale is not None:
                    scales[:, gi] = group_scale(span.float())
                else:
                    s, z = _group_qparams(span.float(), fmt, clip_search)
                    scales[:, gi], zeros[:, gi] = s[:, 0], z[:, 0]
            s, z = scales[:, col // g].double(), zeros[:, col // g].double()
            q = fmt.round(w1[:, i] / s + z)
            codes[:, col] = q
            err = (w1[:, i] - (q - z) * s) / hinv1[i, i]
            w1[:, i:] -= err[:, None] * hinv1[i, i:][None, :]
            err1[:, i] = err
        w[:, b1:] -= err1 @ hinv[b0:b1, b1:]
    return fmt.encode(codes.float()), scales, zeros
