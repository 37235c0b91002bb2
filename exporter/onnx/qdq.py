"""QDQ ONNX: each quantized Linear as standard QuantizeLinear / DequantizeLinear / MatMul nodes.

Per quantized Linear `L` (x [..., K] -> y [..., N]):

    weight   L.weight_q      INT4 / UINT4 / FLOAT4E2M1 (packed, 2 per byte) or INT8 / UINT8
                             [K, N]: the transposed codes, so that y = x @ W^T is a plain MatMul;
                             E3M0 / E1M2 codes as UINT4 with a decode table (fp4_graph.py)
             L.weight_scale  float32 [ceil(K/g), N] blocked along axis 0 (block_size g), or
                             [N] along axis 1 (per channel), or a scalar (per tensor)
             L.weight_zero   same shape and type as the codes' scale grid (asymmetric only)
    static   bucket = Gather(timestep_bucket_table [T], timestep)   (shared by all layers)
             scale  = Gather(L.act_scale [buckets], bucket) -> [B]
             x is flattened to [B, F] and quantized per sample with Q/DQ along axis 0, so each
             sample uses the scale of its own timestep; no extra graph input. With channel
             groups, L.act_scale is [buckets, G]: x is viewed as [B, tokens, K] and quantized
             blocked along the last axis with the scales expanded to [B, tokens, G]. Asymmetric
             activations add L.act_zero (UINT8, cast to UINT4 once gathered) of the same shape.
    dynamic  scale = ReduceMax(|x|) / qmax per token (per group of g channels when g < K),
             then blocked Q/DQ along the last axis (FLOAT4E2M1 for FP4 activations).
    FP4 on   the scale of each group of g channels is s * 2**t_max * mu (fp4_fine_groups.py),
    fine     from comparisons only: amax = ReduceMax(|x|) per token, s = max(amax / (6 * 2**t_max),
    groups   tiny); reach = group amax / max(amax, tiny) * 6/6.5; level = #{mu in MULTIPLIERS[1:]:
             mu >= reach}, 2**t_max * mu from a table; then blocked FLOAT4E2M1 Q/DQ as above.
    rotated  x H before the activation quantizer: x reshaped to [-1, b], MatMul with the b x b
             Hadamard block L.hadamard, reshaped back; the weight codes already hold W H.
    codebook a VQ Linear's weight is decoded from its codebook and packed assignments by
             standard ops (vq_graph.py); its activations stay FP.

Graphs with FLOAT4E2M1 use opset 23; the other graphs stay at opset 21.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from exporter.errors import UserError
from exporter.numerics import fp4_fine_groups
from exporter.numerics.fp4 import Fp4Format
from exporter.numerics.fp4_groups import EXPONENTS, TINY
from exporter.numerics.hadamard import hadamard_matrix
from exporter.numerics.primitives import PER_CHANNEL, PER_TENSOR, SMALLEST_SCALE, QuantFormat, activation_group
from exporter.onnx.files import deduplicate_initializers
from exporter.onnx.fp4_graph import use_fp4_opset, weight_decode
from exporter.onnx.graph_builder import Builder, code_tensor, float_tensor, int64_tensor, onnx_quant_type
from exporter.onnx.tracing import INPUT_NAMES, MARKER_OP, OPSET
from exporter.onnx.vq_graph import vq_weight
from exporter.quant.qlinear import (
    DecodedLinear,
    DynamicActivationQuant,
    FineGroupActivationQuant,
    QuantLinear,
    StaticActivationQuant,
)
from exporter.quant.vq_linear import VqLinear

BUCKET_TABLE = "timestep_bucket_table"
BUCKET = "timestep_bucket"


def _weight(b: Builder, q: QuantLinear) -> str:
    codes_t = q.codes.T.contiguous()  # [K, N]
    scale, zero = q.w_scale.T.contiguous(), q.w_zero.T.contiguous()  # [groups, N]
    codes = b.const(code_tensor(b.name("weight_q"), codes_t, q.fmt))
    if onnx_quant_type(q.fmt) == TensorProto.UINT4 and isinstance(q.fmt, Fp4Format):
        group = q.group_size if scale.shape[0] > 1 else q.in_features
        return weight_decode(b, codes, q.fmt, b.const(float_tensor(b.name("weight_scale"), scale)), group,
                             q.in_features)
    inputs = [codes]
    attrs: dict = {}
    if q.group_size == PER_TENSOR:
        scale, zero = scale.reshape(()), zero.reshape(())
    elif q.group_size == PER_CHANNEL or q.group_size >= q.in_features:
        scale, zero, attrs = scale.reshape(-1), zero.reshape(-1), {"axis": 1}
    else:
        attrs = {"axis": 0, "block_size": q.group_size}
    inputs.append(b.const(float_tensor(b.name("weight_scale"), scale)))
    if not q.fmt.symmetric:
        inputs.append(b.const(code_tensor(b.name("weight_zero"), zero.round().to(torch.uint8), q.fmt)))
    return b.node("DequantizeLinear", inputs, **attrs)


def static_activation(b: Builder, x: str, scale_table: str, zero_table: str | None, fmt: QuantFormat,
                      bucket: str, groups: int = 0, k: int = 0) -> str:
    """x quantized per sample with the scales of its timestep bucket. No groups (0): x flattened
    to [B, F], Q/DQ along axis 0 with scale_table[bucket] [B]. ``groups`` groups of k / groups
    channels (tables [buckets, groups], even one group): x viewed as [B, tokens, k], blocked Q/DQ
    along the last axis with scale_table[bucket] [B, groups] expanded over the tokens."""
    tables = [scale_table] if zero_table is None else [scale_table, zero_table]
    params = [b.node("Gather", [table, bucket]) for table in tables]
    if not groups:
        flat = b.node("Reshape", [x, b.const(int64_tensor(b.name("flat_shape"), [0, -1]))])
        axes: dict = {"axis": 0}
    else:
        flat = b.node("Reshape", [x, b.const(int64_tensor(b.name("token_shape"), [0, -1, k]))])
        grid = b.node("Concat", [b.node("Shape", [flat], end=2), b.const(int64_tensor(b.name("groups"), [groups]))],
                      axis=0)
        one = b.const(int64_tensor(b.name("token_axis"), [1]))
        params = [b.node("Expand", [b.node("Unsqueeze", [p, one]), grid]) for p in params]
        axes = {"axis": -1, "block_size": k // groups}
    if zero_table is not None and fmt.bits == 4:  # stored as UINT8: Gather and Expand take no 4-bit types
        params[1] = b.node("Cast", [params[1]], to=onnx_quant_type(fmt))
    q = b.node("QuantizeLinear", [flat] + params, output_dtype=onnx_quant_type(fmt), **axes)
    dq = b.node("DequantizeLinear", [q] + params, **axes)
    return b.node("Reshape", [dq, b.node("Shape", [x])])


def dynamic_scale(b: Builder, x: str, fmt: QuantFormat, group: int, k: int) -> str:
    """max|x| / qmax over each group of ``group`` channels of the last axis (group == k: the whole
    token), floored at a tiny positive value: [..., k / group], the blocked scale of x."""
    tiny = b.const(float_tensor(b.name("tiny"), np.array(SMALLEST_SCALE, np.float32)))
    magnitude = b.node("Abs", [x])
    if group < k:
        magnitude = b.node("Reshape", [magnitude, b.const(int64_tensor(b.name("group_rows"), [-1, group]))])
    amax = b.node("ReduceMax", [magnitude, b.const(int64_tensor(b.name("last_axis"), [-1]))], keepdims=1)
    if group < k:
        leading = b.node("Shape", [x], end=-1)
        groups = b.const(int64_tensor(b.name("groups"), [k // group]))
        amax = b.node("Reshape", [amax, b.node("Concat", [leading, groups], axis=0)])
    scale = b.node("Div", [amax, b.const(float_tensor(b.name("qmax"), np.array(fmt.qmax)))])
    return b.node("Max", [scale, tiny])


def _dynamic_activation(b: Builder, x: str, act: DynamicActivationQuant, k: int) -> str:
    if not act.fmt.symmetric:
        raise UserError("export supports symmetric dynamic activations only")
    g = activation_group(act.group_size, k)
    scale = dynamic_scale(b, x, act.fmt, g, k)
    q = b.node("QuantizeLinear", [x, scale], output_dtype=onnx_quant_type(act.fmt), axis=-1, block_size=g)
    return b.node("DequantizeLinear", [q, scale], axis=-1, block_size=g)


def fine_group_scale(b: Builder, x: str, group: int, k: int) -> str:
    """s * 2**t_max * mu of each group of ``group`` channels of the last axis, [..., k / group]:
    exactly fp4_fine_groups.quantize's scales, the level from comparisons with MULTIPLIERS."""
    last = b.const(int64_tensor(b.name("last_axis"), [-1]))
    tiny = b.const(float_tensor(b.name("tiny"), np.array(TINY, np.float32)))
    magnitude = b.node("Reshape", [b.node("Abs", [x]), b.const(int64_tensor(b.name("group_rows"), [-1, group]))])
    group_amax = b.node("ReduceMax", [magnitude, last], keepdims=1)
    shape = b.node("Concat", [b.node("Shape", [x], end=-1), b.const(int64_tensor(b.name("groups"), [k // group]))],
                   axis=0)
    group_amax = b.node("Reshape", [group_amax, shape])  # [..., G]
    amax = b.node("ReduceMax", [group_amax, last], keepdims=1)  # [..., 1]
    top = 2.0 ** EXPONENTS[fp4_fine_groups.KIND][1]
    row_qmax = b.const(float_tensor(b.name("row_qmax"), np.array(fp4_fine_groups.FORMAT.qmax * top, np.float32)))
    s = b.node("Max", [b.node("Div", [amax, row_qmax]), tiny])
    reach = b.node("Mul", [b.node("Div", [group_amax, b.node("Max", [amax, tiny])]),
                           b.const(float_tensor(b.name("reach"), np.array(fp4_fine_groups.REACH, np.float32)))])
    multipliers = np.array(fp4_fine_groups.MULTIPLIERS, np.float32)
    at_least = b.node("GreaterOrEqual", [b.const(float_tensor(b.name("finer_multipliers"), multipliers[1:])),
                                         b.node("Unsqueeze", [reach, last])])
    level = b.node("ReduceSum", [b.node("Cast", [at_least], to=TensorProto.INT64), last], keepdims=0)
    steps = b.const(float_tensor(b.name("group_steps"), multipliers * np.float32(top)))
    return b.node("Mul", [s, b.node("Gather", [steps, level])])


def _fine_group_activation(b: Builder, x: str, act: FineGroupActivationQuant, k: int) -> str:
    g = activation_group(act.group_size, k)
    scale = fine_group_scale(b, x, g, k)
    q = b.node("QuantizeLinear", [x, scale], output_dtype=onnx_quant_type(act.fmt), axis=-1, block_size=g)
    return b.node("DequantizeLinear", [q, scale], axis=-1, block_size=g)


def rotation(b: Builder, x: str, block: int) -> str:
    """x H along the last axis, H block-diagonal with the ``block`` x ``block`` Hadamard block."""
    hadamard = b.const(float_tensor(b.name("hadamard"), hadamard_matrix(block)))
    rows = b.node("Reshape", [x, b.const(int64_tensor(b.name("rotation_rows"), [-1, block]))])
    return b.node("Reshape", [b.node("MatMul", [rows, hadamard]), b.node("Shape", [x])])


# How each kind of quantized layer's weight enters the graph: the name of a [K, N] weight tensor.
WEIGHT_EMITTERS = {QuantLinear: _weight, VqLinear: vq_weight}


def _replacement(b: Builder, x: str, y: str, q: DecodedLinear) -> None:
    if q.rotation_block:
        x = rotation(b, x, q.rotation_block)
    if isinstance(q.act, StaticActivationQuant):
        zero = None
        if not q.act.fmt.symmetric:
            zero = b.const(numpy_helper.from_array(q.act.zero.round().numpy().astype(np.uint8), b.name("act_zero")))
        x = static_activation(b, x, b.const(float_tensor(b.name("act_scale"), q.act.scale)), zero, q.act.fmt,
                              BUCKET, q.act.groups if q.act.scale.dim() == 2 else 0, q.in_features)
    elif isinstance(q.act, DynamicActivationQuant):
        x = _dynamic_activation(b, x, q.act, q.in_features)
    elif isinstance(q.act, FineGroupActivationQuant):
        x = _fine_group_activation(b, x, q.act, q.in_features)
    elif q.act is not None:
        raise UserError(f"layer {b.prefix}: no export for activation quantizer {type(q.act).__name__}")
    w = WEIGHT_EMITTERS[type(q)](b, q)
    if q.bias is None:
        b.node("MatMul", [x, w], output=y)
    else:
        b.node("Add", [b.node("MatMul", [x, w]), b.const(float_tensor(b.name("bias"), q.bias))], output=y)


def insert_qdq(proto: onnx.ModelProto, names: list[str], layers: dict[str, DecodedLinear],
               bucket_of_t: torch.Tensor | None) -> onnx.ModelProto:
    """Replaces the trace's marker nodes (see onnx_graph.py) by QDQ subgraphs, in place."""
    graph = proto.graph
    nodes: list[onnx.NodeProto] = []
    initializers: list[TensorProto] = []
    if bucket_of_t is not None and any(isinstance(m.act, StaticActivationQuant) for m in layers.values()):
        initializers.append(numpy_helper.from_array(bucket_of_t.numpy().astype(np.int64), BUCKET_TABLE))
        nodes.append(helper.make_node("Gather", [BUCKET_TABLE, INPUT_NAMES[1]], [BUCKET], name="timestep_bucket"))
    for node in graph.node:
        if node.op_type != MARKER_OP:
            nodes.append(node)
            continue
        name = names[node.attribute[0].i]
        b = Builder(name, [], [])
        _replacement(b, node.input[0], node.output[0], layers[name])
        nodes.extend(b.nodes)
        initializers.extend(b.initializers)
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(initializers)
    del proto.opset_import[:]
    proto.opset_import.extend([helper.make_opsetid("", OPSET)])
    if any(t.data_type == TensorProto.FLOAT4E2M1 for t in graph.initializer) or any(
            a.name == "output_dtype" and a.i == TensorProto.FLOAT4E2M1 for n in graph.node for a in n.attribute):
        use_fp4_opset(proto)
    deduplicate_initializers(proto)  # decode tables, Hadamard blocks and shapes repeat across layers
    return proto
