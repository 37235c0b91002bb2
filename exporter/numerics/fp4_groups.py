"""FP4 with power-of-two group scales: the deployable FP4 grid, whose scaled values are exact
FP8 E4M3 operands (the shared-exponent idea of the OCP MX formats, relative to a float per row).

    x[r, k] = s[r] * 2**t[r, g] * v[r, k],      g = k // group_size
    v   a value of the row's FP4 format (exporter/numerics/fp4.py)
    t   an integer in the format's EXPONENTS range
    s   float32 per row: a weight's output channel, an activation's token

For every t in range, v * 2**t is zero or a normal E4M3 number, so a GEMM multiplies the E4M3
operands a[m, k] * w[n, k] exactly on FP8 tensor cores and applies s_a[m] * s_w[n] once in its
epilogue. The row's largest group takes t_max: s = amax(row) / (qmax * 2**t_max); a group whose
largest magnitude is amax(g) takes the smallest t at which it does not saturate,
t = t_max + ceil(log2(amax(g) / amax(row))), clamped to the range (a group more than
2**(t_max - t_min) times smaller than its row's largest is quantized on the smallest scale).

An operand byte is built from the FP4 code with integer operations only: the E4M3 byte of v at
t_min (`e4m3_bytes`), plus 8 (t - t_min) (t - t_min steps of its exponent field; zero stays
zero), plus the sign bit (`e4m3_operand`). Kernels store t as that offset, t - t_min, in a byte.

Weights (calibration, the `fp4` recipe; WeightSpec scales "pow2-groups"): s[n] is the row's
largest group scale (min/max, or clip-searched) mapped onto t_max, then each group's t is chosen
by exhaustive search over the EXPONENTS range for the lowest sum |w - s 2**t q(w / (s 2**t))|^p
(p = 2.4, as two_level.search_factors). QuantLinear's float32 ``w_scale`` [N, G] holds the
product s[n] * 2**t[n, g], exact in float32; ``split_pow2`` recovers s and t from it.
"""

from __future__ import annotations

import torch

from exporter.numerics.fp4 import FP4_FORMATS, MAGNITUDES, Fp4Format
from exporter.numerics.primitives import (
    SMALLEST_SCALE,
    choose_qparams,
    fake_quantize,
    first_valid_candidate,
    group_view,
    search_clip_ratio,
)

# (t_min, t_max): every nonzero magnitude times 2**t lies in E4M3's normal range [2**-6, 448].
EXPONENTS = {"e2m1": (-5, 6), "e3m0": (-4, 4), "e1m2": (-4, 8)}

TINY = SMALLEST_SCALE  # smallest row scale, as for integer formats


def e4m3_bytes(kind: str) -> tuple[int, ...]:
    """The E4M3 byte of each magnitude index of an FP4 format at t = t_min."""
    scaled = torch.tensor(MAGNITUDES[kind]) * 2.0 ** EXPONENTS[kind][0]
    return tuple(scaled.to(torch.float8_e4m3fn).view(torch.uint8).tolist())


def e4m3_byte_table(kind: str) -> int:
    """e4m3_bytes packed little-endian into one integer: byte i at bits [8 i, 8 i + 8)."""
    return sum(b << (8 * i) for i, b in enumerate(e4m3_bytes(kind)))


def e4m3_table_words(kind: str) -> tuple[int, int]:
    """e4m3_byte_table as two 32-bit words: indices 0-3, indices 4-7."""
    table = e4m3_byte_table(kind)
    return table & 0xFFFFFFFF, table >> 32


def _ceil_log2(ratio: torch.Tensor) -> torch.Tensor:
    """ceil(log2(ratio)) exactly, for ratio > 0 (frexp: ratio = m 2**e, 0.5 <= m < 1)."""
    mantissa, exponent = torch.frexp(ratio)
    return torch.where(mantissa == 0.5, exponent - 1, exponent)


