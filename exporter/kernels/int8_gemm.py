"""INT8 GEMM family: y = (a_codes @ w_int8^T) * a_scale[m] * w_scale[n] + bias, a K loop of pure
INT8 x INT8 -> INT32 MMA and one float rescale in the epilogue.

    a_codes   int8 [M, K]       activation codes (activation_quant.py), row-major
    a_scale   float32 [M]       one scale per token (dynamic, or the static table row of its timestep)
              or, for layers whose activations stay FP (adaLN's modulation), float16 [M, K] with no
              a_scale: the INT8 weight operand is converted to FP16 (exactly) for FP16 MMA
    weights, 8-bit:  codes int8 [N, K]; with FP16 activations also float8_e4m3fn [N, K] (the E4M3
                     operands of FP4 weights on power-of-two groups, exporter/kernels/linear.py),
                     converted to FP16 exactly like INT8 codes
    weights, 4-bit:  codes uint8 [N, K / 2], two's complement INT4 in the kernel's layout: K in
                     chunks of 2 SPAN channels, byte j of chunk c holding channel 2 SPAN c + j in
                     its low nibble and 2 SPAN c + SPAN + j in its high one (`pack_int4_chunks`);
                     factor uint8 [N, K / SPAN] in 1..16, each group's factor repeated for each of
                     its SPAN-channel spans (two-level scales,
                     exporter/numerics/two_level.py). The INT8 operands code * factor are built in
                     registers four at a time (swar.py): about one integer instruction each.
    w_scale   float32 [N]       the per-output-channel scale
    bias      float32 [N] or none; y float16 / bfloat16 / float32 [M, N]

The chunk layout lets each nibble half feed its own 8-bit MMA over SPAN channels with one factor
per column, so nothing is interleaved or reshaped in registers. For 4-bit weights K is a multiple
of 2 SPAN, the group a multiple of SPAN, and the K step BK divides K (no masks in the loop).
Factors stored per span (one byte per SPAN weights) are found with a shift, not a division.

Bound: the INT8 tensor cores (4,096 multiply-adds per clock per SM on an H100) when the weight
tile is reused over enough rows (BM); the 4-bit variant adds its few integer operations per
weight element per tile, spread over BM rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from exporter.kernels.swar import INT4_TIMES_FACTOR, ptx
from exporter.kernels.tiles import Tiles, dense_dot_loop, gemm_tiles, grid_size, program_tile, store_rescaled
from exporter.numerics import kernel_layout as layout

SPAN: tl.constexpr = tl.constexpr(layout.SPAN)
# Triton's interpreter runs no inline PTX: there the operands are built with Triton's own operations.
INTERPRETED: tl.constexpr = tl.constexpr(bool(triton.knobs.runtime.interpret))
INT4_PTX: tl.constexpr = tl.constexpr(ptx(INT4_TIMES_FACTOR))


@triton.jit
def int4_operands(packed, low, high):
    """The INT8 operands code * factor of the low and high nibbles of int8 codes [BN, SPAN], with
    each row's factors low / high [BN, 1] (int8)."""
    if INTERPRETED:
        return ((packed << 4) >> 4) * low, (packed >> 4) * high
    return tl.inline_asm_elementwise(INT4_PTX, "=r,=r,r,r,r", [packed, low, high], dtype=(tl.int8, tl.int8),
                                     is_pure=True, pack=4)


