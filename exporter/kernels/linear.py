"""Quantized Linears on the kernels: a calibrated model (QuantizedDiT) runs its GEMMs on the
Triton kernels with the arithmetic it is deployed with, on a GPU or, in Triton's interpreter, on
the CPU.

    count = use_kernels(qdit)        # every quantized Linear replaced by a KernelLinear
    weights = kernel_weights(QuantizedWeight.of(name, layer), activation_kind(layer), layouts)
                                     # the mapping itself, which the graph rewrite shares

Only deployable layers have a kernel (exporter/quant/recipes.py, Recipe.deployable): INT8
per-channel or two-level INT4 weights with symmetric INT8 activations, one scale per token
(dynamic, or a static per-timestep table without channel groups), or static UINT4 activations on
two-level groups of 32 (quantize_rows(x, "int4"): INT8 operands (q - z) f), or with FP activations
(adaLN's modulation: an FP16 GEMM); FP4 weights on power-of-two groups with FP4 activations on
fine groups (fp8_gemm fed by quantize_rows(x, "fp4"): E4M3 operands, FP8 tensor cores,
sm_89 or newer; quantize_rows(x, "fp4_hadamard") when the layer rotates each activation group by
a Hadamard transform of its 32 channels, the weights holding W H), or with FP activations (their E4M3 operands, one byte per weight, converted to
FP16 on int8_gemm's FP16-activation path); codebook weights with FP activations, or with INT8
activations of one scale per token. FP activations are multiplied in FP16, as a deployed FP16
engine does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
from torch import nn

from exporter.errors import UserError
from exporter.kernels.activation_quant import BLOCK, quantize_rows
from exporter.kernels.fp8_gemm import Fp8Weights, fp8_gemm
from exporter.kernels.int8_gemm import SPAN, Int8Weights, check_spans, int8_gemm
from exporter.kernels.vq_gemm import VqWeights, vq_gemm
from exporter.numerics import two_level_activations
from exporter.numerics.fp4 import Fp4Format
from exporter.numerics.fp4_groups import EXPONENTS, e4m3_operand, split_pow2
from exporter.numerics.kernel_layout import FP4_GROUP, INT4_GROUP
from exporter.numerics.primitives import IntFormat, QuantFormat, activation_group
from exporter.numerics.two_level import split_two_level
from exporter.quant.module_tree import replace_module
from exporter.quant.qlinear import (
    DynamicActivationQuant,
    FineGroupActivationQuant,
    QuantLinear,
    StaticActivationQuant,
    TimestepContext,
)
from exporter.quant.vq_linear import VqLinear

INT8, UINT4 = IntFormat(8), IntFormat(4, symmetric=False)
ACT_KINDS = ("none", "int8", "fp4", "int4")  # FP16 activations, INT8 per token, FP4 on fine groups,
# static UINT4 on two-level groups (INT8 operands (q - z) f for int8_gemm)


@dataclass(frozen=True)
class PackedLayouts:
    """Which 4-bit layouts a way of launching the kernels takes: the K step they need to divide K,
    and the FP4 formats the FP8 kernel decodes. Weights outside them get the same operands one byte
    per weight (the INT8 operands q f, the E4M3 operands v 2^t): the same arithmetic."""

    k_step: int
    fp4_kinds: tuple[str, ...]


JIT_LAYOUTS = PackedLayouts(2 * SPAN.value, tuple(EXPONENTS))  # the Python wrappers pick K step and table per call


@dataclass(frozen=True)
class QuantizedWeight:
    """What a kernel's weights are built from: codes [N, K] (INT values as integers, FP4 codes
    uint8), the float32 scales w_scale [N, G] (G = 1: one per output channel), the group size
    and the format; a QuantLinear's, or the same read from a QDQ graph (exporter/rewrite)."""

    name: str
    fmt: QuantFormat
    codes: torch.Tensor
    w_scale: torch.Tensor
    group_size: int
    rotation_block: int = 0

    @classmethod
    def of(cls, name: str, layer: QuantLinear) -> QuantizedWeight:
        return cls(name, layer.fmt, layer.codes, layer.w_scale, layer.group_size, layer.rotation_block)

    @property
    def k(self) -> int:
        return self.codes.shape[1]

    def row_scale(self) -> torch.Tensor:
        """The one scale of each output channel [N] of weights with one scale per row (or tensor)."""
        return self.w_scale[:, 0].expand(self.codes.shape[0]).float().contiguous()


def kernel_weights(w: QuantizedWeight, act: str, layouts: PackedLayouts) -> Int8Weights | Fp8Weights:
    """The operands of the kernel that runs the layer, given its activations (ACT_KINDS): UserError
    when no kernel runs it at full speed."""
    if act not in ACT_KINDS:
        raise ValueError(f"activations {act}: one of {', '.join(ACT_KINDS)}")
    if w.rotation_block and not (act == "fp4" and w.rotation_block == FP4_GROUP):
        raise UserError(f"layer {w.name} rotates its input by Hadamard blocks of {w.rotation_block}; the kernels "
                        f"rotate only FP4 activation groups of {FP4_GROUP}: not a deployable recipe")
    if isinstance(w.fmt, Fp4Format):
        return _fp4_weights(w, act, layouts)
    if act == "fp4":
        raise UserError(f"layer {w.name}: FP4 activations on fine groups run on fp8_gemm, which takes FP4 "
                        "weights on power-of-two groups")
    return _int8_weights(w, layouts)


