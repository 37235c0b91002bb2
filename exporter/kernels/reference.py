"""The arithmetic each kernel runs, in PyTorch: what the kernels are tested against."""

from __future__ import annotations

import torch


def rescaled_product(a_operand: torch.Tensor, a_scale: torch.Tensor, w_operand: torch.Tensor,
                     w_scale: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """float32 [M, N]: the product of two operands whose products and sums are exact in float64
    (8-bit integers, E4M3 numbers), rescaled once per row and column, plus the bias."""
    acc = (a_operand.double() @ w_operand.double().T).float()
    out = acc * a_scale[:, None] * w_scale[None, :]
    return out if bias is None else out + bias[None, :]
