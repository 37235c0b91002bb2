"""Finding quantized GEMMs in a QDQ graph by their structure (onnx-graphsurgeon), never by names,
and the plugin each becomes, its inputs laid out for the Triton kernels.

A quantized GEMM is a MatMul whose second input is computed from constants only, among them
codes of a quantized type (INT4, INT8, UINT4, UINT8, FLOAT4E2M1, FLOAT8). Its parts:

    weight       DequantizeLinear(INT4 / INT8 / FLOAT4E2M1 codes [K, N], scale)      -> INT / FP4
                 Mul(Gather(table[16], Cast(UINT4 codes)), Gather(scale, rows))     -> FP4 E3M0 / E1M2
                 Transpose([Slice](Reshape(Gather(Cast(FLOAT16 codebook), unpack(UINT8 stream)))))
                                                                                     -> VQ
    activation   Reshape(DQ(Q(Reshape(x), Gather(table, bucket))), Shape(x))        -> static
                 the same blocked by 32 with Expand(Unsqueeze(Gather(.))) tables, UINT4
                 with zero points on two-level scales                                -> static, int4
                 DQ(Q(x, Max(Div(ReduceMax(|x|), qmax), tiny)))                      -> dynamic
                 DQ(Q(x, Mul(s, Gather(step table, count)))), FLOAT4E2M1            -> FP4, fine groups
                 the same of Reshape(MatMul(Reshape(x, [-1, 32]), H32), Shape(x))   -> FP4, each group
                                                                                        rotated first
                 x                                                                   -> none
    bias         a single Add of a constant [N] after the MatMul

The codes and scales read from the graph go through the kernels' own mapping
(exporter/kernels/linear.py: kernel_weights, with the ahead-of-time kernels' layouts), so the
plugin's inputs are exactly the operands the kernels take. Each match becomes a ``GemmMatch``: the
contract, its field values and its input tensors in contract order. What no kernel takes (channel
groups of activations other than UINT4's two-level groups, zero points of other activations,
Hadamard rotations other than of FP4's activation groups, float group scales) is a ``NotReplaced``
with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import torch
from onnx import TensorProto, numpy_helper

from exporter.contract.plugin_contract import FP4_GEMM, INT_GEMM, VQ_GEMM, PluginContract
from exporter.errors import UserError
from exporter.kernels.fp8_gemm import Fp8Weights
from exporter.kernels.int8_gemm import Int8Weights
from exporter.kernels.linear import QuantizedWeight, kernel_weights
from exporter.kernels.variants import AOT_LAYOUTS
from exporter.kernels.vq_gemm import VqWeights
from exporter.numerics import fp4_fine_groups, two_level_activations
from exporter.numerics.fp4 import FP4_FORMATS, Fp4Format
from exporter.numerics.fp4_groups import EXPONENTS
from exporter.numerics.hadamard import hadamard_matrix
from exporter.numerics.kernel_layout import FP4_GROUP, INT4_GROUP
from exporter.numerics.primitives import IntFormat
from exporter.onnx.fp4_graph import decode_table

QUANTIZED_TYPES = {TensorProto.INT4, TensorProto.UINT4, TensorProto.INT8, TensorProto.UINT8, TensorProto.FLOAT4E2M1,
                   TensorProto.FLOAT8E4M3FN, TensorProto.FLOAT8E5M2}
SUB_BYTE_TYPES = {TensorProto.INT4, TensorProto.UINT4, TensorProto.FLOAT4E2M1}
ACT_KIND_OF_TYPE = {TensorProto.INT8: "int8", TensorProto.FLOAT4E2M1: "fp4", TensorProto.UINT4: "int4"}
# what the kernels quantize to


class NotReplaced(Exception):
    """A quantized GEMM the rewrite leaves as it is; the message says why."""


@dataclass
class GemmMatch:
    layer: str  # for reports: the MatMul's node name
    contract: PluginContract
    fields: dict
    inputs: list[gs.Tensor]  # the plugin's inputs in contract order; inputs[0] is x (float32 in the graph)
    output: gs.Variable
    replaced_nodes: list[gs.Node]  # whose outputs the plugin takes over


@dataclass
class WeightMatch:
    """A GEMM's weights as the graph holds them: scalar codes with their scales, or a codebook."""

    n: int
    k: int
    scalar: QuantizedWeight | None = None
    vq: VqWeights | None = None