def _int8_weights(w: QuantizedWeight, layouts: PackedLayouts) -> Int8Weights:
    fmt, codes = w.fmt, w.codes.to(torch.int8)
    if not isinstance(fmt, IntFormat) or not fmt.symmetric or fmt.bits not in (4, 8):
        raise UserError(f"layer {w.name} ({fmt.name}) has no kernel: not a deployable recipe")
    per_row = w.w_scale.shape[1] == 1
    if fmt.bits == 8:
        if not per_row:
            raise UserError(f"layer {w.name} ({fmt.name}, group {w.group_size}) has no kernel: not a deployable "
                            "recipe")
        return Int8Weights(codes.contiguous(), w.row_scale())
    if per_row:
        row, factor, group = w.row_scale(), torch.ones(codes.shape[0], 1, dtype=torch.int64), w.k
    else:
        try:
            row, factor = split_two_level(w.w_scale)
        except ValueError as e:
            raise UserError(f"layer {w.name} has float group scales, which no kernel runs at full speed "
                            f"({e})") from None
        group = w.group_size
    if w.k % layouts.k_step == 0 and group % SPAN.value == 0:
        return Int8Weights.four_bit_from_codes(codes, factor, row, group)
    operand = codes.to(torch.int32) * factor.repeat_interleave(group, dim=1)[:, :w.k].to(torch.int32)
    return Int8Weights(operand.to(torch.int8).contiguous(), row)


def _fp4_weights(w: QuantizedWeight, act: str, layouts: PackedLayouts) -> Int8Weights | Fp8Weights:
    """FP4 weights on power-of-two groups: with FP4 activations fp8_gemm's weights (packed codes
    and exponent offsets where the layouts allow, else the E4M3 operands v 2^t [N, K]); with FP
    activations the E4M3 operands with the row scales, for int8_gemm's FP16-activation path
    (converted to FP16 exactly)."""
    if act in ("int8", "int4"):
        raise UserError(f"layer {w.name}: FP4 weights with integer activations have no kernel; fp8_gemm takes FP4 "
                        "activations on fine groups")
    try:
        s, t = split_pow2(w.w_scale.float(), w.fmt.kind)
    except ValueError as e:
        raise UserError(f"layer {w.name} has float FP4 group scales, which no kernel runs at full speed "
                        f"({e})") from None
    if w.k % t.shape[1]:
        raise UserError(f"layer {w.name}: FP4 weight groups that do not divide {w.k} channels")
    group = w.k // t.shape[1]
    packed = act == "fp4" and w.fmt.kind in layouts.fp4_kinds and w.k % layouts.k_step == 0 and group % SPAN.value == 0
    if packed:
        try:
            weights = Fp8Weights.fp4_from_codes(w.codes, t, s, group, w.fmt.kind)
            check_spans(w.k, group, w.codes.shape[0], weights.offset)
        except ValueError as e:
            raise UserError(f"layer {w.name}: {e}") from None
        return weights
    operand = e4m3_operand(w.codes, t, w.fmt.kind).view(torch.float8_e4m3fn).contiguous()
    return Fp8Weights(operand, s.contiguous()) if act == "fp4" else Int8Weights(operand, s.contiguous())


def _fp4_activation_group(name: str, layer: QuantLinear | VqLinear) -> int:
    """The channels per fine group of FP4 activations (0: the layer has none)."""
    if not isinstance(layer.act, FineGroupActivationQuant):
        return 0
    group = activation_group(layer.act.group_size, layer.in_features)
    if BLOCK % group:
        raise UserError(f"layer {name}: the activation quantizer takes FP4 groups that divide {BLOCK} channels, "
                        f"not {group}")
    return group


def activation_kind(layer: QuantLinear | VqLinear) -> str:
    """The layer's activations as ACT_KINDS names them."""
    if layer.act is None:
        return "none"
    if isinstance(layer.act, StaticActivationQuant) and layer.act.two_level:
        return "int4"
    return "fp4" if isinstance(layer.act, FineGroupActivationQuant) else "int8"


