"""Finding quantized GEMMs in a QDQ graph by their structure (onnx-graphsurgeon), never by names.

A quantized GEMM is a MatMul whose second input is computed from constants only, among them
codes of a quantized type (INT4, INT8, UINT4, UINT8, FLOAT4E2M1, FLOAT8). Its parts:

    weight       DequantizeLinear(INT4 / INT8 / FLOAT4E2M1 codes [K, N], scale)      -> INT / FP4
                 Mul(Gather(table[16], Cast(UINT4 codes)), Gather(scale, rows))     -> FP4 E3M0 / E1M2
                 Transpose([Slice](Reshape(Gather(Cast(FLOAT16 codebook), unpack(UINT8 stream)))))
                                                                                     -> VQ
    activation   Reshape(DQ(Q(Reshape(x), Gather(table, bucket))), Shape(x))        -> static
                 the same with the Gathers expanded over tokens, blocked Q/DQ        -> static, groups
                 and a zero point Gather(UINT8 table, bucket) [Cast to UINT4]        -> static uint4
                 DQ(Q(x, Max(Div(ReduceMax(|x|), qmax), tiny)))                      -> dynamic
                 (FP4 on power-of-two groups, scale s * 2**t: no plugin takes it yet, NotReplaced)
                 x                                                                   -> none
    rotation     Reshape(MatMul(Reshape(x0, [-1, b]), H [b, b]), Shape(x0)) before the activation
    bias         a single Add of a constant [N] after the MatMul

Each match becomes a ``GemmMatch``: the contract, its field values and its input tensors in
contract order. What does not fit is a ``NotReplaced`` with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import TensorProto, numpy_helper

from exporter.export.fp4_graph import decode_table
from exporter.quant.fp4 import FP4_FORMATS
from exporter.rewrite.contract import FP4_GEMM, INT_GEMM, VQ_GEMM, PluginContract

QUANTIZED_TYPES = {TensorProto.INT4, TensorProto.UINT4, TensorProto.INT8, TensorProto.UINT8, TensorProto.FLOAT4E2M1,
                   TensorProto.FLOAT8E4M3FN, TensorProto.FLOAT8E5M2}
ACT_FORMAT_OF_TYPE = {TensorProto.INT8: "int8", TensorProto.FLOAT8E4M3FN: "fp8e4m3", TensorProto.FLOAT4E2M1: "fp4e2m1",
                      TensorProto.INT4: "int4", TensorProto.UINT4: "uint4"}


class NotReplaced(Exception):
    """A quantized GEMM the rewrite leaves as it is; the message says why."""


@dataclass
class GemmMatch:
    layer: str  # for reports: the MatMul's node name
    contract: PluginContract
    fields: dict
    inputs: list[gs.Tensor]
    output: gs.Variable
    replaced_nodes: list[gs.Node]  # whose outputs the plugin takes over


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

    def packed_bytes(self, tensor: gs.Tensor) -> np.ndarray:
        """A 4-bit initializer's bytes as int8 [K, N / 2], in ONNX's layout (low nibble first)."""
        t = self.by_name[tensor.name]
        k, n = t.dims
        if n % 2:
            raise NotReplaced(f"4-bit weights with an odd number of output channels ({n}) do not pack by rows")
        raw = t.raw_data or bytes(numpy_helper.to_array(t).astype(np.uint8))
        return np.frombuffer(raw, dtype=np.int8).reshape(k, n // 2).copy()

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


def _dequantize_weight(dq: gs.Node, inits: Initializers) -> tuple[PluginContract, dict, list[gs.Tensor]]:
    codes, scale = dq.inputs[0], dq.inputs[1]
    code_type = inits.type_of(codes)
    if code_type in (TensorProto.UINT4, TensorProto.UINT8):
        raise NotReplaced("asymmetric (unsigned) weight codes: the plugins take symmetric weights")
    if code_type not in (TensorProto.INT4, TensorProto.INT8, TensorProto.FLOAT4E2M1) or _const(scale) is None:
        raise NotReplaced("weights dequantized from something other than constant INT4 / INT8 / FLOAT4E2M1 codes "
                          "and scales")
    if len(dq.inputs) > 2 and dq.inputs[2] is not None and np.any(_const(dq.inputs[2]) != 0):
        raise NotReplaced("weights with zero points: the plugins take symmetric weights")
    k, n = inits.by_name[codes.name].dims
    grid, group = _scale_grid(_const(scale), dq.attrs.get("axis", 1), dq.attrs.get("block_size", 0), k, n)
    shape = {"in_features": k, "out_features": n, "group_size": group}
    packed = inits.array(codes).astype(np.int8) if code_type == TensorProto.INT8 else inits.packed_bytes(codes)
    inputs = [_new_const(codes, "packed", packed), _new_const(scale, "grid", grid)]
    if code_type == TensorProto.FLOAT4E2M1:
        return FP4_GEMM, {**shape, "weight_format": "e2m1"}, inputs
    return INT_GEMM, {**shape, "weight_bits": 8 if code_type == TensorProto.INT8 else 4}, inputs


def _table_weight(mul: gs.Node, inits: Initializers) -> tuple[PluginContract, dict, list[gs.Tensor]]:
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
    fields = {"in_features": k, "out_features": n, "group_size": group, "weight_format": fmt.kind}
    return FP4_GEMM, fields, [_new_const(codes, "packed", inits.packed_bytes(codes)), rows.inputs[0]]


def _vq_weight(transpose: gs.Node, inits: Initializers) -> tuple[PluginContract, dict, list[gs.Tensor]]:
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
    codebook = cast.inputs[0]
    codewords, dim = inits.by_name[codebook.name].dims
    n, width = (int(v) for v in _const(reshape.inputs[1]))
    streams = list({c.name: c for c in constant_leaves(gather.inputs[1]) or []
                    if inits.type_of(c) == TensorProto.UINT8}.values())
    bits = int(np.log2(codewords))
    per_row = width // dim
    if len(streams) != 1 or 2**bits != codewords or width % dim:
        raise NotReplaced("a codebook decode without one UINT8 assignment stream")
    stream = inits.array(streams[0]).reshape(-1)
    if stream.size != -(-n * per_row // 8) * bits:
        raise NotReplaced(f"an assignment stream of {stream.size} bytes for {n} x {per_row} {bits}-bit indices")
    fields = {"in_features": k or width, "out_features": n, "codewords": codewords, "codeword_dim": dim,
              "index_bits": bits}
    return VQ_GEMM, fields, [codebook, _new_const(streams[0], "bytes", stream.view(np.int8))]


def match_weight(weight: gs.Tensor, inits: Initializers) -> tuple[PluginContract, dict, list[gs.Tensor]]:
    node = producer(weight)
    if node is not None and node.op == "DequantizeLinear":
        return _dequantize_weight(node, inits)
    if node is not None and node.op == "Mul":
        return _table_weight(node, inits)
    if node is not None and node.op == "Transpose":
        return _vq_weight(node, inits)
    raise NotReplaced(f"a quantized weight computed by {node.op if node else 'nothing'}, which no plugin takes")


def _act_format(q: gs.Node) -> str:
    dtype = q.attrs.get("output_dtype", 0)
    if dtype not in ACT_FORMAT_OF_TYPE:
        raise NotReplaced(f"activations quantized to ONNX type {dtype}, which no plugin takes")
    return ACT_FORMAT_OF_TYPE[dtype]


def match_activation(a: gs.Tensor, k: int) -> tuple[gs.Tensor, dict, dict[str, gs.Tensor]]:
    """The unquantized input, the activation fields, and the static inputs (scale table, bucket)."""
    outer = _op(a, "Reshape")
    dq = _op(outer.inputs[0], "DequantizeLinear") if outer is not None else _op(a, "DequantizeLinear")
    q = _op(dq.inputs[0], "QuantizeLinear") if dq is not None else None
    if q is None:
        return a, {"act_mode": "none", "act_format": "none", "act_group_size": 0}, {}
    fmt = _act_format(q)
    zero = q.inputs[2] if len(q.inputs) > 2 else None
    if outer is not None:
        return _static_activation(q, fmt, zero, k)
    if zero is not None:
        raise NotReplaced("dynamic activations with zero points: the plugins take them symmetric")
    if isinstance(q.inputs[1], gs.Constant):
        raise NotReplaced("activations with one constant scale: the plugins take per-timestep or dynamic scales")
    if not _max_over_qmax(q.inputs[1]):
        raise NotReplaced("dynamic activation scales not computed as max|x| / qmax (e.g. FP4 on fine "
                          "groups: a float per token times m 2^t per group), which no plugin takes")
    group = q.attrs.get("block_size", 0)
    if q.attrs.get("axis", 1) not in (-1,) or not group or k % group:
        raise NotReplaced("dynamic activation scales that are not blocked along the channels")
    return q.inputs[0], {"act_mode": "dynamic", "act_format": fmt, "act_group_size": 0 if group == k else group}, {}


def _max_over_qmax(scale: gs.Tensor) -> bool:
    """Whether a dynamic scale is max|x| / qmax per token or group, floored, as
    exporter/export/qdq.py's dynamic_scale computes it (the plugins' dynamic scale)."""
    floor = _op(scale, "Max")
    div = next((d for t in floor.inputs if (d := _op(t, "Div")) is not None), None) if floor is not None else None
    if div is None or _const(div.inputs[1]) is None:
        return False
    amax = div.inputs[0]
    if (reshape := _op(amax, "Reshape")) is not None:
        amax = reshape.inputs[0]
    reduce = _op(amax, "ReduceMax")
    if reduce is None:
        return False
    magnitude = reduce.inputs[0]
    if (reshape := _op(magnitude, "Reshape")) is not None:
        magnitude = reshape.inputs[0]
    return _op(magnitude, "Abs") is not None


def _table_row(t: gs.Tensor, grouped: bool) -> gs.Node | None:
    """The Gather(constant table, bucket) a static scale or zero point is read from."""
    if (cast := _op(t, "Cast")) is not None:
        t = cast.inputs[0]
    if grouped:
        expand = _op(t, "Expand")
        unsqueeze = _op(expand.inputs[0], "Unsqueeze") if expand is not None else None
        if unsqueeze is None:
            return None
        t = unsqueeze.inputs[0]
    gather = _op(t, "Gather")
    return gather if gather is not None and _const(gather.inputs[0]) is not None else None


def _static_activation(q: gs.Node, fmt: str, zero: gs.Tensor | None,
                       k: int) -> tuple[gs.Tensor, dict, dict[str, gs.Tensor]]:
    """Per-sample scales: whole tokens (axis 0 of x flattened per sample) or channel groups
    (blocked along the channels); the plugin inputs by contract port."""
    flat = _op(q.inputs[0], "Reshape")
    block = q.attrs.get("block_size", 0)
    grouped = bool(block) and q.attrs.get("axis") == -1
    scale = _table_row(q.inputs[1], grouped)
    if flat is None or scale is None or not (grouped or q.attrs.get("axis") == 0) or (grouped and k % block):
        raise NotReplaced("per-sample activation scales that are not a constant table row per timestep bucket")
    group = block if grouped and block != k else 0
    if group and fmt == "fp4e2m1":
        raise NotReplaced("static FP4 activations per channel group: the plugins take them per token")
    inputs = {"act_scale_table": scale.inputs[0], "timestep_bucket": scale.inputs[1]}
    if zero is not None:
        row = _table_row(zero, grouped)
        if fmt != "uint4" or row is None or row.inputs[1] is not scale.inputs[1]:
            raise NotReplaced(f"static {fmt} activations with zero points: the plugins take zero points for "
                              "4-bit activations, from a table row per timestep bucket")
        table = row.inputs[0]
        inputs["act_zero_table"] = _new_const(table, "int8", _const(table).astype(np.int8))
    elif fmt == "uint4":  # ONNX's default zero point
        table = scale.inputs[0]
        inputs["act_zero_table"] = _new_const(table, "zero", np.zeros(_const(table).shape, np.int8))
    return flat.inputs[0], {"act_mode": "static", "act_format": fmt, "act_group_size": group}, inputs


def match_rotation(x: gs.Tensor) -> tuple[gs.Tensor, int, list[gs.Tensor]]:
    """The input before a Hadamard rotation, the block, and [H]; (x, 0, []) when x is not rotated."""
    outer = _op(x, "Reshape")
    matmul = _op(outer.inputs[0], "MatMul") if outer is not None else None
    inner = _op(matmul.inputs[0], "Reshape") if matmul is not None else None
    h = _const(matmul.inputs[1]) if matmul is not None else None
    shape = _const(inner.inputs[1]) if inner is not None else None
    if h is None or shape is None or h.ndim != 2 or h.shape[0] != h.shape[1] or list(shape) != [-1, h.shape[0]]:
        return x, 0, []
    if not np.allclose(h @ h.T, np.eye(h.shape[0]), atol=1e-5):
        raise NotReplaced("an input rotation that is not orthonormal")
    return inner.inputs[0], h.shape[0], [matmul.inputs[1]]


def match_gemm(matmul: gs.Node, inits: Initializers) -> GemmMatch:
    contract, fields, weight_inputs = match_weight(matmul.inputs[1], inits)
    x, act_fields, act_inputs = match_activation(matmul.inputs[0], fields["in_features"])
    x, block, rotation_inputs = match_rotation(x)
    output, replaced, bias = matmul.outputs[0], [matmul], []
    add = output.outputs[0] if len(output.outputs) == 1 else None
    if add is not None and add.op == "Add":
        other = add.inputs[1] if add.inputs[0] is output else add.inputs[0]
        values = _const(other)
        if values is not None and values.shape == (fields["out_features"],):
            output, replaced, bias = add.outputs[0], [add], [other]
    fields = {**fields, **act_fields, "rotation_block": block, "has_bias": int(bool(bias))}
    try:
        contract.check(fields)
    except ValueError as e:
        raise NotReplaced(str(e)) from None
    by_port = {"x": x, "hadamard": (rotation_inputs or [None])[0], "bias": (bias or [None])[0], **act_inputs}
    ports = [p.name for p in contract.present_inputs(fields)]
    weights = iter(weight_inputs)
    inputs = [by_port[p] if p in by_port else next(weights) for p in ports]
    return GemmMatch(matmul.name, contract, fields, inputs, output, replaced)


def _new_const(source: gs.Tensor, suffix: str, values: np.ndarray) -> gs.Constant:
    return gs.Constant(f"{source.name}.{suffix}", np.ascontiguousarray(values))
