"""Codebook (VQ) weights in ONNX graphs: the checkpoint's packed assignments, decoded by
standard ops that ONNX Runtime runs.

Per VQ Linear ``L`` (W [N, K]; codebook of k codewords of d weights; S = ceil(K / d)
sub-vectors per row; b = log2(k) index bits):

    L.vq_codebook      FLOAT16 [k, d]
    L.vq_assignments   UINT8 [ceil(N S / 8) b]: the checkpoint's little-endian bit stream
                       (exporter/numerics/vq.py), zero-padded to whole groups of 8 indices
    indices  = unpack(L.vq_assignments)                                   int64 [N S]
    W^T      = Transpose(Slice(Reshape(Gather(Cast<float>(codebook), indices), [N, S d]),
                               0..K along axis 1))                        [K, N]
    y        = MatMul(x, W^T) (+ bias)

unpack: with b = 8 each byte is an index (a Cast, and mod 256 so that INT8 bytes read the
same). Otherwise 8 indices fill b bytes, so the
stream is read as rows of b bytes [G, b]: index j of a row starts at bit j b, in byte
o = (j b) // 8 at shift s = (j b) % 8, and spans at most three bytes (b <= 16), so

    index_j = ((B[o] + 256 B[o+1] + 65536 B[o+2]) / 2^s) mod 2^b

with byte positions past the row clamped to its last byte; their bits land above bit b after
the shift, where the mod removes them. All constants are [8]-sized, whatever the layer's size.
"""

from __future__ import annotations

import numpy as np
import torch
from onnx import TensorProto, numpy_helper

from exporter.numerics.vq import pack_indices
from exporter.onnx.graph_builder import Builder, int64_tensor
from exporter.quant.vq_linear import VqLinear

INDICES_PER_ROW = 8  # indices per row of b bytes


def packed_stream(assignments: torch.Tensor, bits: int) -> np.ndarray:
    """The checkpoint's bit stream of ``assignments``, padded with zero bytes to whole rows."""
    packed = pack_indices(assignments, bits).numpy()
    rows = -(-assignments.numel() // INDICES_PER_ROW)
    return np.concatenate([packed, np.zeros(rows * bits - len(packed), dtype=np.uint8)])


def _unpack(b: Builder, stream: str, bits: int, count: int) -> str:
    """int64 [count] indices from the padded stream (module docstring), UINT8 or INT8 bytes."""
    wide = b.node("Mod", [b.node("Cast", [stream], to=TensorProto.INT64),
                          b.const(int64_tensor(b.name("vq_byte_range"), 256))])
    if bits == 8:
        return wide
    rows = b.node("Reshape", [wide, b.const(int64_tensor(b.name("vq_stream_rows"), [-1, bits]))])
    starts = np.arange(INDICES_PER_ROW) * bits
    first = starts // 8
    value = None
    for byte in range(3):
        position = b.const(int64_tensor(b.name(f"vq_byte{byte}"), np.minimum(first + byte, bits - 1)))
        part = b.node("Gather", [rows, position], axis=1)
        if byte:
            part = b.node("Mul", [part, b.const(int64_tensor(b.name(f"vq_byte{byte}_weight"), 256 ** byte))])
        value = part if value is None else b.node("Add", [value, part])
    shifted = b.node("Div", [value, b.const(int64_tensor(b.name("vq_shift"), 2 ** (starts % 8)))])
    indices = b.node("Mod", [shifted, b.const(int64_tensor(b.name("vq_index_range"), 2 ** bits))])
    flat = b.node("Reshape", [indices, b.const(int64_tensor(b.name("vq_flat"), [-1]))])
    return b.node("Slice", [flat, b.const(int64_tensor(b.name("vq_first_index"), [0])),
                            b.const(int64_tensor(b.name("vq_count"), [count]))])


def vq_weight(b: Builder, q: VqLinear) -> str:
    """W^T [K, N] of a VQ Linear, decoded from its codebook and packed assignments."""
    bits = q.fmt.index_bits
    stream = b.const(numpy_helper.from_array(packed_stream(q.assignments, bits), b.name("vq_assignments")))
    codebook = b.const(numpy_helper.from_array(q.codebook.half().numpy(), b.name("vq_codebook")))
    return vq_decode(b, stream, codebook, q.out_features, q.in_features, q.fmt.dim, bits)


def vq_decode(b: Builder, stream: str, codebook: str, n: int, k: int, dim: int, bits: int) -> str:
    """W^T [K, N] from a FLOAT16 codebook [codewords, dim] and the padded assignment stream."""
    per_row = -(-k // dim)
    indices = _unpack(b, stream, bits, n * per_row)
    vectors = b.node("Gather", [b.node("Cast", [codebook], to=TensorProto.FLOAT), indices], axis=0)
    weight = b.node("Reshape", [vectors, b.const(int64_tensor(b.name("vq_rows"), [n, per_row * dim]))])
    if per_row * dim != k:
        weight = b.node("Slice", [weight, b.const(int64_tensor(b.name("vq_first_column"), [0])),
                                  b.const(int64_tensor(b.name("vq_in_features"), [k])),
                                  b.const(int64_tensor(b.name("vq_axis"), [1]))])
    return b.node("Transpose", [weight], perm=[1, 0])