class KernelLinear(nn.Module):
    """y = gemm(quantize(x)) + b on the kernels; x [..., K] in float16 / bfloat16 / float32."""

    def __init__(self, name: str, layer: QuantLinear | VqLinear, context: TimestepContext | None) -> None:
        super().__init__()
        self.context = context
        self.in_features, self.out_features = layer.in_features, layer.out_features
        self.quantized_input = layer.act is not None
        table, groups, bucket_of_t = _activation_tables(name, layer.act, layer.in_features)
        self.register_buffer("static_table", table)
        self.register_buffer("static_groups", groups)
        self.register_buffer("bucket_of_t", bucket_of_t)
        self.register_buffer("bias", None if layer.bias is None else layer.bias.float().clone())
        for unset in ("codebook", "indices", "codes", "w_scale", "factor", "offset"):
            self.register_buffer(unset, None)
        self.group_size = 0
        self.fp8 = False  # the GEMM is fp8_gemm's (FP4 weights, FP4 activations)
        self.fp4_kind: str | None = None  # fp8_gemm's 4-bit FP4 weights' format
        self.act_group = _fp4_activation_group(name, layer)
        self.act_format = "fp4_hadamard" if layer.rotation_block else "fp4"
        if self.act_format == "fp4_hadamard" and self.act_group not in (0, layer.rotation_block):
            raise UserError(f"layer {name}: the FP4 quantizer rotates each activation group; the layer's Hadamard "
                            f"blocks of {layer.rotation_block} are not its groups of {self.act_group}")
        if isinstance(layer, VqLinear):
            if layer.codebook.shape[0] > 256 or layer.in_features % layer.fmt.dim:
                raise UserError(f"layer {name}: the codebook kernel takes up to 256 codewords and K a multiple "
                                "of the codeword size")
            self.register_buffer("codebook", layer.codebook.half().contiguous())
            self.register_buffer("indices", layer.assignments.to(torch.uint8).contiguous())
            return
        weights = kernel_weights(QuantizedWeight.of(name, layer), activation_kind(layer), JIT_LAYOUTS)
        self.register_buffer("codes", weights.codes)
        self.register_buffer("w_scale", weights.w_scale)
        if isinstance(weights, Fp8Weights):
            self.fp8 = True
            self.register_buffer("offset", weights.offset)
            self.group_size = weights.group_size
            self.fp4_kind = weights.fp4_kind if weights.four_bit else None
        else:
            self.register_buffer("factor", weights.factor)
            self.group_size = weights.group_size

    def _int8_weights(self) -> Int8Weights:
        return Int8Weights(self.codes, self.w_scale, self.factor, self.group_size)

    def _fp8_weights(self) -> Fp8Weights:
        if self.fp4_kind is None:
            return Fp8Weights(self.codes, self.w_scale)
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
        elif self.fp8:
            codes, scale = quantize_rows(rows, self.act_format, group_size=self.act_group)
            y = fp8_gemm(codes, scale, self._fp8_weights(), self.bias, out_dtype)
        else:
            table, bucket = None, None
            if self.static_table is not None:
                table, bucket = self.static_table, self.bucket_of_t[self.context.current(x.shape[0]).to(x.device)]
            fmt = "int8" if self.static_groups is None else "int4"
            codes, scale = quantize_rows(rows, fmt, table, bucket, INT4_GROUP, self.static_groups)
            if vq is not None:
                y = vq_gemm(codes, vq, a_scale=scale, bias=self.bias, out_dtype=out_dtype)
            else:
                y = int8_gemm(codes, scale, self._int8_weights(), self.bias, out_dtype)
        return y.reshape(*x.shape[:-1], self.out_features)


def _activation_tables(name: str, act: nn.Module | None, in_features: int) -> tuple[torch.Tensor | None, ...]:
    """The static scale table [buckets], INT4's group table [buckets, G, 2] (None for INT8) and the
    timestep -> bucket map, or all None when the activations are dynamic or FP."""
    if act is None or isinstance(act, FineGroupActivationQuant):
        return None, None, None
    if isinstance(act, DynamicActivationQuant) and act.fmt == INT8 and act.group_size < 0:
        return None, None, None
    if isinstance(act, StaticActivationQuant) and act.fmt == INT8 and act.groups == 1 and not act.zero.any():
        return act.scale.float().contiguous(), None, act.bucket_of_t
    if isinstance(act, StaticActivationQuant) and act.two_level and act.fmt == UINT4:
        if act.groups * INT4_GROUP != in_features:
            raise UserError(f"layer {name}: the INT4 activation quantizer takes groups of {INT4_GROUP} channels, "
                            f"not {in_features // act.groups}")
        try:
            s, groups = two_level_activations.kernel_tables(act.scale, act.zero)
        except ValueError as e:
            raise UserError(f"layer {name}: {e}") from None
        return s, groups, act.bucket_of_t
    fmt = getattr(act, "fmt", None)
    raise UserError(f"layer {name}: activations {fmt.name if fmt is not None else type(act).__name__} have no "
                    "kernel; the kernels take symmetric INT8 activations with one scale per token, static UINT4 "
                    "on two-level groups, or FP4 on fine groups")


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
    layers = qdit.quant_linears()
    _check_fp8_device(layers)
    for name, layer in layers.items():
        replace_module(qdit.transformer, name, KernelLinear(name, layer, qdit.context))
    return len(layers)


__all__ = ["ACT_KINDS", "JIT_LAYOUTS", "KernelLinear", "PackedLayouts", "QuantizedWeight", "activation_kind",
           "kernel_weights", "use_kernels"]
