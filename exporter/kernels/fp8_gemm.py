"""FP8 GEMM family: y = (a_e4m3 @ w_e4m3^T) * a_scale[m] * w_scale[n] + bias, a K loop of pure
E4M3 x E4M3 -> FP32 MMA (FP8 tensor cores: sm_89, sm_90) and one rescale in the epilogue.

    a         float8_e4m3fn [M, K]   activation operands (activation_quant.py)
    a_scale   float32 [M]            one scale per token
    weights, FP8:  codes float8_e4m3fn [N, K]
    weights, FP4:  codes uint8 [N, K / 2], FP4 codes (exporter/numerics/fp4.py) in int8_gemm's chunk
                   layout, and offset uint8 [N, K / SPAN], each group's exponent t - t_min per
                   SPAN channels (as int8_gemm's factors): the
                   E4M3 operands v * 2**t are built in registers with integer operations, four at
                   a time (swar.py, exporter/numerics/fp4_groups.py)
    w_scale   float32 [N];  bias float32 [N] or none;  y float16 / bfloat16 / float32 [M, N]

An FP4 code c becomes its operand byte as table(c & 7) + 8 (t - t_min), zero for magnitude
index 0, with the sign bit c & 8 moved to bit 7: a byte-permute table lookup and a few integer
operations per four elements. Bound: as int8_gemm, on the FP8 tensor cores.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from exporter.kernels.int8_gemm import (
    INTERPRETED,
    SPAN,
    PackedWeights,
    check_spans,
    default_tiles,
    pack_int4_chunks,
    per_span,
    unpack_int4_chunks,
)
from exporter.kernels.swar import fp4_to_e4m3, ptx
from exporter.kernels.tiles import Tiles, dense_dot_loop, grid_size, program_tile, store_rescaled
from exporter.numerics.fp4_groups import EXPONENTS, e4m3_byte_table, e4m3_operand, e4m3_table_words


@triton.jit
def fp4_e4m3_operand(index, negative, offset, TABLE: tl.constexpr):
    """The E4M3 operand of FP4 magnitude indices (int32) with their signs and group exponent
    offsets t - t_min: table byte + 8 offset, zero for index 0 (TABLE: fp4_groups.e4m3_byte_table)."""
    magnitude = ((TABLE >> (index.to(tl.int64) * 8)) & 0xFF).to(tl.int32) + offset * 8
    byte = tl.where(index == 0, 0, magnitude) | tl.where(negative, 128, 0)
    return byte.to(tl.uint8).to(tl.float8e4nv, bitcast=True)


@triton.jit
def fp4_operands(packed, low, high, TABLE: tl.constexpr, FP4_PTX: tl.constexpr):
    """The E4M3 operands of the low and high nibbles of FP4 codes [BN, SPAN] (uint8), with each
    row's exponent offsets low / high [BN, 1] (uint8)."""
    if INTERPRETED:
        codes = packed.to(tl.int32)
        low_operand = fp4_e4m3_operand(codes & 7, (codes & 8) != 0, low.to(tl.int32), TABLE)
        return low_operand, fp4_e4m3_operand((codes >> 4) & 7, (codes & 128) != 0, high.to(tl.int32), TABLE)
    low_bytes, high_bytes = tl.inline_asm_elementwise(FP4_PTX, "=r,=r,r,r,r", [packed, low, high],
                                                      dtype=(tl.uint8, tl.uint8), is_pure=True, pack=4)
    return low_bytes.to(tl.float8e4nv, bitcast=True), high_bytes.to(tl.float8e4nv, bitcast=True)


