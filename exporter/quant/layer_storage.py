"""How a checkpoint stores each kind of quantized layer: ``LAYER_STORAGE``, keyed by the weight
config type, writes a layer's tensors and manifest entry and rebuilds the layer from them
(tensor names and layouts: exporter/quant/checkpoint.py's docstring)."""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn

from exporter.numerics import fp4_fine_groups
from exporter.numerics.fp4 import Fp4Format
from exporter.numerics.fp4_groups import split_pow2
from exporter.numerics.packing import pack_int4, unpack_int4
from exporter.numerics.primitives import IntFormat, format_from_name
from exporter.numerics.two_level import split_two_level
from exporter.numerics.two_level_activations import ACT_GROUP_FACTORS
from exporter.numerics.vq import VqFormat, pack_indices, unpack_indices
from exporter.quant.qlinear import (
    DecodedLinear,
    DynamicActivationQuant,
    FineGroupActivationQuant,
    QuantLinear,
    StaticActivationQuant,
    TimestepContext,
)
from exporter.quant.recipes import ACTIVATION_SCALES
from exporter.quant.vq_linear import VqLinear
from exporter.quant.weight_configs import WEIGHT_CONFIGS, Fp4Weights, IntWeights, ScalarWeights, VqWeights

Tensors = dict[str, torch.Tensor]


class LayerStorage(Protocol):
    def save(self, name: str, layer: DecodedLinear, config: Any, tensors: Tensors) -> dict[str, Any]:
        """Adds the layer's tensors to ``tensors``; its manifest entry (weight, activation,
        rotation_block, weight_bytes)."""

    def load(self, layer: dict[str, Any], tensors: Tensors, act: nn.Module | None) -> DecodedLinear:
        """The layer its manifest entry and tensors describe, with input quantizer ``act``;
        ValueError when they do not fit together."""