def producer(tensor: gs.Tensor) -> gs.Node | None:
    return tensor.inputs[0] if tensor.inputs else None


def _op(tensor: gs.Tensor, op: str) -> gs.Node | None:
    node = producer(tensor)
    return node if node is not None and node.op == op else None


def _const(tensor: gs.Tensor) -> np.ndarray | None:
    return np.asarray(tensor.values) if isinstance(tensor, gs.Constant) else None


class Initializers:
    """The graph's initializers by name, read without converting sub-byte types."""

    def __init__(self, proto: onnx.ModelProto) -> None:
        self.by_name = {t.name: t for t in proto.graph.initializer}

    def type_of(self, tensor: gs.Tensor) -> int | None:
        t = self.by_name.get(tensor.name) if isinstance(tensor, gs.Constant) else None
        return t.data_type if t is not None else None

    def codes(self, tensor: gs.Tensor) -> np.ndarray:
        """An initializer's codes as int16, one per element: 4-bit ones unpacked from ONNX's layout
        (low nibble first), INT4 as two's complement, FLOAT4E2M1 and UINT4 as their 4 bits."""
        t = self.by_name[tensor.name]
        if t.data_type not in SUB_BYTE_TYPES:
            return numpy_helper.to_array(t).astype(np.int16)
        if t.raw_data:
            raw = np.frombuffer(t.raw_data, dtype=np.uint8)
            nibbles = np.stack([raw & 0xF, raw >> 4], axis=-1).reshape(-1)[:int(np.prod(t.dims))].astype(np.int16)
        else:
            nibbles = numpy_helper.to_array(t).reshape(-1).view(np.uint8).astype(np.int16) & 0xF
        if t.data_type == TensorProto.INT4:
            nibbles = np.where(nibbles >= 8, nibbles - 16, nibbles)
        return nibbles.reshape(tuple(t.dims))

    def array(self, tensor: gs.Tensor) -> np.ndarray:
        return numpy_helper.to_array(self.by_name[tensor.name])


def constant_leaves(tensor: gs.Tensor) -> list[gs.Constant] | None:
    """The constants a tensor is computed from, or None when it depends on a graph input."""
    if isinstance(tensor, gs.Constant):
        return [tensor]
    node = producer(tensor)
    if node is None:
        return None
    leaves: list[gs.Constant] = []
    for t in node.inputs:
        sub = constant_leaves(t)
        if sub is None:
            return None
        leaves += sub
    return leaves


def is_quantized_gemm(node: gs.Node, inits: Initializers) -> bool:
    if node.op != "MatMul" or isinstance(node.inputs[1], gs.Constant):
        return False
    leaves = constant_leaves(node.inputs[1])
    return leaves is not None and any(inits.type_of(c) in QUANTIZED_TYPES for c in leaves)


