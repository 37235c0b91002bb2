"""Linear layers with vector-quantized weights: a codebook and one codeword index per weight
sub-vector (exporter/quant/vq.py), decoded once into the weight the layer computes with."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from exporter.quant.vq import VqFormat, from_subvectors


class VqLinear(nn.Module):
    """y = act(x) W^T + b with W [N, K] = codebook[assignments] (sub-vectors of ``fmt.dim``)."""

    def __init__(self, codebook: torch.Tensor, assignments: torch.Tensor, in_features: int,
                 bias: torch.Tensor | None, act: nn.Module | None = None) -> None:
        super().__init__()
        k, dim = codebook.shape
        self.fmt = VqFormat(k, dim)
        self.out_features, self.in_features = assignments.shape[0], in_features
        self.act = act
        self.register_buffer("codebook", codebook.float())
        self.register_buffer("assignments", assignments.long())
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())
        self.register_buffer("weight", from_subvectors(self.codebook[self.assignments], in_features), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.act is not None:
            x = self.act(x)
        return F.linear(x, self.weight.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        return f"{self.in_features}->{self.out_features}, {self.fmt.name}"
