"""Vector quantization of Linear weights (VQ4DiT): codebooks over weight sub-vectors.

A weight [N, K] is cut, row by row, into sub-vectors of ``dim`` consecutive input channels:
[N, S, dim] with S = ceil(K / dim). When K is not a multiple of ``dim`` the last sub-vector of
each row is padded with zeros; the padding takes part in the assignment distance (pulling that
sub-vector towards codewords that end in small values) and is cut off when the weight is
rebuilt. Each sub-vector is stored as the index of one of the layer's ``codewords`` codewords:
log2(codewords) / dim bits per weight (2-bit: 256 x 4, 3-bit: 64 x 2).

Index storage: a little-endian bit stream, index i in bits [i b, (i + 1) b) with b = log2 of the
codebook size, so that 8 indices take b bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

CHUNK = 1 << 16  # sub-vectors per distance computation: bounded memory for DiT-XL/2's layers


@dataclass(frozen=True)
class VqFormat:
    codewords: int = 256
    dim: int = 4

    def __post_init__(self) -> None:
        if self.codewords < 2 or self.codewords & (self.codewords - 1) or self.codewords > 1 << 16:
            raise ValueError(f"a codebook has a power-of-two number of codewords, 2 to 65536, not {self.codewords}")
        if not 1 <= self.dim <= 16:
            raise ValueError(f"codeword dimension must be 1 to 16, not {self.dim}")

    @property
    def index_bits(self) -> int:
        return int(math.log2(self.codewords))

    @property
    def bits_per_weight(self) -> float:
        return self.index_bits / self.dim

    @property
    def name(self) -> str:
        return f"vq{self.codewords}x{self.dim}"

    def for_layer(self, subvector_count: int) -> "VqFormat":
        """VQ4DiT clamps the codebook to a quarter of the layer's sub-vectors (a power of two here)."""
        limit = max(2, 1 << int(math.log2(max(2, subvector_count // 4))))
        return VqFormat(min(self.codewords, limit), self.dim)


def subvectors(weight: torch.Tensor, dim: int) -> torch.Tensor:
    """[N, K] -> [N, ceil(K/dim), dim], the last sub-vector of each row zero-padded."""
    pad = -weight.shape[1] % dim
    if pad:
        weight = torch.cat([weight, weight.new_zeros(weight.shape[0], pad)], dim=1)
    return weight.reshape(weight.shape[0], -1, dim)


def from_subvectors(vectors: torch.Tensor, k: int) -> torch.Tensor:
    """[N, S, dim] -> [N, K]: inverse of ``subvectors``."""
    return vectors.reshape(vectors.shape[0], -1)[:, :k]


def nearest(points: torch.Tensor, codebook: torch.Tensor, n: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``n`` nearest codewords of each point [P, d]: indices [P, n] int64 and squared
    distances [P, n], nearest first (ties to the lower index)."""
    indices, distances = [], []
    norms = codebook.pow(2).sum(1)
    for part in points.split(CHUNK):
        d2 = (part.pow(2).sum(1, keepdim=True) - 2 * part @ codebook.T + norms).clamp_min(0)
        if n == 1:
            dist, idx = d2.min(1, keepdim=True)
        else:
            dist, idx = d2.topk(n, dim=1, largest=False, sorted=True)
        indices.append(idx)
        distances.append(dist)
    return torch.cat(indices), torch.cat(distances)


def kmeans_plus_plus(points: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """k-means++ seeding: each next codeword drawn with probability proportional to the squared
    distance to the nearest one chosen so far. ``gen`` is a CPU generator: the draws are made on the
    CPU, so that every device seeds alike."""
    chosen = [int(torch.randint(len(points), (1,), generator=gen, device="cpu"))]
    d2 = (points - points[chosen[0]]).pow(2).sum(1)
    for _ in range(1, k):
        total = d2.sum()
        i = int(torch.multinomial((d2 / total).cpu(), 1, generator=gen)) if total > 0 else int(
            torch.randint(len(points), (1,), generator=gen, device="cpu"))
        chosen.append(i)
        d2 = torch.minimum(d2, (points - points[i]).pow(2).sum(1))
    return points[chosen].clone()


def kmeans(points: torch.Tensor, k: int, iterations: int = 100, seed: int = 0) -> torch.Tensor:
    """Lloyd's k-means over points [P, d] (float32) from a k-means++ seeding; a cluster left
    empty is re-seeded with the point farthest from its codeword. Returns [k, d]."""
    points = points.float()
    codebook = kmeans_plus_plus(points, k, torch.Generator(device="cpu").manual_seed(seed))
    for _ in range(iterations):
        idx, dist = nearest(points, codebook)
        idx, dist = idx[:, 0], dist[:, 0]
        sums = torch.zeros_like(codebook).index_add_(0, idx, points)
        counts = torch.bincount(idx, minlength=k)
        updated = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None].float(), codebook)
        empty = (counts == 0).nonzero().flatten()
        if len(empty):
            updated[empty] = points[dist.topk(len(empty)).indices]
        if torch.equal(updated, codebook):
            break
        codebook = updated
    return codebook


def pack_indices(indices: torch.Tensor, bits: int) -> torch.Tensor:
    """int64 indices [...] in [0, 2^bits) -> uint8 [ceil(numel * bits / 8)], little-endian bit stream."""
    flat = indices.reshape(-1).numpy().astype(np.uint32)
    bit_planes = (flat[:, None] >> np.arange(bits, dtype=np.uint32)) & 1
    return torch.from_numpy(np.packbits(bit_planes.astype(np.uint8).reshape(-1), bitorder="little"))


def unpack_indices(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """Inverse of pack_indices: the first ``count`` indices, int64."""
    if len(packed) != math.ceil(count * bits / 8):
        raise ValueError(f"{len(packed)} bytes do not hold {count} indices of {bits} bits")
    bit_planes = np.unpackbits(packed.numpy(), bitorder="little")[: count * bits].reshape(count, bits)
    return torch.from_numpy((bit_planes.astype(np.int64) << np.arange(bits, dtype=np.int64)).sum(1))
