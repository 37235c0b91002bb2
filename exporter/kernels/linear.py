"""Quantized Linears on the kernels: a calibrated model (QuantizedDiT) runs its GEMMs on the
Triton kernels with the arithmetic it is deployed with, on a GPU or, in Triton's interpreter, on
the CPU.

    count = use_kernels(qdit)        # every quantized Linear replaced by a KernelLinear

Only deployable layers have a kernel (exporter/quant/recipes.py, Recipe.deployable): INT8
per-channel or two-level INT4 weights with symmetric INT8 activations, one scale per token
(dynamic, or a static per-timestep table without channel groups), or with FP activations
(adaLN's modulation: an FP16 GEMM); FP4 weights on power-of-two groups with FP4 activations on
fine groups (fp8_gemm fed by quantize_rows(x, "fp4"): E4M3 operands, FP8 tensor cores,
sm_89 or newer), or with FP activations (their E4M3 operands, one byte per weight, converted to
FP16 on int8_gemm's FP16-activation path); codebook weights with FP activations, or with INT8
activations of one scale per token. FP activations are multiplied in FP16, as a deployed FP16
engine does.
"""

from __future__ import annotations

import torch
import triton
from torch import nn

from exporter.errors import UserError
from exporter.kernels.activation_quant import BLOCK, quantize_rows
from exporter.kernels.fp8_gemm import Fp8Weights, fp8_gemm
from exporter.kernels.int8_gemm import Int8Weights, check_spans, int8_gemm
from exporter.kernels.vq_gemm import VqWeights, vq_gemm
from exporter.quant.fp4 import Fp4Format
from exporter.quant.fp4_groups import e4m3_operand, split_pow2
from exporter.quant.primitives import IntFormat, activation_group
from exporter.quant.qlinear import (
    DynamicActivationQuant,
    FineGroupActivationQuant,
    QuantLinear,
    StaticActivationQuant,
    TimestepContext,
)
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
        for unset in ("codebook", "indices", "codes", "w_scale", "factor", "offset"):
            self.register_buffer(unset, None)
        self.group_size = 0
        self.fp4_kind: str | None = None  # set when the GEMM is fp8_gemm's (FP4 weights, FP4 activations)
        self.act_group = _fp4_activation_group(name, layer)
        if isinstance(layer, VqLinear):
            if layer.codebook.shape[0] > 256 or layer.in_features % layer.fmt.dim:
                raise UserError(f"layer {name}: the codebook kernel takes up to 256 codewords and K a multiple "
                                "of the codeword size")
            self.register_buffer("codebook", layer.codebook.half().contiguous())
            self.register_buffer("indices", layer.assignments.to(torch.uint8).contiguous())
        elif isinstance(layer.fmt, Fp4Format) and self.quantized_input:
            weights = _fp4_weights(name, layer)
            self.register_buffer("codes", weights.codes)
            self.register_buffer("w_scale", weights.w_scale)
            self.register_buffer("offset", weights.offset)
            self.group_size, self.fp4_kind = weights.group_size, weights.fp4_kind
        else:
            fp4 = isinstance(layer.fmt, Fp4Format)
            weights = _fp4_operand_weights(name, layer) if fp4 else _int8_weights(name, layer)
            self.register_buffer("codes", weights.codes)
            self.register_buffer("w_scale", weights.w_scale)
            self.register_buffer("factor", weights.factor)
            self.group_size = weights.group_size

    def _int8_weights(self) -> Int8Weights:
        return Int8Weights(self.codes, self.w_scale, self.factor, self.group_size)

    def _fp8_weights(self) -> Fp8Weights:
        return Fp8Weights(self.codes, self.w_scale, self.offset, self.group_size, self.fp4_kind)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        out_dtype = x.dtype if x.dtype in (torch.float16, torch.bfloat16, torch.float32) else torch.float32
        vq = VqWeights(self.codebook, self.indices) if self.codebook is not None else None
        if not self.quantized_input:
            if vq is not None:
                y = vq_gemm(rows.half(), vq, bias=self.bias, out_dtype=out_dtype)
            else:
                y = int8_gemm(rows.half(), None, self._int8_weights(), self.bias, out_dtype)
        elif self.fp4_kind is not None:
            codes, scale = quantize_rows(rows, "fp4", group_size=self.act_group)
            y = fp8_gemm(codes, scale, self._fp8_weights(), self.bias, out_dtype)
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


