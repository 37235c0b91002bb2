"""Activation quantizer: each token (row) of x [M, K] to the 8-bit operands and the one float
scale per row that the GEMM families take.

    x        float32 / float16 / bfloat16 [M, K], row-major
    INT8     codes int8 [M, K] = clamp(round(x / s), -128, 127), ties to even
    FP8      codes float8_e4m3fn [M, K] = e4m3(clamp(x / s, -448, 448)), nearest, ties to even
             (rounded in float32 first, so the conversion itself is exact)
    FP4      float8_e4m3fn [M, K]: E2M1 on fine groups of GROUP channels as exact E4M3 operands
             (exporter/numerics/fp4_fine_groups.py)
    FP4 Hadamard  the same of x with each group rotated first, x H_GROUP (exporter/numerics/hadamard.py's
             butterflies, in the same order), for weights stored as W H
    INT4     int8 [M, K] (static only): UINT4 on two-level group scales as exact INT8 operands
             (q - z) f, q = clamp(round(x / (s f) + z), 0, 15), with s the row's scale and f, z
             the group's bytes in `groups` [buckets, K / GROUP, 2]
             (exporter/numerics/two_level_activations.py)
    scale    float32 [M]: dynamic, max|x| / qmax of the row (at least TINY); static, the row of
             the per-timestep table `table[bucket[row // rows_per_sample]]` (INT8, FP8, INT4)

The same arithmetic as the simulated quantizers (exporter/quant/qlinear.py, fp4_fine_groups.py,
hadamard.py), division rounded to nearest as there, so the codes agree exactly. One program per
row walks the row in steps of BLOCK channels, reading it twice for dynamic scales (the second
time from cache; the rotation, 5 butterfly stages of one add each per element, is done twice).
Bound: memory (x read once from DRAM, one byte written per element); with the rotation, likely
instruction issue (about 30 more instructions per element over the two passes, RESULTS.md).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from exporter.contract.kernel_api import QUANT_FORMAT, QUANT_MODES
from exporter.numerics import fp4_fine_groups
from exporter.numerics.fp4_groups import EXPONENTS, TINY
from exporter.numerics.hadamard import norm
from exporter.numerics.kernel_layout import FP4_GROUP

FORMATS = QUANT_FORMAT.numbers()  # the launcher's numbering
INT8: tl.constexpr = tl.constexpr(FORMATS["int8"])
FP8: tl.constexpr = tl.constexpr(FORMATS["fp8"])
FP4: tl.constexpr = tl.constexpr(FORMATS["fp4"])
INT4: tl.constexpr = tl.constexpr(FORMATS["int4"])
ROTATED = {"fp4_hadamard": "fp4"}  # formats that rotate each group first, and the format they then quantize to
STATIC_ONLY = tuple(fmt for fmt, modes in QUANT_MODES.items() if modes == ("static",))
DYNAMIC_ONLY = tuple(fmt for fmt, modes in QUANT_MODES.items() if modes == ("dynamic",))
INTEGER_CODES = ("int8", "int4")  # the formats whose codes are int8; the others' are float8_e4m3fn
BLOCK = 1024  # channels per step along a row
TOP = 2.0 ** EXPONENTS[fp4_fine_groups.KIND][1]  # the row's largest group scale, over s
QMAX = {"int8": 127.0, "fp8": 448.0, "fp4": fp4_fine_groups.FORMAT.qmax * TOP, "int4": 15.0}  # int4: UINT4
ROUNDING = 12582912.0  # 1.5 * 2**23: adding and subtracting it rounds |y| < 2**22 to an integer, ties to even


@triton.jit
def e2m1_index(magnitude):
    """Nearest E2M1 magnitude index, ties to the even index (exporter/numerics/fp4.py's thresholds)."""
    return ((magnitude > 0.25).to(tl.int32) + (magnitude >= 0.75).to(tl.int32) + (magnitude > 1.25).to(tl.int32)
            + (magnitude >= 1.75).to(tl.int32) + (magnitude > 2.5).to(tl.int32) + (magnitude >= 3.5).to(tl.int32)
            + (magnitude > 5.0).to(tl.int32))


@triton.jit
def e2m1_value(index):
    return tl.where(index < 2, 0.5 * index, power_of_two((index >> 1) - 1) * (1.0 + 0.5 * (index & 1)))


@triton.jit
def power_of_two(t):
    return ((t + 127) << 23).to(tl.float32, bitcast=True)


@triton.jit
def ceil_log2(ratio):
    bits = ratio.to(tl.int32, bitcast=True)
    return ((bits >> 23) & 0xFF) - 127 + ((bits & 0x7FFFFF) != 0).to(tl.int32)


@triton.jit
def fine_multiplier(ratio, MID: tl.constexpr, HIGH: tl.constexpr, LOG2_LOWEST: tl.constexpr):
    """The smallest of fp4_fine_groups.MULTIPLIERS >= ratio (at most 1; the lowest one, 2**LOG2_LOWEST,
    when none is that small): MID, HIGH or 2 times 2**(e - 1) for ratio in (2**(e - 1), 2**e]. No
    table and no loop: a few instructions per group."""
    half = power_of_two(tl.maximum(ceil_log2(ratio), LOG2_LOWEST) - 1)
    mu = tl.where(ratio <= MID * half, MID * half, tl.where(ratio <= HIGH * half, HIGH * half, 2.0 * half))
    lowest = power_of_two(tl.full(ratio.shape, LOG2_LOWEST, tl.int32))
    return tl.where(ratio > 0, tl.maximum(mu, lowest), lowest)


@triton.jit
def round_to_e4m3(y, ROUNDING: tl.constexpr):
    """y (|y| <= 448) rounded to the nearest E4M3 number, ties to even, still as float32: adding and
    subtracting 1.5 * 2**(e + 20) keeps 3 bits below the leading one (e >= -6: the subnormal step)."""
    exponent = tl.maximum(((y.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127, -6)
    magic = power_of_two(exponent - 3) * ROUNDING
    return (y + magic) - magic


@triton.jit
def hadamard_groups(x, GROUPS: tl.constexpr, GROUP: tl.constexpr, NORM: tl.constexpr):
    """x [GROUPS * GROUP] with each group times H_GROUP: butterflies of stride 1, 2, ..., GROUP / 2,
    (u, v) -> (u + v, u - v), then times NORM (float32 1 / sqrt(GROUP))."""
    side = tl.arange(0, 2)[None, :, None]
    for stage in tl.static_range(GROUP.bit_length() - 1):
        pairs = tl.reshape(x, (GROUPS * GROUP // (2 << stage), 2, 1 << stage))
        total = tl.sum(pairs, axis=1)[:, None, :]  # u + v: one add
        difference = tl.sum(tl.where(side == 0, pairs, -pairs), axis=1)[:, None, :]  # u + (-v)
        x = tl.reshape(tl.where(side == 0, total, difference), (GROUPS * GROUP,))
    return x * NORM


@triton.jit
def load_block(x_row, k0, offs, K, HADAMARD: tl.constexpr, BLOCK: tl.constexpr, GROUP: tl.constexpr,
               NORM: tl.constexpr):
    """BLOCK channels of the row from k0 in float32 (zero past K), each group rotated when HADAMARD."""
    x = tl.load(x_row + k0 + offs, mask=offs < K - k0, other=0.0).to(tl.float32)
    if HADAMARD:
        x = hadamard_groups(x, BLOCK // GROUP, GROUP, NORM)
    return x


@triton.jit
def quantize_rows_kernel(x_ptr, codes_ptr, scale_ptr, table_ptr, bucket_ptr, groups_ptr, K, rows_per_sample, table_row,
                         FORMAT: tl.constexpr, STATIC: tl.constexpr, QMAX: tl.constexpr, BLOCK: tl.constexpr,
                         GROUP: tl.constexpr, TOP: tl.constexpr, REACH: tl.constexpr, MID: tl.constexpr,
                         HIGH: tl.constexpr, LOG2_LOWEST: tl.constexpr, TINY: tl.constexpr,
                         ROUNDING: tl.constexpr, HADAMARD: tl.constexpr, NORM: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    x_row = x_ptr + row * K
    if STATIC:
        bucket = tl.load(bucket_ptr + row // rows_per_sample)
        scale = tl.load(table_ptr + bucket * table_row)
        row_max = scale
        group_row = groups_ptr + bucket * (K // GROUP) * 2
    else:
        row_max = tl.zeros((), dtype=tl.float32)
        for k0 in range(0, K, BLOCK):
            x = load_block(x_row, k0, offs, K, HADAMARD, BLOCK, GROUP, NORM)
            row_max = tl.maximum(row_max, tl.max(tl.abs(x), axis=0))
        scale = tl.maximum(tl.math.div_rn(row_max, QMAX), TINY)
    for k0 in range(0, K, BLOCK):
        inside = offs < K - k0
        x = load_block(x_row, k0, offs, K, HADAMARD, BLOCK, GROUP, NORM)
        if FORMAT == FP4:
            grouped = tl.reshape(x, (BLOCK // GROUP, GROUP))
            ratio = tl.math.div_rn(tl.max(tl.abs(grouped), axis=1), tl.maximum(row_max, TINY))
            group_top = fine_multiplier(ratio * REACH, MID, HIGH, LOG2_LOWEST) * TOP  # exact: m 2**t
            y = tl.math.div_rn(grouped, (scale * group_top)[:, None])
            index = e2m1_index(tl.abs(y))
            value = e2m1_value(index) * group_top[:, None]  # exact in E4M3, so the conversion is too
            codes = tl.reshape(tl.where((y < 0) & (index > 0), -value, value).to(tl.float8e4nv), (BLOCK,))
        elif FORMAT == INT4:
            group = k0 // GROUP + tl.arange(0, BLOCK // GROUP)
            present = group < K // GROUP
            factor = tl.load(group_row + 2 * group, mask=present, other=1).to(tl.int32)[:, None]
            zero = tl.load(group_row + 2 * group + 1, mask=present, other=0).to(tl.int32)[:, None]
            grouped = tl.reshape(x, (BLOCK // GROUP, GROUP))
            y = tl.math.div_rn(grouped, scale * factor.to(tl.float32)) + zero.to(tl.float32)  # s f: exact
            q = tl.minimum(tl.maximum((y + ROUNDING) - ROUNDING, 0.0), QMAX).to(tl.int32)
            codes = tl.reshape(((q - zero) * factor).to(tl.int8), (BLOCK,))
        else:
            y = tl.minimum(tl.maximum(tl.math.div_rn(x, scale), -QMAX - (FORMAT == INT8)), QMAX)
            if FORMAT == INT8:
                codes = ((y + ROUNDING) - ROUNDING).to(tl.int8)
            else:
                codes = round_to_e4m3(y, ROUNDING).to(tl.float8e4nv)
        tl.store(codes_ptr + row * K + k0 + offs, codes, mask=inside)
    tl.store(scale_ptr + row, scale)


def constants(fmt: str, static: bool, group_size: int) -> dict[str, object]:
    """quantize_rows_kernel's compile-time arguments for a format."""
    mid, high = fp4_fine_groups.MANTISSAS[1:]
    quantized = ROTATED.get(fmt, fmt)
    return {"FORMAT": FORMATS[quantized], "STATIC": static, "QMAX": QMAX[quantized], "BLOCK": BLOCK,
            "GROUP": group_size, "TOP": TOP, "REACH": fp4_fine_groups.REACH, "MID": mid, "HIGH": high,
            "LOG2_LOWEST": int(math.log2(fp4_fine_groups.MULTIPLIERS[-1])),
            "TINY": TINY, "ROUNDING": ROUNDING, "HADAMARD": fmt in ROTATED, "NORM": float(norm(group_size))}


def quantize_rows(x: torch.Tensor, fmt: str, table: torch.Tensor | None = None, bucket: torch.Tensor | None = None,
                  group_size: int = FP4_GROUP, groups: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes [M, K], scale float32 [M]) of x [M, K]; ``table`` [buckets] and ``bucket`` [samples]
    (each sample's table row, M a multiple of the samples) make the scales static; ``groups``
    uint8 [buckets, K / group_size, 2] holds INT4's factor and zero point of each group."""
    m, k = x.shape
    static = table is not None
    if (fmt not in FORMATS or (static and fmt in DYNAMIC_ONLY) or (not static and fmt in STATIC_ONLY)
            or (static and (bucket is None or m % max(len(bucket), 1)))):
        raise ValueError(f"format {fmt}: int8, fp8, fp4 or fp4_hadamard (dynamic only) or int4 (static only); "
                         "static scales need each sample's bucket")
    grouped = ROTATED.get(fmt, fmt) in ("fp4", "int4")
    if grouped and (k % group_size or BLOCK % group_size or (fmt in ROTATED and group_size & (group_size - 1))):
        raise ValueError(f"groups of {group_size} do not divide {k} channels (a power of two to rotate)")
    if fmt == "int4" and (groups is None or tuple(groups.shape) != (len(table), k // group_size, 2)):
        raise ValueError(f"INT4 activations need each group's factor and zero point [{len(table)}, "
                         f"{k // group_size}, 2]")
    codes = torch.empty(m, k, dtype=torch.int8 if fmt in INTEGER_CODES else torch.float8_e4m3fn, device=x.device)
    scale = torch.empty(m, dtype=torch.float32, device=x.device)
    if m == 0:
        return codes, scale
    quantize_rows_kernel[(m,)](
        x.contiguous(), codes, scale, table if static else scale, bucket if static else scale,
        groups.contiguous() if groups is not None else scale, k,
        m // len(bucket) if static else 1, 1, **constants(fmt, static, group_size))
    return codes, scale


__all__ = ["constants", "quantize_rows", "quantize_rows_kernel"]
