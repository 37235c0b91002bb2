"""Codebook (VQ) GEMM family: y = (a @ W^T) * a_scale[m] + bias with W decoded from a codebook in
the prologue of each K step, on FP16 tensor cores with float32 accumulation.

    a          float16 [M, K] (a_scale none), or int8 activation codes [M, K] with float32
               a_scale [M] (their conversion to FP16 is exact)
    codebook   float16 [codewords, D], D a power of two (VQ4DiT: 256 x 4, 64 x 2)
    indices    uint8 [N, K / D]: row n's sub-vector s is codebook[indices[n, s]]
    bias       float32 [N] or none; y float16 / bfloat16 / float32 [M, N]

The 2-bit format's indices are bytes already; other index widths are widened to bytes when the
weights are built (`VqWeights.from_stream`). Each index fetches its D codeword values with one
vector load from the codebook (a few KiB, resident in L1). Bound: weight bytes (1 byte per D
weights) at small M, the FP16 tensor cores at large M.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from exporter.kernels.tiles import Tiles, gemm_tiles, grid_size, program_tile
from exporter.numerics.vq import unpack_indices


@triton.jit
def vq_gemm_kernel(a_ptr, a_scale_ptr, index_ptr, codebook_ptr, bias_ptr, y_ptr, M, N, K,
                   D: tl.constexpr, INT8_A: tl.constexpr, HAS_BIAS: tl.constexpr,
                   BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr):
    offs_m, offs_n, rows, cols = program_tile(M, N, BM, BN, GROUP_M)
    offs_k = tl.arange(0, BK)
    offs_s = tl.arange(0, BK // D)
    a_ptrs = a_ptr + rows[:, None] * K + offs_k[None, :]
    i_ptrs = index_ptr + cols[:, None] * (K // D) + offs_s[None, :]
    within = tl.arange(0, D)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, K, BK):
        a = tl.load(a_ptrs, mask=offs_k[None, :] < K - k0, other=0)
        index = tl.load(i_ptrs, mask=offs_s[None, :] < (K - k0) // D, other=0).to(tl.int32)
        w = tl.load(codebook_ptr + index[:, :, None] * D + within[None, None, :]).reshape(BN, BK)
        acc = tl.dot(a.to(tl.float16), tl.trans(w), acc)
        a_ptrs += BK
        i_ptrs += BK // D
    in_m = offs_m < M
    in_n = offs_n < N
    if INT8_A:
        acc *= tl.load(a_scale_ptr + offs_m, mask=in_m, other=0.0)[:, None]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=in_n, other=0.0)[None, :]
    tl.store(y_ptr + offs_m[:, None].to(tl.int64) * N + offs_n[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=in_m[:, None] & in_n[None, :])


@dataclass(frozen=True)
class VqWeights:
    codebook: torch.Tensor  # float16 [codewords, D]
    indices: torch.Tensor  # uint8 [N, K / D]

    @classmethod
    def from_stream(cls, codebook: torch.Tensor, stream: torch.Tensor, n: int, k: int) -> VqWeights:
        """From the checkpoint's bit stream of log2(codewords)-bit indices (exporter/numerics/vq.py)."""
        codewords, d = codebook.shape
        if codewords > 256 or k % d:
            raise ValueError(f"the kernel takes up to 256 codewords and K a multiple of the codeword size, "
                             f"not {codewords} codewords of {d} for K = {k}")
        indices = unpack_indices(stream, codewords.bit_length() - 1, n * (k // d)).reshape(n, k // d)
        return cls(codebook.half().contiguous(), indices.to(torch.uint8).contiguous())

    @property
    def n(self) -> int:
        return self.indices.shape[0]

    @property
    def k(self) -> int:
        return self.indices.shape[1] * self.codebook.shape[1]

    def weight(self) -> torch.Tensor:
        """The FP16 weight [N, K] the kernel multiplies."""
        return self.codebook[self.indices.long()].reshape(self.n, self.k)


VQ_BLOCK_K = 64  # channels per K step: 16 index bytes per row at d = 4


def vq_gemm(a: torch.Tensor, weights: VqWeights, a_scale: torch.Tensor | None = None,
            bias: torch.Tensor | None = None, out_dtype: torch.dtype = torch.float16,
            tiles: Tiles | None = None) -> torch.Tensor:
    m, k = a.shape
    d = weights.codebook.shape[1]
    int8_a = a.dtype == torch.int8
    if weights.k != k or (int8_a != (a_scale is not None)) or a.dtype not in (torch.float16, torch.int8):
        raise ValueError("activations are float16 [M, K], or int8 codes [M, K] with float32 scales [M]; "
                         "K as the weights'")
    t = tiles or gemm_tiles(m, VQ_BLOCK_K)
    y = torch.empty(m, weights.n, dtype=out_dtype, device=a.device)
    if m == 0:
        return y
    vq_gemm_kernel[grid_size(m, weights.n, t.bm, t.bn)](
        a.contiguous(), a_scale if int8_a else weights.codebook, weights.indices, weights.codebook,
        bias if bias is not None else weights.codebook, y, m, weights.n, k,
        D=d, INT8_A=int8_a, HAS_BIAS=bias is not None, BM=t.bm, BN=t.bn, BK=t.bk, GROUP_M=t.group_m,
        num_warps=t.num_warps, num_stages=t.num_stages)
    return y


__all__ = ["VqWeights", "vq_gemm", "vq_gemm_kernel"]
