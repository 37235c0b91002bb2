"""Linear layers with vector-quantized weights: a codebook and one codeword index per weight
sub-vector (exporter/numerics/vq.py), decoded once into the weight the layer computes with."""

from __future__ import annotations

import torch
from torch import nn

from exporter.numerics.vq import VqFormat, from_subvectors
from exporter.quant.qlinear import DecodedLinear


class VqLinear(DecodedLinear):
    """y = act(x) W^T + b with W [N, K] = codebook[assignments] (sub-vectors of ``fmt.dim``)."""

    def __init__(self, codebook: torch.Tensor, assignments: torch.Tensor, in_features: int,
                 bias: torch.Tensor | None, act: nn.Module | None = None) -> None:
        super().__init__(in_features, assignments.shape[0], bias, act)
        k, dim = codebook.shape
        self.fmt = VqFormat(k, dim)
        self.register_buffer("codebook", codebook.float())
        self.register_buffer("assignments", assignments.long())
        self.register_buffer("weight", from_subvectors(self.codebook[self.assignments], in_features), persistent=False)

    def extra_repr(self) -> str:
        return f"{self.in_features}->{self.out_features}, {self.fmt.name}"