@triton.jit
def int8_gemm_kernel(a_ptr, a_scale_ptr, w_ptr, factor_ptr, w_scale_ptr, bias_ptr, y_ptr, M, N, K,
                     W4: tl.constexpr, A_FP16: tl.constexpr, HAS_BIAS: tl.constexpr,
                     BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr):
    offs_m, offs_n, rows, cols = program_tile(M, N, BM, BN, GROUP_M)
    acc = tl.zeros((BM, BN), dtype=tl.float32 if A_FP16 else tl.int32)
    if W4:
        span = tl.arange(0, SPAN)
        a_ptrs = a_ptr + rows[:, None] * K + span[None, :]
        w_ptrs = w_ptr + cols[:, None] * (K // 2) + span[None, :]
        f_ptrs = factor_ptr + cols * (K // SPAN)
        for k0 in range(0, K, BK):
            for c in tl.static_range(BK // (2 * SPAN)):
                k = k0 + 2 * SPAN * c
                packed = tl.load(w_ptrs + k // 2).to(tl.int8, bitcast=True)
                low = tl.load(f_ptrs + k // SPAN).to(tl.int8)[:, None]
                high = tl.load(f_ptrs + k // SPAN + 1).to(tl.int8)[:, None]
                w_low, w_high = int4_operands(packed, low, high)
                acc = tl.dot(tl.load(a_ptrs + k), tl.trans(w_low.to(tl.float16) if A_FP16 else w_low), acc)
                acc = tl.dot(tl.load(a_ptrs + k + SPAN), tl.trans(w_high.to(tl.float16) if A_FP16 else w_high), acc)
    else:
        acc = dense_dot_loop(a_ptr, w_ptr, rows, cols, K, acc, BK, A_FP16)
    store_rescaled(acc.to(tl.float32), a_scale_ptr, w_scale_ptr, bias_ptr, y_ptr, offs_m, offs_n, M, N,
                   not A_FP16, HAS_BIAS)


def pack_int4_chunks(q: torch.Tensor) -> torch.Tensor:
    """int8 codes [N, K] in [-8, 7] -> uint8 [N, K / 2] in the kernel's chunk layout."""
    n, k = q.shape
    chunks = (q.to(torch.int16) & 0xF).reshape(n, k // (2 * SPAN), 2, SPAN)
    return (chunks[:, :, 0] | (chunks[:, :, 1] << 4)).reshape(n, k // 2).to(torch.uint8)


def unpack_int4_chunks(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of pack_int4_chunks: uint8 [N, K / 2] -> int8 [N, K]."""
    n = packed.shape[0]
    p = packed.to(torch.int16).reshape(n, -1, 1, SPAN)
    nibbles = torch.cat([p & 0xF, p >> 4], dim=2).reshape(n, -1)
    return torch.where(nibbles >= 8, nibbles - 16, nibbles).to(torch.int8)


def per_span(group_values: torch.Tensor, group_size: int) -> torch.Tensor:
    """uint8 [N, K / group_size] -> [N, K / SPAN]: each group's value for each of its spans."""
    if group_size % SPAN.value:
        raise ValueError(f"4-bit weight groups must be a multiple of {SPAN.value} channels, not {group_size}")
    return group_values.to(torch.uint8).repeat_interleave(group_size // SPAN.value, dim=1).contiguous()


def check_spans(k: int, group_size: int, n: int, per_span_values: torch.Tensor) -> None:
    span = SPAN.value
    shapes = per_span_values.shape == (n, k // span)
    if k % (2 * span) or group_size <= 0 or group_size % span or k % group_size or not shapes:
        raise ValueError(f"4-bit weights need K a multiple of {2 * span}, a group that is a multiple of {span} "
                         f"dividing K, and one group value per {span} channels [N, K / {span}]; got K {k}, group "
                         f"{group_size}, values {tuple(per_span_values.shape)}")


@dataclass(frozen=True)
class PackedWeights:
    """Codes [N, K] (8-bit) or [N, K / 2] (4-bit, chunk layout) and the per-row scale [N]."""

    codes: torch.Tensor
    w_scale: torch.Tensor

    @property
    def four_bit(self) -> bool:
        """4-bit codes are packed two per uint8; 8-bit ones are int8 or float8_e4m3fn."""
        return self.codes.dtype == torch.uint8

    @property
    def n(self) -> int:
        return self.codes.shape[0]

    @property
    def k(self) -> int:
        return self.codes.shape[1] * (2 if self.four_bit else 1)


@dataclass(frozen=True)
class Int8Weights(PackedWeights):
    """A Linear's weights for this family (layouts in the module docstring)."""

    factor: torch.Tensor | None = None  # 4-bit only
    group_size: int = 0  # 4-bit only

    @classmethod
    def four_bit_from_codes(cls, q: torch.Tensor, factor: torch.Tensor, w_scale: torch.Tensor,
                            group_size: int) -> Int8Weights:
        """From INT4 codes int8 [N, K], factors [N, K / group_size] and row scales [N]."""
        return cls(pack_int4_chunks(q), w_scale.float().contiguous(), per_span(factor, group_size), group_size)

    def operand(self) -> torch.Tensor:
        """The INT8 operand [N, K] the kernel multiplies (exact)."""
        if not self.four_bit:
            return self.codes.to(torch.int32)
        factor = self.factor.to(torch.int32).repeat_interleave(SPAN.value, dim=1)
        return unpack_int4_chunks(self.codes).to(torch.int32) * factor


def default_tiles(m: int, k: int) -> Tiles:
    return gemm_tiles(m, 128 if k % 128 == 0 else 2 * SPAN.value)


def check_operands(a_codes: torch.Tensor, a_scale: torch.Tensor | None, weights: Int8Weights, tiles: Tiles) -> None:
    m, k = a_codes.shape
    codes = (a_codes.dtype == torch.int8 and a_scale is not None and a_scale.shape == (m,)
             and a_scale.dtype == torch.float32)
    if not codes and not (a_codes.dtype == torch.float16 and a_scale is None):
        raise ValueError("activations are int8 codes [M, K] with float32 scales [M], or float16 [M, K] alone")
    if weights.k != k:
        raise ValueError(f"weights take K = {weights.k}, activations have {k}")
    if tiles.bk % (2 * SPAN.value) or (weights.four_bit and k % tiles.bk):
        raise ValueError(f"the K step {tiles.bk} must be a multiple of {2 * SPAN.value} (and divide K for 4-bit "
                         "weights)")
    if weights.four_bit:
        check_spans(k, weights.group_size, weights.n, weights.factor)


def int8_gemm(a_codes: torch.Tensor, a_scale: torch.Tensor | None, weights: Int8Weights,
              bias: torch.Tensor | None = None,
              out_dtype: torch.dtype = torch.float16, tiles: Tiles | None = None) -> torch.Tensor:
    m, k = a_codes.shape
    t = tiles or default_tiles(m, k)
    check_operands(a_codes, a_scale, weights, t)
    n = weights.n
    y = torch.empty(m, n, dtype=out_dtype, device=a_codes.device)
    if m == 0:
        return y
    factor = weights.factor if weights.four_bit else weights.w_scale
    int8_gemm_kernel[grid_size(m, n, t.bm, t.bn)](
        a_codes.contiguous(), weights.w_scale if a_scale is None else a_scale, weights.codes.contiguous(), factor,
        weights.w_scale,
        bias if bias is not None else weights.w_scale, y, m, n, k,
        W4=weights.four_bit, A_FP16=a_scale is None, HAS_BIAS=bias is not None,
        BM=t.bm, BN=t.bn, BK=t.bk, GROUP_M=t.group_m, num_warps=t.num_warps, num_stages=t.num_stages)
    return y


__all__ = ["SPAN", "Int8Weights", "PackedWeights", "Tiles", "check_spans", "default_tiles", "int8_gemm",
           "int8_gemm_kernel", "pack_int4_chunks", "per_span"]
