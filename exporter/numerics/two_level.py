"""Two-level INT4 weight scales (QServe's progressive group quantization), pure torch.

    W[n, k] = s[n] * f[n, g] * q[n, k],   g = k // group_size

| tensor | shape  | dtype   | values                                                         |
| ------ | ------ | ------- | -------------------------------------------------------------- |
| q      | [N, K] | int8    | the INT4 codes, symmetric: -8..7                               |
| f      | [N, G] | integer | 1..16 (``INT4_GROUP_FACTORS``), one per row and group          |
| s      | [N]    | float32 | one per output row, the low ``CLEARED_BITS`` mantissa bits 0   |

q * f lies in [-128, 112]: an exact INT8 operand that a kernel builds in registers, so its K loop
is a pure INT8 x INT8 -> INT32 MMA and s[n] (times the activation's per-token scale) is applied
once in the epilogue. With 5 mantissa bits cleared, s (19 significant bits) times f (at most 5
bits) is exact in float32, so QuantLinear's per-group scale ``w_scale`` [N, G] holds the product
s[:, None] * f exactly and every consumer of ``w_scale`` (ONNX export, rewrite, plugins) works
unchanged; ``split_two_level`` recovers s and f from it.

Calibration picks s[n] from the largest float group scale of the row (as min/max or the clip
search chooses it) divided by 16, then each group's f by exhaustive search over 1..16 for the
lowest sum |w - s f q(w / (s f))|^p, p = 2.4 as in ``search_clip_ratio``.
"""

from __future__ import annotations

import torch

from exporter.numerics.primitives import (
    SMALLEST_SCALE,
    IntFormat,
    choose_qparams,
    first_valid_candidate,
    group_view,
    search_clip_ratio,
)

INT4_GROUP_FACTORS = (1, 16)  # smallest and largest integer group factor f
CLEARED_BITS = 5  # f <= 16 = 2^4 needs 5 bits: s keeps 24 - 5 = 19 significant bits
INT4 = IntFormat(4, symmetric=True)


def clear_low_mantissa(x: torch.Tensor, bits: int = CLEARED_BITS) -> torch.Tensor:
    """float32 ``x`` with its ``bits`` lowest mantissa bits set to 0 (truncation towards zero)."""
    as_int = x.float().contiguous().view(torch.int32)
    return (as_int & ~((1 << bits) - 1)).view(torch.float32)


def row_scales(w: torch.Tensor, group_size: int, clip_search: bool = False) -> torch.Tensor:
    """s [N] of a weight [N, K]: the row's largest INT4 group scale (min/max, or clip-searched)
    divided by the largest factor, low mantissa bits cleared."""
    ratio = search_clip_ratio(w, INT4, group_size) if clip_search else 1.0
    scale, _ = choose_qparams(w, INT4, group_size, clip_ratio=ratio)
    return clear_low_mantissa((scale.amax(-1) / INT4_GROUP_FACTORS[1]).clamp_min(SMALLEST_SCALE))


def group_errors(w: torch.Tensor, row_scale: torch.Tensor, group_size: int, p: float = 2.4) -> torch.Tensor:
    """[F, N, G]: sum over each group of |w - s f q|^p for every factor f = 16, 15, ..., 1
    (descending: index i is factor 16 - i)."""
    g = group_view(w.detach().float(), group_size)  # [N, G, g]
    lo, hi = INT4_GROUP_FACTORS
    factors = torch.arange(hi, lo - 1, -1, dtype=torch.float32)
    chunk = max(1, (1 << 24) // max(1, g.numel()))  # factors evaluated at once, bounded memory
    errors = []
    for part in factors.split(chunk):
        scale = (row_scale.float()[None, :, None, None] * part[:, None, None, None])  # exact: s * f
        q = INT4.round(g / scale)
        errors.append((q * scale - g).abs().pow(p).sum(-1))
    return torch.cat(errors)


def search_factors(w: torch.Tensor, row_scale: torch.Tensor, group_size: int, p: float = 2.4) -> torch.Tensor:
    """f [N, G] int64 in 1..16 minimising each group's Lp error; among equals, the largest."""
    best = group_errors(w, row_scale, group_size, p).argmin(0)  # first minimum: the largest factor
    return INT4_GROUP_FACTORS[1] - best


def two_level_scales(w: torch.Tensor, group_size: int, clip_search: bool = False) -> torch.Tensor:
    """The per-group scale [N, G] = s[:, None] * f of a weight [N, K] (round-to-nearest)."""
    s = row_scales(w, group_size, clip_search)
    return s[:, None] * search_factors(w, s, group_size).float()


def split_two_level(w_scale: torch.Tensor,
                    factors: tuple[int, int] = INT4_GROUP_FACTORS) -> tuple[torch.Tensor, torch.Tensor]:
    """(s [N] float32, f [N, G] int64) with s[:, None] * f == w_scale exactly, s's low
    ``CLEARED_BITS`` mantissa bits 0 and f in ``factors`` (smallest, largest: 1..16 for weights);
    ValueError if no such pair exists.

    Where several exist (all of a row's factors share a divisor), the smallest s: the largest
    factors. Calibration's own s is that one whenever a row uses the largest factor."""
    if w_scale.dim() != 2 or w_scale.dtype != torch.float32:
        raise ValueError(f"two-level scales are float32 [N, groups], got {w_scale.dtype} {tuple(w_scale.shape)}")
    p = w_scale.double()
    lo, hi = factors
    factors = torch.arange(hi, lo - 1, -1, dtype=torch.float64)  # candidates for the row's largest scale
    s = (p.amax(1, keepdim=True) / factors).float()  # [N, F], candidate row scales
    f = p[:, None, :] / s.double()[:, :, None]  # [N, F, G]
    valid = ((clear_low_mantissa(s) == s) & (s > 0)
             & ((f == f.round()) & (f >= lo) & (f <= hi)).all(-1)
             & (s.double()[:, :, None] * f.round() == p[:, None, :]).all(-1))
    what = f"two-level (s * f, f in {lo}..{hi}, s with {CLEARED_BITS} low mantissa bits cleared)"
    pick = first_valid_candidate(valid, what)  # the largest factor of the row's largest scale
    rows = torch.arange(len(p))
    return s[rows, pick], f[rows, pick].round().long()


__all__ = ["CLEARED_BITS", "INT4_GROUP_FACTORS", "clear_low_mantissa", "group_errors", "row_scales", "search_factors",
           "split_two_level", "two_level_scales"]