@triton.jit
def fp8_gemm_kernel(a_ptr, a_scale_ptr, w_ptr, offset_ptr, w_scale_ptr, bias_ptr, y_ptr, M, N, K,
                    W4: tl.constexpr, TABLE: tl.constexpr, FP4_PTX: tl.constexpr, HAS_BIAS: tl.constexpr,
                    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr):
    offs_m, offs_n, rows, cols = program_tile(M, N, BM, BN, GROUP_M)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    if W4:
        span = tl.arange(0, SPAN)
        a_ptrs = a_ptr + rows[:, None] * K + span[None, :]
        w_ptrs = w_ptr + cols[:, None] * (K // 2) + span[None, :]
        t_ptrs = offset_ptr + cols * (K // SPAN)
        for k0 in range(0, K, BK):
            for c in tl.static_range(BK // (2 * SPAN)):
                k = k0 + 2 * SPAN * c
                packed = tl.load(w_ptrs + k // 2)
                low = tl.load(t_ptrs + k // SPAN)[:, None]
                high = tl.load(t_ptrs + k // SPAN + 1)[:, None]
                w_low, w_high = fp4_operands(packed, low, high, TABLE, FP4_PTX)
                acc = tl.dot(tl.load(a_ptrs + k), tl.trans(w_low), acc)
                acc = tl.dot(tl.load(a_ptrs + k + SPAN), tl.trans(w_high), acc)
    else:
        acc = dense_dot_loop(a_ptr, w_ptr, rows, cols, K, acc, BK, False)
    store_rescaled(acc, a_scale_ptr, w_scale_ptr, bias_ptr, y_ptr, offs_m, offs_n, M, N, True, HAS_BIAS)


@dataclass(frozen=True)
class Fp8Weights(PackedWeights):
    """A Linear's weights for this family (layouts in the module docstring)."""

    offset: torch.Tensor | None = None  # FP4 only: t - t_min per group
    group_size: int = 0  # FP4 only
    fp4_kind: str = "e2m1"  # FP4 only

    @classmethod
    def fp4_from_codes(cls, codes: torch.Tensor, exponent: torch.Tensor, w_scale: torch.Tensor, group_size: int,
                       kind: str = "e2m1") -> Fp8Weights:
        """From FP4 codes uint8 [N, K] (one per byte), exponents t [N, K / group_size], row scales [N]."""
        packed = pack_int4_chunks(codes.to(torch.int8))
        offset = per_span(exponent.to(torch.int32) - EXPONENTS[kind][0], group_size)
        return cls(packed, w_scale.float().contiguous(), offset, group_size, kind)


    def operand(self) -> torch.Tensor:
        """The E4M3 operand [N, K] the kernel multiplies, as float32 (exact)."""
        if not self.four_bit:
            return self.codes.float()
        codes = unpack_int4_chunks(self.codes).to(torch.uint8) & 0xF
        exponent = self.offset.to(torch.int32) + EXPONENTS[self.fp4_kind][0]
        return e4m3_operand(codes, exponent, self.fp4_kind).view(torch.float8_e4m3fn).float()


def fp4_ptx(kind: str) -> str:
    return ptx(fp4_to_e4m3(e4m3_table_words(kind)))


def fp8_gemm(a: torch.Tensor, a_scale: torch.Tensor, weights: Fp8Weights, bias: torch.Tensor | None = None,
             out_dtype: torch.dtype = torch.float16, tiles: Tiles | None = None) -> torch.Tensor:
    m, k = a.shape
    t = tiles or default_tiles(m, k)
    if a.dtype != torch.float8_e4m3fn or a_scale.shape != (m,) or weights.k != k:
        raise ValueError("activations are float8_e4m3fn [M, K] with float32 scales [M], K as the weights'")
    if weights.four_bit:
        check_spans(k, weights.group_size, weights.n, weights.offset)
        if k % t.bk:
            raise ValueError(f"FP4 weights need the K step {t.bk} to divide K = {k}")
    y = torch.empty(m, weights.n, dtype=out_dtype, device=a.device)
    if m == 0:
        return y
    offset = weights.offset if weights.four_bit else weights.w_scale
    fp8_gemm_kernel[grid_size(m, weights.n, t.bm, t.bn)](
        a.contiguous(), a_scale, weights.codes.contiguous(), offset, weights.w_scale,
        bias if bias is not None else weights.w_scale, y, m, weights.n, k,
        W4=weights.four_bit, TABLE=e4m3_byte_table(weights.fp4_kind), FP4_PTX=fp4_ptx(weights.fp4_kind),
        HAS_BIAS=bias is not None, BM=t.bm, BN=t.bn, BK=t.bk, GROUP_M=t.group_m, num_warps=t.num_warps,
        num_stages=t.num_stages)
    return y


__all__ = ["Fp8Weights", "fp8_gemm", "fp8_gemm_kernel"]
