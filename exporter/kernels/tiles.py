"""Pieces every GEMM kernel shares: the order in which programs visit output tiles, and the
epilogue that applies the one float rescale of a deployable GEMM."""

from __future__ import annotations

from dataclasses import dataclass

import triton
import triton.language as tl

LARGE_TILES_ABOVE = 128  # GEMMs with more rows (M) than this take the large tiles


@dataclass(frozen=True)
class Tiles:
    bm: int
    bn: int
    bk: int
    group_m: int = 8
    num_warps: int = 4
    num_stages: int = 4


def gemm_tiles(m: int, bk: int) -> Tiles:
    """Tiles by the number of rows: the more rows, the more MMA work each weight tile's loads (and
    unpacking) are spread over."""
    return Tiles(128, 128, bk, num_warps=8) if m > LARGE_TILES_ABOVE else Tiles(64, 64, bk)


@triton.jit
def tile_of_program(M, N, BM: tl.constexpr, BN: tl.constexpr, GROUP_M: tl.constexpr):
    """(tile row, tile column) of this program: GROUP_M tile rows are swept column by column, so
    that programs running together share weight tiles in L2."""
    pid = tl.program_id(0)
    tiles_n = tl.cdiv(N, BN)
    per_group = GROUP_M * tiles_n
    first_m = (pid // per_group) * GROUP_M
    rows = tl.minimum(tl.cdiv(M, BM) - first_m, GROUP_M)
    return first_m + (pid % per_group) % rows, (pid % per_group) // rows


@triton.jit
def program_tile(M, N, BM: tl.constexpr, BN: tl.constexpr, GROUP_M: tl.constexpr):
    """This program's output rows and columns, and the same clamped into range for loads (rows and
    columns past the edge load row or column 0 and are never stored)."""
    pid_m, pid_n = tile_of_program(M, N, BM, BN, GROUP_M)
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_n = pid_n * BN + tl.arange(0, BN)
    return offs_m, offs_n, tl.where(offs_m < M, offs_m, 0), tl.where(offs_n < N, offs_n, 0)


@triton.jit
def dense_dot_loop(a_ptr, w_ptr, rows, cols, K, acc, BK: tl.constexpr, W_TO_FP16: tl.constexpr):
    """acc + a[rows] @ w[cols]^T over K, both operands row-major [*, K] and of one MMA type (w
    converted to FP16 first where W_TO_FP16)."""
    offs_k = tl.arange(0, BK)
    a_ptrs = a_ptr + rows[:, None] * K + offs_k[None, :]
    w_ptrs = w_ptr + cols[:, None] * K + offs_k[None, :]
    for k0 in range(0, K, BK):
        in_k = offs_k[None, :] < K - k0
        w = tl.load(w_ptrs, mask=in_k, other=0.0)
        acc = tl.dot(tl.load(a_ptrs, mask=in_k, other=0.0), tl.trans(w.to(tl.float16) if W_TO_FP16 else w), acc)
        a_ptrs += BK
        w_ptrs += BK
    return acc


@triton.jit
def store_rescaled(acc, a_scale_ptr, w_scale_ptr, bias_ptr, y_ptr, offs_m, offs_n, M, N,
                   HAS_A_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr):
    """y[m, n] = acc[m, n] * a_scale[m] * w_scale[n] (+ bias[n]), in y's type."""
    in_m = offs_m < M
    in_n = offs_n < N
    w_scale = tl.load(w_scale_ptr + offs_n, mask=in_n, other=0.0)
    if HAS_A_SCALE:
        out = acc * tl.load(a_scale_ptr + offs_m, mask=in_m, other=0.0)[:, None] * w_scale[None, :]
    else:
        out = acc * w_scale[None, :]
    if HAS_BIAS:
        out += tl.load(bias_ptr + offs_n, mask=in_n, other=0.0)[None, :]
    tl.store(y_ptr + offs_m[:, None].to(tl.int64) * N + offs_n[None, :], out.to(y_ptr.dtype.element_ty),
             mask=in_m[:, None] & in_n[None, :])


def grid_size(m: int, n: int, bm: int, bn: int) -> tuple[int]:
    return (triton.cdiv(m, bm) * triton.cdiv(n, bn),)