def _scale_grid(scale: np.ndarray, axis: int, block: int, k: int, n: int) -> tuple[np.ndarray, int]:
    if scale.size == 1:
        return np.full((1, n), scale.reshape(()), dtype=np.float32), k
    if block == 0 and axis in (1, -1) and scale.shape == (n,):
        return scale.reshape(1, n).astype(np.float32), k
    if block > 0 and axis == 0 and scale.shape == (-(-k // block), n):
        return scale.astype(np.float32), block
    raise NotReplaced(f"weight scale of shape {list(scale.shape)} (axis {axis}, block_size {block}) for a "
                      f"[{k}, {n}] weight")


def _scalar(layer: str, fmt, codes_t: np.ndarray, grid: np.ndarray, group: int) -> WeightMatch:
    """Codes [K, N] and scales [G, N] as the graph holds them, transposed to the kernels' rows."""
    k, n = codes_t.shape
    weight = QuantizedWeight(layer, fmt, torch.from_numpy(np.ascontiguousarray(codes_t.T)),
                             torch.from_numpy(np.ascontiguousarray(grid.T)).float(), group)
    return WeightMatch(n, k, scalar=weight)


def _dequantize_weight(layer: str, dq: gs.Node, inits: Initializers) -> WeightMatch:
    codes, scale = dq.inputs[0], dq.inputs[1]
    code_type = inits.type_of(codes)
    if code_type in (TensorProto.UINT4, TensorProto.UINT8):
        raise NotReplaced("asymmetric (unsigned) weight codes: the kernels take symmetric weights")
    if code_type not in (TensorProto.INT4, TensorProto.INT8, TensorProto.FLOAT4E2M1) or _const(scale) is None:
        raise NotReplaced("weights dequantized from something other than constant INT4 / INT8 / FLOAT4E2M1 codes "
                          "and scales")
    if len(dq.inputs) > 2 and dq.inputs[2] is not None and np.any(_const(dq.inputs[2]) != 0):
        raise NotReplaced("weights with zero points: the kernels take symmetric weights")
    k, n = inits.by_name[codes.name].dims
    grid, group = _scale_grid(_const(scale), dq.attrs.get("axis", 1), dq.attrs.get("block_size", 0), k, n)
    fmt = {TensorProto.INT8: IntFormat(8), TensorProto.INT4: IntFormat(4)}.get(code_type, Fp4Format("e2m1"))
    return _scalar(layer, fmt, inits.codes(codes), grid, group)


def _table_weight(layer: str, mul: gs.Node, inits: Initializers) -> WeightMatch:
    values, rows = (_op(t, "Gather") for t in mul.inputs)
    cast = _op(values.inputs[1], "Cast") if values is not None else None
    if values is None or rows is None or cast is None or inits.type_of(cast.inputs[0]) != TensorProto.UINT4:
        raise NotReplaced("a constant weight computed by a Mul that is not an FP4 decode table")
    table, codes = _const(values.inputs[0]), cast.inputs[0]
    fmt = next((f for f in FP4_FORMATS if table is not None and table.shape == (16,)
                and np.array_equal(table, decode_table(f))), None)
    if fmt is None:
        raise NotReplaced("a 16-entry decode table that is no FP4 format's")
    scale, row_of_k = _const(rows.inputs[0]), _const(rows.inputs[1])
    k, n = inits.by_name[codes.name].dims
    if scale is None or row_of_k is None or scale.ndim != 2 or scale.shape[1] != n or row_of_k.shape != (k,):
        raise NotReplaced("FP4 decode-table scales that are not a constant [G, N] grid")
    group = k if scale.shape[0] == 1 else int(np.sum(row_of_k == 0))
    if not np.array_equal(row_of_k, np.arange(k) // group):
        raise NotReplaced("FP4 scale rows that are not contiguous groups of input channels")
    return _scalar(layer, fmt, inits.codes(codes), scale.astype(np.float32), group)


def _vq_weight(transpose: gs.Node, inits: Initializers) -> WeightMatch:
    rows = transpose.inputs[0]
    k = None
    if (sliced := _op(rows, "Slice")) is not None:
        k = int(_const(sliced.inputs[2]).reshape(-1)[0])
        rows = sliced.inputs[0]
    reshape = _op(rows, "Reshape")
    gather = _op(reshape.inputs[0], "Gather") if reshape is not None else None
    cast = _op(gather.inputs[0], "Cast") if gather is not None else None
    if cast is None or inits.type_of(cast.inputs[0]) != TensorProto.FLOAT16 or transpose.attrs.get("perm") != [1, 0]:
        raise NotReplaced("a transposed weight that is not a codebook decode")
    codebook = torch.from_numpy(inits.array(cast.inputs[0]).copy())
    n, width = (int(v) for v in _const(reshape.inputs[1]))
    streams = list({c.name: c for c in constant_leaves(gather.inputs[1]) or []
                    if inits.type_of(c) == TensorProto.UINT8}.values())
    if len(streams) != 1:
        raise NotReplaced("a codebook decode without one UINT8 assignment stream")
    try:
        stream = torch.from_numpy(inits.array(streams[0]).reshape(-1).copy())
        vq = VqWeights.from_stream(codebook, stream, n, k or width)
    except ValueError as e:
        raise NotReplaced(str(e)) from None
    return WeightMatch(n, k or width, vq=vq)


def match_weight(layer: str, weight: gs.Tensor, inits: Initializers) -> WeightMatch:
    node = producer(weight)
    if node is not None and node.op == "DequantizeLinear":
        return _dequantize_weight(layer, node, inits)
    if node is not None and node.op == "Mul":
        return _table_weight(layer, node, inits)
    if node is not None and node.op == "Transpose":
        return _vq_weight(node, inits)
    raise NotReplaced(f"a quantized weight computed by {node.op if node else 'nothing'}, which no plugin takes")


def _act_kind(q: gs.Node) -> str:
    dtype = q.attrs.get("output_dtype", 0)
    if dtype not in ACT_KIND_OF_TYPE:
        raise NotReplaced(f"activations quantized to ONNX type {dtype}: the kernels quantize to INT8, or FP4 on "
                          "fine groups")
    return ACT_KIND_OF_TYPE[dtype]


def match_activation(a: gs.Tensor, k: int) -> tuple[gs.Tensor, str, dict, dict[str, gs.Tensor]]:
    """The unquantized input, its kind (exporter/kernels/linear.py's ACT_KINDS), the activation
    fields and the static inputs (scale table, bucket)."""
    outer = _op(a, "Reshape")
    dq = _op(outer.inputs[0], "DequantizeLinear") if outer is not None else _op(a, "DequantizeLinear")
    q = _op(dq.inputs[0], "QuantizeLinear") if dq is not None else None
    if q is None:
        return a, "none", {"act_mode": "none", "act_format": "none"}, {}
    kind = _act_kind(q)
    if outer is not None:
        return _static_activation(q, kind, k)
    if len(q.inputs) > 2:
        raise NotReplaced("dynamic activations with zero points: the kernels take them symmetric")
    if isinstance(q.inputs[1], gs.Constant):
        raise NotReplaced("activations with one constant scale: the plugins take per-timestep or dynamic scales")
    group = q.attrs.get("block_size", 0)
    if q.attrs.get("axis", 1) != -1 or group != (k if kind == "int8" else FP4_GROUP):
        raise NotReplaced(f"dynamic activation scales per group of {group} channels: the kernels take one scale per "
                          f"token (INT8) or fine groups of {FP4_GROUP} (FP4)")
    if kind == "int8" and not _max_over_qmax(q.inputs[1]):
        raise NotReplaced("dynamic INT8 activation scales not computed as max|x| / qmax, which no kernel takes")
    if kind == "fp4" and not _fine_groups(q.inputs[1]):
        raise NotReplaced("FP4 activation scales not on fine groups (a float per token times m 2^t per group), "
                          "which no kernel takes")
    fmt = "int8" if kind == "int8" else "fp4e2m1"
    return q.inputs[0], kind, {"act_mode": "dynamic", "act_format": fmt}, {}


def _max_over_qmax(scale: gs.Tensor) -> bool:
    """Whether a dynamic scale is max|x| / qmax per token, floored, as exporter/onnx/qdq.py's
    dynamic_scale computes it (activation_quant.quantize_rows's dynamic scale)."""
    floor = _op(scale, "Max")
    div = next((d for t in floor.inputs if (d := _op(t, "Div")) is not None), None) if floor is not None else None
    if div is None or _const(div.inputs[1]) is None:
        return False
    reduce = _op(div.inputs[0], "ReduceMax")
    return reduce is not None and _op(reduce.inputs[0], "Abs") is not None


def _fine_groups(scale: gs.Tensor) -> bool:
    """Whether a scale is s * 2^t_max * mu as exporter/onnx/qdq.py's fine_group_scale computes it
    (activation_quant.quantize_rows's FP4 operands): a Mul by a Gather from the table of steps, at
    the count of MULTIPLIERS[1:] at least the group's ratio times REACH."""
    mul = _op(scale, "Mul")
    top = np.float32(2.0 ** EXPONENTS[fp4_fine_groups.KIND][1])
    steps = np.array(fp4_fine_groups.MULTIPLIERS, np.float32) * top
    for gather in (g for t in (mul.inputs if mul is not None else []) if (g := _op(t, "Gather")) is not None):
        table = _const(gather.inputs[0])
        count = _op(gather.inputs[1], "ReduceSum")
        cast = _op(count.inputs[0], "Cast") if count is not None else None
        compare = _op(cast.inputs[0], "GreaterOrEqual") if cast is not None else None
        if table is None or not np.array_equal(table, steps) or compare is None:
            continue
        finer = _const(compare.inputs[0])
        unsqueeze = _op(compare.inputs[1], "Unsqueeze")
        reach = _op(unsqueeze.inputs[0], "Mul") if unsqueeze is not None else None
        factors = [_const(t) for t in reach.inputs] if reach is not None else []
        if (finer is not None and np.array_equal(finer, steps[1:] / top)
                and any(f is not None and f.size == 1 and f == np.float32(fp4_fine_groups.REACH) for f in factors)):
            return True
    return False


def _table_row(t: gs.Tensor) -> gs.Node | None:
    """The Gather(constant table, bucket) a static scale is read from."""
    gather = _op(t, "Gather")
    return gather if gather is not None and _const(gather.inputs[0]) is not None else None


def _expanded_table_row(t: gs.Tensor) -> gs.Node | None:
    """The Gather(constant table, bucket) behind Expand(Unsqueeze(.)) (a blocked static table
    spread over the tokens), with an optional Cast after it."""
    cast = _op(t, "Cast")
    expand = _op(cast.inputs[0] if cast is not None else t, "Expand")
    unsqueeze = _op(expand.inputs[0], "Unsqueeze") if expand is not None else None
    return _table_row(unsqueeze.inputs[0]) if unsqueeze is not None else None


def _two_level_activation(q: gs.Node, k: int) -> tuple[gs.Tensor, str, dict, dict[str, gs.Tensor]]:
    """Static UINT4 per group of INT4_GROUP channels and timestep bucket (x viewed as [B, tokens, K],
    blocked along the last axis) on two-level scales: the kernel's tables s [buckets] and the
    factor and zero point of each group [buckets, G, 2]."""
    flat = _op(q.inputs[0], "Reshape")
    scale = _expanded_table_row(q.inputs[1])
    zero = _expanded_table_row(q.inputs[2]) if len(q.inputs) > 2 else None
    if q.attrs.get("axis") != -1 or q.attrs.get("block_size", 0) != INT4_GROUP:
        raise NotReplaced(f"static UINT4 activations not in groups of {INT4_GROUP} channels, which no kernel takes")
    if flat is None or scale is None or zero is None or scale.inputs[1] is not zero.inputs[1]:
        raise NotReplaced("static UINT4 activations whose scales and zero points are not constant tables per "
                          "timestep bucket")
    table, zeros = _const(scale.inputs[0]), _const(zero.inputs[0])
    if table.ndim != 2 or zeros.shape != table.shape or table.shape[1] * INT4_GROUP != k:
        raise NotReplaced(f"static UINT4 activation tables of shape {table.shape}: [buckets, K / {INT4_GROUP}]")
    try:
        s, groups = two_level_activations.kernel_tables(torch.from_numpy(table.astype(np.float32)),
                                                        torch.from_numpy(zeros.astype(np.float32)))
    except ValueError as e:
        raise NotReplaced(f"static UINT4 activation scales off the two-level grid, which no kernel takes ({e})") from None
    name = scale.inputs[0].name
    inputs = {"act_scale_table": gs.Constant(f"{name}.bucket_scale", s.numpy()),
              "act_groups": gs.Constant(f"{name}.groups", _bytes(groups)),
              "timestep_bucket": scale.inputs[1]}
    return flat.inputs[0], "int4", {"act_mode": "static", "act_format": "uint4"}, inputs


def _static_activation(q: gs.Node, kind: str, k: int) -> tuple[gs.Tensor, str, dict, dict[str, gs.Tensor]]:
    """One scale per sample's tokens, the row of its timestep bucket (x flattened per sample, axis 0),
    or UINT4 on two-level groups."""
    if kind == "int4":
        return _two_level_activation(q, k)
    flat = _op(q.inputs[0], "Reshape")
    scale = _table_row(q.inputs[1])
    if kind != "int8":
        raise NotReplaced("static FP4 activations: the kernels quantize FP4 dynamically")
    if len(q.inputs) > 2:
        raise NotReplaced("static INT8 activations with zero points: the kernels take them symmetric")
    if q.attrs.get("block_size", 0) or q.attrs.get("axis") != 0:
        raise NotReplaced("static activation scales per channel group: the kernels take one scale per token")
    if flat is None or scale is None or _const(scale.inputs[0]).ndim != 1:
        raise NotReplaced("per-sample activation scales that are not a constant table row per timestep bucket")
    inputs = {"act_scale_table": scale.inputs[0], "timestep_bucket": scale.inputs[1]}
    return flat.inputs[0], kind, {"act_mode": "static", "act_format": "int8"}, inputs


def rotation_of(x: gs.Tensor) -> tuple[gs.Tensor, np.ndarray] | None:
    """(x0, H) when x is Reshape(MatMul(Reshape(x0, [-1, b]), H [b, b]), Shape(x0)), a rotation
    as exporter/onnx/qdq.py's ``rotation`` builds it; else None."""
    outer = _op(x, "Reshape")
    matmul = _op(outer.inputs[0], "MatMul") if outer is not None else None
    inner = _op(matmul.inputs[0], "Reshape") if matmul is not None else None
    h = _const(matmul.inputs[1]) if matmul is not None else None
    if inner is None or h is None or h.ndim != 2 or h.shape[0] != h.shape[1]:
        return None
    return inner.inputs[0], h


def _rotated_activation(x: gs.Tensor, act_kind: str, act_fields: dict) -> tuple[gs.Tensor, dict]:
    """The input before a Hadamard rotation the FP4 quantizer does itself (act_format
    fp4e2m1_hadamard), or x unchanged when it is not rotated; NotReplaced for other rotations."""
    rotation = rotation_of(x)
    if rotation is None:
        return x, act_fields
    x0, h = rotation
    if act_kind != "fp4" or not np.array_equal(h, hadamard_matrix(FP4_GROUP).numpy()):
        raise NotReplaced(f"a rotated input ({h.shape[0]}-channel blocks): the kernels rotate only FP4 activation "
                          f"groups, by the {FP4_GROUP}-point Hadamard matrix")
    return x0, {**act_fields, "act_format": "fp4e2m1_hadamard"}


def _bytes(values: torch.Tensor) -> np.ndarray:
    """A kernel operand's bytes as INT8 (the contract's carrier of packed data)."""
    return values.contiguous().view(torch.uint8).numpy().view(np.int8)


def _scalar_inputs(weights: Int8Weights | Fp8Weights) -> dict[str, np.ndarray]:
    side = weights.factor if isinstance(weights, Int8Weights) else weights.offset
    arrays = {"weight": _bytes(weights.codes), "weight_scale": weights.w_scale.float().numpy()}
    if weights.four_bit:
        arrays["weight_factor" if isinstance(weights, Int8Weights) else "weight_offset"] = _bytes(side)
    return arrays


def _plugin_weights(layer: str, w: WeightMatch, act_kind: str) -> tuple[PluginContract, dict, dict[str, np.ndarray]]:
    """The contract, its weight fields and its weight inputs by port."""
    shape = {"in_features": w.k, "out_features": w.n}
    if w.vq is not None:
        if act_kind != "none":
            raise NotReplaced("codebook weights with quantized activations: the codebook kernel takes FP16 activations")
        codewords, dim = w.vq.codebook.shape
        return VQ_GEMM, {**shape, "codewords": codewords, "codeword_dim": dim}, {
            "indices": _bytes(w.vq.indices), "codebook": w.vq.codebook.numpy()}
    try:
        weights = kernel_weights(w.scalar, act_kind, AOT_LAYOUTS)
    except UserError as e:
        raise NotReplaced(str(e)) from None
    fields = {**shape, "weight_bits": 4 if weights.four_bit else 8}
    if isinstance(w.scalar.fmt, Fp4Format):
        return FP4_GEMM, {**fields, "weight_format": w.scalar.fmt.kind}, _scalar_inputs(weights)
    return INT_GEMM, fields, _scalar_inputs(weights)


def match_gemm(matmul: gs.Node, inits: Initializers) -> GemmMatch:
    weight = match_weight(matmul.name, matmul.inputs[1], inits)
    x, act_kind, act_fields, act_inputs = match_activation(matmul.inputs[0], weight.k)
    x, act_fields = _rotated_activation(x, act_kind, act_fields)
    contract, fields, weight_inputs = _plugin_weights(matmul.name, weight, act_kind)
    output, replaced, bias = matmul.outputs[0], [matmul], []
    add = output.outputs[0] if len(output.outputs) == 1 else None
    if add is not None and add.op == "Add":
        other = add.inputs[1] if add.inputs[0] is output else add.inputs[0]
        values = _const(other)
        if values is not None and values.shape == (weight.n,):
            output, replaced, bias = add.outputs[0], [add], [other]
    fields = {**fields, **(act_fields if "act_mode" in contract.field_names else {}), "has_bias": int(bool(bias))}
    try:
        contract.check(fields)
    except ValueError as e:
        raise NotReplaced(str(e)) from None
    prefix = matmul.inputs[1].name
    by_port = {"x": x, "bias": (bias or [None])[0], **act_inputs,
               **{port: gs.Constant(f"{prefix}.{port}", np.ascontiguousarray(v)) for port, v in weight_inputs.items()}}
    inputs = [by_port[p.name] for p in contract.present_inputs(fields)]
    return GemmMatch(matmul.name, contract, fields, inputs, output, replaced)