def group_exponents(group_amax: torch.Tensor, row_amax: torch.Tensor, kind: str) -> torch.Tensor:
    """t [R, G] int32 of groups with largest magnitudes group_amax [R, G] in rows with row_amax [R]."""
    t_min, t_max = EXPONENTS[kind]
    ratio = group_amax / row_amax.clamp_min(TINY)[:, None]
    t = torch.where(ratio > 0, t_max + _ceil_log2(ratio.clamp_min(2.0**-126)), t_min)
    return t.clamp(t_min, t_max).to(torch.int32)


def row_scale(row_amax: torch.Tensor, kind: str) -> torch.Tensor:
    fmt = Fp4Format(kind)
    return (row_amax.float() / (fmt.qmax * 2.0 ** EXPONENTS[kind][1])).clamp_min(TINY)


def quantize(x: torch.Tensor, group_size: int, kind: str = "e2m1") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Min/max quantization of rows x [R, K] (K a multiple of group_size) to the grid above:
    FP4 codes uint8 [R, K] (exporter/numerics/fp4.py's encoding), t int32 [R, K / group_size] and
    s float32 [R]."""
    fmt = Fp4Format(kind)
    r, k = x.shape
    grouped = x.float().reshape(r, k // group_size, group_size)
    group_amax = grouped.abs().amax(-1)
    t = group_exponents(group_amax, group_amax.amax(-1), kind)
    s = row_scale(group_amax.amax(-1), kind)
    step = s[:, None] * torch.exp2(t.float())
    codes = fmt.encode(grouped / step[..., None])
    return codes.reshape(r, k), t, s


def dequantize(codes: torch.Tensor, t: torch.Tensor, s: torch.Tensor, kind: str = "e2m1") -> torch.Tensor:
    r, k = codes.shape
    values = Fp4Format(kind).decode(codes).reshape(r, t.shape[1], -1)
    return (values * (s[:, None] * torch.exp2(t.float()))[..., None]).reshape(r, k)


def e4m3_operand(codes: torch.Tensor, t: torch.Tensor, kind: str = "e2m1") -> torch.Tensor:
    """The E4M3 operand bytes uint8 [R, K] of FP4 codes [R, K] with group exponents t [R, G]:
    v * 2**t exactly, as the kernels build it."""
    k = codes.shape[1]
    c = codes.to(torch.int32)
    index = c & 7
    table = torch.tensor(e4m3_bytes(kind), dtype=torch.int32)
    shift = ((t.to(torch.int32) - EXPONENTS[kind][0]) * 8).repeat_interleave(k // t.shape[1], dim=1)
    magnitude = torch.where(index == 0, 0, table[index] + shift)
    return (magnitude | ((c & 8) << 4)).to(torch.uint8)


def row_scales(w: torch.Tensor, group_size: int, kind: str, clip_search: bool = False) -> torch.Tensor:
    """s [N] of a weight [N, K]: the row's largest FP4 group scale (min/max, or clip-searched),
    divided by 2**t_max so that the largest group takes t_max (as ``row_scale`` maps a row maximum)."""
    fmt = Fp4Format(kind)
    ratio = search_clip_ratio(w, fmt, group_size) if clip_search else 1.0
    scale, _ = choose_qparams(w, fmt, group_size, clip_ratio=ratio)
    return (scale.amax(-1) / 2.0 ** EXPONENTS[kind][1]).clamp_min(TINY)


def group_errors(w: torch.Tensor, row_scale: torch.Tensor, group_size: int, kind: str,
                 p: float = 2.4) -> torch.Tensor:
    """[T, N, G]: sum over each group of |w - s 2**t q|^p for every t = t_max, t_max - 1, ..., t_min
    (descending: index i is t_max - i)."""
    fmt = Fp4Format(kind)
    t_min, t_max = EXPONENTS[kind]
    g = group_view(w.detach().float(), group_size)  # [N, G, g]
    steps = torch.exp2(torch.arange(t_max, t_min - 1, -1, dtype=torch.float32))
    chunk = max(1, (1 << 24) // max(1, g.numel()))  # exponents evaluated at once, bounded memory
    errors = []
    for part in steps.split(chunk):
        scale = row_scale.float()[None, :, None, None] * part[:, None, None, None]  # exact: s * 2**t
        errors.append((fmt.round(g / scale) * scale - g).abs().pow(p).sum(-1))
    return torch.cat(errors)


def search_exponents(w: torch.Tensor, row_scale: torch.Tensor, group_size: int, kind: str,
                     p: float = 2.4) -> torch.Tensor:
    """t [N, G] int32 in the EXPONENTS range minimising each group's Lp error; among equals, the largest."""
    best = group_errors(w, row_scale, group_size, kind, p).argmin(0)  # first minimum: the largest t
    return (EXPONENTS[kind][1] - best).to(torch.int32)


def pow2_scales(w: torch.Tensor, group_size: int, kind: str, clip_search: bool = False) -> torch.Tensor:
    """The per-group scale [N, G] = s[:, None] * 2**t of a weight [N, K] (round-to-nearest)."""
    s = row_scales(w, group_size, kind, clip_search)
    return s[:, None] * torch.exp2(search_exponents(w, s, group_size, kind).float())


def select_pow2_format(w: torch.Tensor, group_size: int, clip_search: bool = True,
                       candidates: tuple[Fp4Format, ...] = FP4_FORMATS) -> tuple[Fp4Format, dict[str, float]]:
    """HQ-DiT's per-layer format choice on this grid: the FP4 format whose round-to-nearest
    power-of-two-group quantization of ``w`` has the lowest squared error; and each candidate's error."""
    errors = {}
    for fmt in candidates:
        scale = pow2_scales(w, group_size, fmt.kind, clip_search)
        errors[fmt.name] = float((fake_quantize(w, scale, torch.zeros_like(scale), fmt, group_size) - w).pow(2).mean())
    best = min(candidates, key=lambda f: errors[f.name])
    return best, errors


def split_pow2(w_scale: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(s [N] float32, t [N, G] int32) with s[:, None] * 2**t == w_scale exactly and t in the
    format's EXPONENTS range; ValueError if no such pair exists.

    Where several exist (a row's scales span less than the range), the one whose largest t is
    t_max, as calibration maps a row; where s would then be inexact (below float32's normal
    range), the next largest."""
    if w_scale.dim() != 2 or w_scale.dtype != torch.float32:
        raise ValueError(f"power-of-two group scales are float32 [N, groups], got {w_scale.dtype} "
                         f"{tuple(w_scale.shape)}")
    t_min, t_max = EXPONENTS[kind]
    p = w_scale.double()
    tops = torch.arange(t_max, t_min - 1, -1, dtype=torch.float64)  # candidate t of the row's largest scale
    s = (p.amax(1, keepdim=True) / torch.exp2(tops)).float()  # [N, T], candidate row scales
    ratio = p[:, None, :] / s.double()[:, :, None]  # [N, T, G]
    mantissa, exponent = torch.frexp(ratio)
    t = (exponent - 1).double()  # ratio = 2**t exactly when its mantissa is 0.5
    valid = ((s > 0) & torch.isfinite(s) & (s.double() * torch.exp2(tops) == p.amax(1, keepdim=True))
             & ((mantissa == 0.5) & (t >= t_min) & (t <= t_max)).all(-1)
             & (s[:, :, None] * torch.exp2(t.float()) == w_scale[:, None, :]).all(-1))
    what = f"FP4 power-of-two groups (s * 2**t, t in {t_min}..{t_max} for {kind})"
    pick = first_valid_candidate(valid, what)  # the largest t of the row's largest scale
    rows = torch.arange(len(p))
    return s[rows, pick], t[rows, pick].to(torch.int32)
