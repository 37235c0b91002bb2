"""Bit packing of 4-bit codes, in ONNX's INT4/UINT4 layout.

packed [..., ceil(K/2)] uint8: element 2j in the low nibble of byte j, element 2j+1 in the high
nibble; an odd K leaves the last high nibble zero. Signed codes are stored two's complement.
"""

from __future__ import annotations

import torch


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """int8 codes in [-8, 7] or uint8 codes in [0, 15], [..., K] -> uint8 [..., ceil(K/2)]."""
    nibbles = codes.to(torch.int16) & 0xF
    if nibbles.shape[-1] % 2:
        nibbles = torch.cat([nibbles, torch.zeros_like(nibbles[..., :1])], dim=-1)
    return (nibbles[..., 0::2] | (nibbles[..., 1::2] << 4)).to(torch.uint8)


def unpack_int4(packed: torch.Tensor, k: int, signed: bool) -> torch.Tensor:
    """Inverse of pack_int4: [..., ceil(K/2)] uint8 -> [..., K] int8 (signed) or uint8."""
    p = packed.to(torch.int16)
    nibbles = torch.stack([p & 0xF, p >> 4], dim=-1).reshape(*packed.shape[:-1], -1)[..., :k]
    if signed:
        return torch.where(nibbles >= 8, nibbles - 16, nibbles).to(torch.int8)
    return nibbles.to(torch.uint8)