class ScalarStorage:
    """Integer and FP4 codes (4-bit packed two per byte), group scales, zero-points."""

    def save(self, name: str, q: QuantLinear, config: ScalarWeights, tensors: Tensors) -> dict[str, Any]:
        tensors[f"{name}.codes"] = (pack_int4(q.codes) if q.fmt.bits == 4 else q.codes).contiguous()
        tensors[f"{name}.w_scale"] = q.w_scale.contiguous()
        if not q.fmt.symmetric:
            tensors[f"{name}.w_zero"] = q.w_zero.contiguous()
        _save_bias(name, q, tensors)
        storage = "4-bit codes x2 per byte, low nibble first" if q.fmt.bits == 4 else str(q.codes.dtype).removeprefix(
            "torch.")
        return {
            "weight": {"kind": config.kind, "format": q.fmt.name, "bits": q.fmt.bits, "symmetric": q.fmt.symmetric,
                       "group_size": q.group_size, "method": config.method, "scales": config.scales,
                       "storage": storage},
            "activation": save_activation(name, q.act, tensors),
            "rotation_block": q.rotation_block,
            "weight_bytes": _stored_bytes(tensors, name, ("codes", "w_scale", "w_zero")),
        }

    def load(self, layer: dict[str, Any], tensors: Tensors, act: nn.Module | None) -> QuantLinear:
        name, w = layer["name"], layer["weight"]
        n, k = layer["out_features"], layer["in_features"]
        fmt = format_from_name(w["format"])
        codes = tensors[f"{name}.codes"]
        if fmt.bits == 4:
            if codes.shape != (n, (k + 1) // 2):
                raise ValueError(f"{name}.codes has shape {tuple(codes.shape)}, expected {(n, (k + 1) // 2)}")
            codes = unpack_int4(codes, k, signed=isinstance(fmt, IntFormat) and fmt.symmetric)
        elif codes.shape != (n, k):
            raise ValueError(f"{name}.codes has shape {tuple(codes.shape)}, expected {(n, k)}")
        scale = tensors[f"{name}.w_scale"]
        if w.get("scales", "float") in ("two-level", "pow2-groups"):
            try:
                if w["scales"] == "two-level":
                    split_two_level(scale)
                elif isinstance(fmt, Fp4Format):
                    split_pow2(scale, fmt.kind)
                else:
                    raise ValueError(f"power-of-two group scales are for FP4 weights, not {fmt.name}")
            except ValueError as e:
                raise ValueError(f"{name}.w_scale: {e}") from None
        zero = tensors.get(f"{name}.w_zero", torch.zeros_like(scale))
        return QuantLinear(codes, scale, zero, fmt, w["group_size"], tensors.get(f"{name}.bias"), act,
                           rotation_block=int(layer.get("rotation_block", 0)))


class CodebookStorage:
    """A float16 codebook and the codeword index of each sub-vector as a bit stream."""

    def save(self, name: str, q: VqLinear, config: VqWeights, tensors: Tensors) -> dict[str, Any]:
        tensors[f"{name}.codebook"] = q.codebook.half().contiguous()
        tensors[f"{name}.assignments"] = pack_indices(q.assignments, q.fmt.index_bits)
        _save_bias(name, q, tensors)
        return {
            "weight": {"kind": config.kind, "format": q.fmt.name, "codewords": q.fmt.codewords, "dim": q.fmt.dim,
                       "index_bits": q.fmt.index_bits, "bits_per_weight": q.fmt.bits_per_weight,
                       "method": config.method,
                       "storage": "float16 codebook; indices as a little-endian bit stream, row-major"},
            "activation": save_activation(name, q.act, tensors),
            "rotation_block": q.rotation_block,
            "weight_bytes": _stored_bytes(tensors, name, ("codebook", "assignments")),
        }

    def load(self, layer: dict[str, Any], tensors: Tensors, act: nn.Module | None) -> VqLinear:
        name, w = layer["name"], layer["weight"]
        n, k = layer["out_features"], layer["in_features"]
        codebook = tensors[f"{name}.codebook"].float()
        if codebook.shape != (w["codewords"], w["dim"]):
            raise ValueError(f"{name}.codebook has shape {tuple(codebook.shape)}, expected {(w['codewords'], w['dim'])}")
        per_row = -(-k // w["dim"])
        indices = unpack_indices(tensors[f"{name}.assignments"], VqFormat(w["codewords"], w["dim"]).index_bits,
                                 n * per_row)
        return VqLinear(codebook, indices.reshape(n, per_row), k, tensors.get(f"{name}.bias"), act)


LAYER_STORAGE: dict[type, LayerStorage] = {IntWeights: ScalarStorage(), Fp4Weights: ScalarStorage(),
                                           VqWeights: CodebookStorage()}


def load_layer(layer: dict[str, Any], tensors: Tensors, bucket_of_t: torch.Tensor,
               context: TimestepContext) -> DecodedLinear:
    kind = layer["weight"].get("kind")
    if kind not in WEIGHT_CONFIGS:
        raise ValueError(f"{layer['name']}: unknown weight kind {kind!r}; valid: {', '.join(WEIGHT_CONFIGS)}")
    return LAYER_STORAGE[WEIGHT_CONFIGS[kind]].load(layer, tensors, load_activation(layer, tensors, bucket_of_t, context))


def _save_bias(name: str, q: DecodedLinear, tensors: Tensors) -> None:
    if q.bias is not None:
        tensors[f"{name}.bias"] = q.bias.contiguous()


def _stored_bytes(tensors: Tensors, name: str, parts: tuple[str, ...]) -> int:
    """Bytes the checkpoint spends on a layer's weight (codes or assignments, scales, codebooks)."""
    return sum(t.numel() * t.element_size() for part in parts if (t := tensors.get(f"{name}.{part}")) is not None)


def save_activation(name: str, act: nn.Module | None, tensors: Tensors) -> dict[str, Any]:
    if isinstance(act, StaticActivationQuant):
        tensors[f"{name}.a_scale"] = act.scale.contiguous()
        tensors[f"{name}.a_zero"] = act.zero.contiguous()
        return {"mode": "static", "format": act.fmt.name, "bits": act.fmt.bits,
                "symmetric": act.fmt.symmetric, "groups": act.groups,
                "scales": "two-level" if act.two_level else "float",
                "granularity": "per timestep bucket, "
                + ("per token" if act.groups == 1 else f"{act.groups} channel groups")}
    if isinstance(act, DynamicActivationQuant):
        return {"mode": "dynamic", "format": act.fmt.name, "bits": act.fmt.bits,
                "symmetric": act.fmt.symmetric, "group_size": act.group_size}
    if isinstance(act, FineGroupActivationQuant):
        return {"mode": "dynamic", "format": act.fmt.name, "bits": act.fmt.bits, "symmetric": True,
                "group_size": act.group_size, "scales": "e4m3-groups"}
    return {"mode": "none"}


def load_activation(layer: dict[str, Any], tensors: Tensors, bucket_of_t: torch.Tensor,
                    context: TimestepContext) -> nn.Module | None:
    name, a = layer["name"], layer["activation"]
    if a.get("scales", "float") not in ACTIVATION_SCALES:
        raise ValueError(f"{name}: unknown activation scales {a['scales']!r}; valid: {', '.join(ACTIVATION_SCALES)}")
    if a["mode"] == "static":
        scale, two_level = tensors[f"{name}.a_scale"], a.get("scales", "float") == "two-level"
        if two_level:
            try:
                split_two_level(scale, ACT_GROUP_FACTORS)
            except ValueError as e:
                raise ValueError(f"{name}.a_scale: {e}") from None
        return StaticActivationQuant(format_from_name(a["format"]), scale, tensors[f"{name}.a_zero"], bucket_of_t,
                                     context, two_level=two_level)
    if a["mode"] == "dynamic" and a.get("scales", "float") == "e4m3-groups":
        if a["format"] != fp4_fine_groups.FORMAT.name:
            raise ValueError(f"{name}: fine group activations are FP4 E2M1, not {a['format']}")
        return FineGroupActivationQuant(a["group_size"])
    if a["mode"] == "dynamic":
        return DynamicActivationQuant(format_from_name(a["format"]), a["group_size"])
    return None


__all__ = ["LAYER_STORAGE", "LayerStorage", "load_activation", "load_layer", "save_activation"]
