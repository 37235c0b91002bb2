"""Clipped ranges for static activation scales: for each timestep bucket and channel group, the
fraction of the calibrated range that minimises the squared quantization error over the
calibration activations themselves (Q-DiT's MSE clip search, over data instead of one tensor).

A min/max range is set by the rarest outlier; at 4 bits that leaves most activations one or two
levels. The search needs a second pass over the calibration data, because the candidates are
fractions of the range the first pass measured.
"""

from __future__ import annotations

import torch

from exporter.numerics.primitives import QuantFormat, qparams_from_range

RATIOS = tuple(round(1.0 - 0.05 * i, 2) for i in range(15))  # 1.0 down to 0.3


class ClipSearch:
    """Accumulates, per bucket and group, the error of every candidate clip ratio."""

    def __init__(self, lo: torch.Tensor, hi: torch.Tensor, fmt: QuantFormat,
                 ratios: tuple[float, ...] = RATIOS) -> None:
        self.lo, self.hi = lo, hi  # [buckets] (whole tokens) or [buckets, groups]
        self.fmt, self.ratios = fmt, ratios
        self.errors = torch.zeros(len(lo), lo[0].numel(), len(ratios), dtype=torch.float64)

    def add(self, x: torch.Tensor, buckets: torch.Tensor) -> None:
        groups = self.errors.shape[1]
        g = x.detach().float().reshape(x.shape[0], -1, groups, x.shape[-1] // groups)  # [B, tokens, G, K / G]
        lo, hi = self.lo.reshape(-1, groups)[buckets], self.hi.reshape(-1, groups)[buckets]  # [B, G]
        for i, r in enumerate(self.ratios):
            scale, zero = qparams_from_range(lo * r, hi * r, self.fmt)
            s, z = scale[:, None, :, None], zero[:, None, :, None]
            error = ((self.fmt.round(g / s + z) - z) * s - g).pow(2).sum((1, 3))
            self.errors[:, :, i].index_add_(0, buckets, error.double())

    def best_ratios(self) -> torch.Tensor:
        """The ratio of least error, shaped like the ranges; 1.0 wins ties and unseen buckets."""
        return torch.tensor(self.ratios)[self.errors.argmin(-1)].reshape(self.lo.shape)

    def clipped(self) -> tuple[torch.Tensor, torch.Tensor]:
        r = self.best_ratios()
        return self.lo * r, self.hi * r