def _fp4_activation_group(name: str, layer: QuantLinear | VqLinear) -> int:
    """The channels per fine group of FP4 activations (0: the layer has none)."""
    if not isinstance(layer.act, FineGroupActivationQuant):
        return 0
    if not isinstance(getattr(layer, "fmt", None), Fp4Format):
        raise UserError(f"layer {name}: FP4 activations on fine groups run on fp8_gemm, which takes FP4 "
                        "weights on power-of-two groups")
    group = activation_group(layer.act.group_size, layer.in_features)
    if BLOCK % group:
        raise UserError(f"layer {name}: the activation quantizer takes FP4 groups that divide {BLOCK} channels, "
                        f"not {group}")
    return group


def _fp4_grid(name: str, layer: QuantLinear) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(s [N], t [N, G], group size) of FP4 weights on power-of-two groups; UserError otherwise."""
    if layer.rotation_block:
        raise UserError(f"layer {name} rotates its input (Hadamard), which no kernel does: not a deployable recipe")
    try:
        s, t = split_pow2(layer.w_scale, layer.fmt.kind)
    except ValueError as e:
        raise UserError(f"layer {name} has float FP4 group scales, which no kernel runs at full speed ({e})") from None
    group = layer.in_features if t.shape[1] == 1 else layer.group_size
    return s, t, group


def _fp4_weights(name: str, layer: QuantLinear) -> Fp8Weights:
    """fp8_gemm's weights of a layer with FP4 activations (codes packed in chunks, t - t_min per span)."""
    if not isinstance(layer.act, FineGroupActivationQuant):
        raise UserError(f"layer {name}: FP4 weights with activations {type(layer.act).__name__} have no kernel; "
                        "fp8_gemm takes FP4 activations on fine groups")
    s, t, group = _fp4_grid(name, layer)
    try:
        weights = Fp8Weights.fp4_from_codes(layer.codes, t, s, group, layer.fmt.kind)
        check_spans(layer.in_features, group, layer.out_features, weights.offset)
    except ValueError as e:
        raise UserError(f"layer {name}: {e}") from None
    return weights


def _fp4_operand_weights(name: str, layer: QuantLinear) -> Int8Weights:
    """FP4 weights on power-of-two groups with FP activations: the E4M3 operands v * 2**t, one byte
    each [N, K], with the row scales, for int8_gemm's FP16-activation path (converted exactly)."""
    s, t, _ = _fp4_grid(name, layer)
    if layer.in_features % t.shape[1]:
        raise UserError(f"layer {name}: FP4 weight groups that do not divide {layer.in_features} channels")
    operand = e4m3_operand(layer.codes, t, layer.fmt.kind).view(torch.float8_e4m3fn).contiguous()
    return Int8Weights(operand, s.contiguous())


def _activation_tables(name: str, act: nn.Module | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The static scale table [buckets] and timestep -> bucket map, or (None, None) when dynamic."""
    if act is None:
        return None, None
    if isinstance(act, DynamicActivationQuant) and act.fmt == INT8 and act.group_size < 0:
        return None, None
    if isinstance(act, StaticActivationQuant) and act.fmt == INT8 and act.groups == 1 and not act.zero.any():
        return act.scale.float().contiguous(), act.bucket_of_t
    if isinstance(act, FineGroupActivationQuant):
        return None, None
    fmt = getattr(act, "fmt", None)
    raise UserError(f"layer {name}: activations {fmt.name if fmt is not None else type(act).__name__} have no "
                    "kernel; the kernels take symmetric INT8 activations with one scale per token, or FP4 on "
                    "fine groups")


def _check_fp8_device(layers: dict) -> None:
    """UserError when FP4 layers would run on a GPU without FP8 tensor cores (before sm_89)."""
    fp4 = [n for n, m in layers.items() if isinstance(getattr(m, "fmt", None), Fp4Format)]
    if not fp4 or triton.knobs.runtime.interpret or not torch.cuda.is_available():
        return
    major, minor = torch.cuda.get_device_capability()
    if (major, minor) < (8, 9):
        raise UserError(f"layer {fp4[0]} (FP4) runs on FP8 tensor cores, which sm_{major}{minor} lacks "
                        "(sm_89 or newer)")


def use_kernels(qdit) -> int:
    """Replaces every quantized Linear of qdit.transformer by its KernelLinear; returns how many."""
    from exporter.quant.quantize import _set_module

    layers = qdit.quant_linears()
    _check_fp8_device(layers)
    for name, layer in layers.items():
        _set_module(qdit.transformer, name, KernelLinear(name, layer, qdit.context))
    return len(layers)


__all__ = ["KernelLinear", "use_kernels"]
