"""FP4 with power-of-two group scales: the deployable FP4 grid, whose scaled values are exact
FP8 E4M3 operands (the shared-exponent idea of the OCP MX formats, relative to a float per row).

    x[r, k] = s[r] * 2**t[r, g] * v[r, k],      g = k // group_size
    v   a value of the row's FP4 format (exporter/quant/fp4.py)
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
"""

from __future__ import annotations

import torch

from exporter.quant.fp4 import MAGNITUDES, Fp4Format

# (t_min, t_max): every nonzero magnitude times 2**t lies in E4M3's normal range [2**-6, 448].
EXPONENTS = {"e2m1": (-5, 6), "e3m0": (-4, 4), "e1m2": (-4, 8)}

TINY = torch.finfo(torch.float32).tiny * 2**24  # smallest row scale, as for integer formats


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
    FP4 codes uint8 [R, K] (exporter/quant/fp4.py's encoding), t int32 [R, K / group_size] and
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
