"""Quantized Linears on the kernels: a calibrated model (QuantizedDiT) runs its GEMMs on the
Triton kernels with the arithmetic it is deployed with, on a GPU or, in Triton's interpreter, on
the CPU.

    count = use_kernels(qdit)        # every quantized Linear replaced by a KernelLinear

Only deployable layers have a kernel (exporter/quant/recipes.py, Recipe.deployable): INT8
per-channel or two-level INT4 weights with symmetric INT8 activations, one scale per token
(dynamic, or a static per-timestep table without channel groups), or with FP activations
(adaLN's modulation: an FP16 GEMM); codebook weights with FP activations, or with INT8
activations of one scale per token. FP activations are multiplied in FP16, as a deployed
FP16 engine does.
"""

from __future__ import annotations

import torch
from torch import nn

from exporter.errors import UserError
from exporter.kernels.activation_quant import quantize_rows
from exporter.kernels.int8_gemm import Int8Weights, int8_gemm
from exporter.kernels.vq_gemm import VqWeights, vq_gemm
from exporter.quant.primitives import IntFormat
from exporter.quant.qlinear import DynamicActivationQuant, QuantLinear, StaticActivationQuant, TimestepContext
from exporter.quant.two_level import split_two_level
from exporter.quant.vq_linear import VqLinear

INT8 = IntFormat(8)


class KernelLinear(nn.Module):
    """y = gemm(quantize(x)) + b on the kernels; x [..., K] in float16 / bfloat16 / float32."""

    def __init__(self, name: str, layer: QuantLinear | VqLinear, context: TimestepContext | None) -> None:
        super().__init__()
        self.context = context
        self.in_features, self.out_features = layer.in_features, layer.out_features
        self.quantized_input = layer.act is not None
        table, bucket_of_t = _activation_tables(name, layer.act)
        self.register_buffer("static_table", table)
        self.register_buffer("bucket_of_t", bucket_of_t)
        self.register_buffer("bias", None if layer.bias is None else layer.bias.float().clone())
        for unset in ("codebook", "indices", "codes", "w_scale", "factor"):
            self.register_buffer(unset, None)
        self.group_size = 0
        if isinstance(layer, VqLinear):
            if layer.codebook.shape[0] > 256 or layer.in_features % layer.fmt.dim:
                raise UserError(f"layer {name}: the codebook kernel takes up to 256 codewords and K a multiple "
                                "of the codeword size")
            self.register_buffer("codebook", layer.codebook.half().contiguous())
            self.register_buffer("indices", layer.assignments.to(torch.uint8).contiguous())
        else:
            weights = _int8_weights(name, layer)
            self.register_buffer("codes", weights.codes)
            self.register_buffer("w_scale", weights.w_scale)
            self.register_buffer("factor", weights.factor)
            self.group_size = weights.group_size

    def _int8_weights(self) -> Int8Weights:
        return Int8Weights(self.codes, self.w_scale, self.factor, self.group_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        out_dtype = x.dtype if x.dtype in (torch.float16, torch.bfloat16, torch.float32) else torch.float32
        vq = VqWeights(self.codebook, self.indices) if self.codebook is not None else None
        if not self.quantized_input:
            if vq is not None:
                y = vq_gemm(rows.half(), vq, bias=self.bias, out_dtype=out_dtype)
            else:
                y = int8_gemm(rows.half(), None, self._int8_weights(), self.bias, out_dtype)
        else:
            table, bucket = None, None
            if self.static_table is not None:
                table, bucket = self.static_table, self.bucket_of_t[self.context.current(x.shape[0]).to(x.device)]
            codes, scale = quantize_rows(rows, "int8", table, bucket)
            if vq is not None:
                y = vq_gemm(codes, vq, a_scale=scale, bias=self.bias, out_dtype=out_dtype)
            else:
                y = int8_gemm(codes, scale, self._int8_weights(), self.bias, out_dtype)
        return y.reshape(*x.shape[:-1], self.out_features)


def _int8_weights(name: str, layer: QuantLinear) -> Int8Weights:
    fmt, codes = layer.fmt, layer.codes
    if not isinstance(fmt, IntFormat) or not fmt.symmetric or layer.rotation_block:
        raise UserError(f"layer {name} ({fmt.name}) has no kernel: not a deployable recipe")
    if fmt.bits == 8 and layer.w_scale.shape[1] == 1:
        return Int8Weights(codes.to(torch.int8).contiguous(), layer.w_scale[:, 0].contiguous())
    if fmt.bits == 4 and layer.group_size > 0:
        try:
            row, factor = split_two_level(layer.w_scale)
        except ValueError as e:
            raise UserError(f"layer {name} has float group scales, which no kernel runs at full speed ({e})") from None
        return Int8Weights.four_bit_from_codes(codes.to(torch.int8), factor, row, layer.group_size)
    raise UserError(f"layer {name} ({fmt.name}, group {layer.group_size}) has no kernel: not a deployable recipe")


def _activation_tables(name: str, act: nn.Module | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The static scale table [buckets] and timestep -> bucket map, or (None, None) when dynamic."""
    if act is None:
        return None, None
    if isinstance(act, DynamicActivationQuant) and act.fmt == INT8 and act.group_size < 0:
        return None, None
    if isinstance(act, StaticActivationQuant) and act.fmt == INT8 and act.groups == 1 and not act.zero.any():
        return act.scale.float().contiguous(), act.bucket_of_t
    raise UserError(f"layer {name}: activations {getattr(act, 'fmt', None)} have no kernel; the kernels take "
                    "symmetric INT8 activations with one scale per token")


def use_kernels(qdit) -> int:
    """Replaces every quantized Linear of qdit.transformer by its KernelLinear; returns how many."""
    from exporter.quant.quantize import _set_module

    layers = qdit.quant_linears()
    for name, layer in layers.items():
        _set_module(qdit.transformer, name, KernelLinear(name, layer, qdit.context))
    return len(layers)


__all__ = ["KernelLinear", "use_kernels"]
