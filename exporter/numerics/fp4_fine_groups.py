"""E2M1 activations on fine group scales: the deployable W4A4 FP4 activation grid, finer than
power-of-two groups (exporter/numerics/fp4_groups.py) at the same cost in the GEMM.

    x[r, k] = s[r] * 2**t_max * mu[j] * v[r, k],      j = level[r, k // group_size]
    v    an E2M1 value;  s = amax(row) / (6 * 2**t_max) per token, as fp4_groups.row_scale
    mu   MULTIPLIERS, descending from 1: every m * 2**(t - t_max) with m in {1, 1.125, ..., 1.875}
         and t in the E2M1 EXPONENTS range for which v * m * 2**t is an exact E4M3 number for
         every E2M1 value v: m in {1, 1.25, 1.5}

A group takes the smallest multiplier that puts its maximum at most at CLIP_AT = 6.5: mu[j] >=
(amax(g) / amax(row)) * 6/6.5, so the maximum rounds down to E2M1's largest value 6 by at most
0.5, a quarter of E2M1's top step. Letting the maximum clip puts the group, on average, closer to
E2M1's uneven grid: on the embedded model's samples (tools/fidelity_table.py, 200 seeds) clipping
at 6.5 to 6.6 keeps the most PSNR against FP (31.9-32.0 dB), against 30.9 at 6 (no clipping),
31.6 at 6.4, 31.8 at 6.75, 31.4 at 7 and 28.5 at 7.5. Ratio and product
are rounded once each, in float32, by every implementation (PyTorch, ONNX, the Triton kernel),
so they all choose the same multipliers. The activation quantizer writes the E4M3 operand
v * m * 2**t itself, so the FP8 GEMM does not care which multipliers exist.
"""

from __future__ import annotations

import numpy as np
import torch

from exporter.numerics.fp4 import MAGNITUDES, Fp4Format
from exporter.numerics.fp4_groups import EXPONENTS, TINY, row_scale

KIND = "e2m1"
FORMAT = Fp4Format(KIND)
MANTISSA_BITS = 3  # E4M3's


def _exact_in_e4m3(values: torch.Tensor) -> bool:
    return bool(torch.equal(values.to(torch.float8_e4m3fn).float(), values)) and float(values.max()) <= 448.0


def _multipliers() -> tuple[float, ...]:
    t_min, t_max = EXPONENTS[KIND]
    magnitudes = torch.tensor(MAGNITUDES[KIND][1:])
    found = {m * 2.0 ** (t - t_max)
             for t in range(t_min, t_max + 1)
             for m in (1 + i / 2**MANTISSA_BITS for i in range(2**MANTISSA_BITS))
             if m * 2.0**t <= 2.0**t_max and _exact_in_e4m3(magnitudes * m * 2.0**t)}
    return tuple(sorted(found, reverse=True))


MULTIPLIERS = _multipliers()
CLIP_AT = 6.5  # a group's maximum over its step lands at most here, and clips to 6
REACH = float(np.float32(6 / CLIP_AT))
_MU, _REACH = torch.tensor(MULTIPLIERS), torch.tensor(REACH)
_STEPS = _MU * 2.0 ** EXPONENTS[KIND][1]  # exact: m 2**t
MANTISSAS = tuple(sorted({float(torch.frexp(torch.tensor(mu)).mantissa) * 2 for mu in MULTIPLIERS}))


def group_levels(group_amax: torch.Tensor, row_amax: torch.Tensor) -> torch.Tensor:
    """j [R, G] int32: the index in MULTIPLIERS of the smallest multiplier >= amax(g) / amax(row) * 6 / CLIP_AT
    (the last, smallest, when none is that small)."""
    reach = group_amax.float() / row_amax.float().clamp_min(TINY)[:, None] * _REACH.to(group_amax.device)
    return (_MU[1:].to(group_amax.device) >= reach[..., None]).sum(-1).to(torch.int32)


def steps(level: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """[R, G] float32: each group's scale s * (2**t_max * mu), the product rounded once as the kernel does."""
    return s[:, None] * _STEPS.to(s.device)[level.long()]


def quantize(x: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """E2M1 codes uint8 [R, K] (exporter/numerics/fp4.py's encoding), levels int32 [R, K / group_size]
    and s float32 [R] of rows x [R, K]."""
    r, k = x.shape
    grouped = x.float().reshape(r, k // group_size, group_size)
    group_amax = grouped.abs().amax(-1)
    row_amax = group_amax.amax(-1)
    s = row_scale(row_amax, KIND)
    level = group_levels(group_amax, row_amax)
    codes = FORMAT.encode(grouped / steps(level, s)[..., None])
    return codes.reshape(r, k), level, s


def dequantize(codes: torch.Tensor, level: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    r, k = codes.shape
    values = FORMAT.decode(codes).reshape(r, level.shape[1], -1)
    return (values * steps(level, s)[..., None]).reshape(r, k)


def e4m3_operand(codes: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
    """The E4M3 operand bytes uint8 [R, K]: v * 2**t_max * mu, exactly (dequantize without s)."""
    operand = dequantize(codes, level, torch.ones(len(codes), device=codes.device))
    return operand.to(torch.float8_e4m3fn).view(torch.uint8)
