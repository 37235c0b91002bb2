"""FP4 in ONNX graphs, and the reference form of those graphs that ONNX Runtime runs.

In the exported graph (what TensorRT and the graph rewrite read):

    E2M1 weights       DequantizeLinear(FLOAT4E2M1 codes [K, N], scale, block_size g)  opset 23
    E2M1 activations   QuantizeLinear(x, scale, output_dtype=FLOAT4E2M1) -> DequantizeLinear;
                       on power-of-two groups (`fp4`) the blocked scale is s * 2**t, computed by
                       standard ops before the pair (exporter/onnx/qdq.py, fine_group_scale)
    E3M0 / E1M2        ONNX has no type for them: UINT4 codes (same bit layout: sign << 3 | index
    weights            of the magnitude) decoded by a table,
                           W^T = Gather(decode_table [16], Cast<int64>(codes))
                                 * Gather(scale [G, N], row_block [K], axis=0)
                       row_block[k] = k // g, the scale group of input channel k.

ONNX Runtime has no kernels for FLOAT4E2M1 QuantizeLinear / DequantizeLinear. ``reference_graph``
replaces them with standard ops of the same arithmetic: FLOAT4E2M1 weights take the decode-table
form above (E2M1's table), and each FLOAT4E2M1 Q/DQ pair becomes

    y = x / scale;  i = number of rounding thresholds below |y|;  out = sign(y) magnitude[i] scale

where the thresholds are the midpoints between neighbouring magnitudes, each nudged one float32
ulp down where a tie has to round up to the even code, so that ``Greater`` alone rounds to
nearest, ties to even, and saturates as QuantizeLinear does.
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
import torch
from onnx import TensorProto, numpy_helper

from exporter.errors import UserError
from exporter.numerics.fp4 import Fp4Format
from exporter.onnx.graph_builder import Builder, float_tensor, int64_tensor

FP4_OPSET = 23  # FLOAT4E2M1 in QuantizeLinear / DequantizeLinear
FP4_IR_VERSION = 11
E2M1 = Fp4Format("e2m1")


def decode_table(fmt: Fp4Format) -> np.ndarray:
    """Value of each of the 16 codes, in units of the scale."""
    return fmt.decode(torch.arange(16, dtype=torch.uint8)).numpy().astype(np.float32)


def rounding_thresholds(fmt: Fp4Format) -> np.ndarray:
    """float32 t[i] such that |y| rounds to magnitude index sum(|y| > t)."""
    return fmt.thresholds(torch.float32).numpy()


def weight_decode(b: Builder, codes: str, fmt: Fp4Format, scale: str, group_size: int, k: int,
                  output: str | None = None) -> str:
    """W^T [K, N] from FP4 codes [K, N] (UINT4, or integers 0..15) and the scale tensor [G, N]:
    G = ceil(K / group_size) groups of input channels (group_size K: one scale row)."""
    table = b.const(float_tensor(b.name("weight_decode_table"), decode_table(fmt)))
    values = b.node("Gather", [table, b.node("Cast", [codes], to=TensorProto.INT64)])
    return b.node("Mul", [values, scale_rows(b, scale, group_size, k)], output=output)


def scale_rows(b: Builder, scale: str, group_size: int, k: int) -> str:
    """The [G, N] scale repeated to [K, N]: row k is scale[k // group_size]."""
    rows = b.const(int64_tensor(b.name("weight_scale_rows"), np.arange(k) // group_size))
    return b.node("Gather", [scale, rows], axis=0)


def fake_quantize(b: Builder, x: str, scale: str, fmt: Fp4Format, output: str | None = None) -> str:
    """dequantize(quantize(x)) to ``fmt`` in standard ops; ``scale`` broadcasts against x."""
    y = b.node("Div", [x, scale])
    last = b.const(int64_tensor(b.name("last_axis"), [-1]))
    thresholds = b.const(float_tensor(b.name("fp4_thresholds"), rounding_thresholds(fmt)))
    above = b.node("Greater", [b.node("Unsqueeze", [b.node("Abs", [y]), last]), thresholds])
    index = b.node("ReduceSum", [b.node("Cast", [above], to=TensorProto.INT64), last], keepdims=0)
    magnitudes = b.const(float_tensor(b.name("fp4_magnitudes"), fmt.magnitudes.numpy()))
    value = b.node("Mul", [b.node("Sign", [y]), b.node("Gather", [magnitudes, index])])
    return b.node("Mul", [value, scale], output=output)


def expand_blocked(b: Builder, scale: str, x: str, axis: int, block_size: int) -> str:
    """A blocked scale repeated to x's size along ``axis``: scale[..., i // block_size, ...]."""
    length = b.node("Gather", [b.node("Shape", [x]), b.const(int64_tensor(b.name("axis"), axis))])
    zero, one = b.const(int64_tensor(b.name("zero"), 0)), b.const(int64_tensor(b.name("one"), 1))
    index = b.node("Div", [b.node("Range", [zero, length, one]), b.const(int64_tensor(b.name("block"), block_size))])
    return b.node("Gather", [scale, index], axis=axis)


def _attr(node: onnx.NodeProto, name: str, default: int) -> int:
    return next((a.i for a in node.attribute if a.name == name), default)


def _is_fp4_quantize(node: onnx.NodeProto, initializers: dict[str, TensorProto]) -> bool:
    if node.op_type != "QuantizeLinear":
        return False
    if _attr(node, "output_dtype", 0) == TensorProto.FLOAT4E2M1:
        return True
    zero = initializers.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    return zero is not None and zero.data_type == TensorProto.FLOAT4E2M1


def needs_reference(proto: onnx.ModelProto) -> bool:
    """Whether the graph holds FP4 that ONNX Runtime cannot run (reads no external data)."""
    initializers = {t.name: t for t in proto.graph.initializer}
    return (any(t.data_type == TensorProto.FLOAT4E2M1 for t in proto.graph.initializer)
            or any(_is_fp4_quantize(n, initializers) for n in proto.graph.node))


def _weight_scale_grid(scale: np.ndarray, node: onnx.NodeProto, k: int, n: int) -> tuple[np.ndarray, int]:
    """A DequantizeLinear's weight scale as [G, N] and its group size along K."""
    axis, block = _attr(node, "axis", 1), _attr(node, "block_size", 0)
    if scale.size == 1:
        return scale.reshape(1, 1), k
    if block == 0 and axis in (1, -1) and scale.shape == (n,):
        return scale.reshape(1, n), k
    if block > 0 and axis == 0 and scale.shape == (-(-k // block), n):
        return scale, block
    raise UserError(f"node '{node.name}': FLOAT4E2M1 weight scale of shape {list(scale.shape)} (axis {axis}, "
                    f"block_size {block}) for a [{k}, {n}] weight is not supported")


def reference_graph(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``proto`` with every FLOAT4E2M1 DequantizeLinear of a constant weight and every
    FLOAT4E2M1 QuantizeLinear -> DequantizeLinear pair replaced by standard ops (module docstring)."""
    out = copy.deepcopy(proto)
    graph = out.graph
    initializers = {t.name: t for t in graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    nodes: list[onnx.NodeProto] = []
    added: list[TensorProto] = []
    replaced: set[int] = set()
    for i, node in enumerate(graph.node):
        if id(node) in replaced:
            continue
        b = Builder(node.name or f"fp4_reference_{i}", [], [])
        codes = initializers.get(node.input[0]) if node.input else None
        if node.op_type == "DequantizeLinear" and codes is not None and codes.data_type == TensorProto.FLOAT4E2M1:
            if len(codes.dims) != 2 or node.input[1] not in initializers:
                raise UserError(f"node '{node.name}': FLOAT4E2M1 weights must be a 2-D constant with a constant "
                                "scale")
            k, n = codes.dims
            scale, group = _weight_scale_grid(numpy_helper.to_array(initializers[node.input[1]]), node, k, n)
            codes.data_type = TensorProto.UINT4  # same bits: sign << 3 | magnitude index
            scale_name = b.const(float_tensor(b.name("weight_scale"), scale))
            weight_decode(b, codes.name, E2M1, scale_name, group, k, output=node.output[0])
        elif _is_fp4_quantize(node, initializers):
            pairs = consumers.get(node.output[0], [])
            if not pairs or any(c.op_type != "DequantizeLinear" or c.input[1] != node.input[1] for c in pairs):
                raise UserError(f"node '{node.name}': a FLOAT4E2M1 QuantizeLinear must feed DequantizeLinear "
                                "nodes with the same scale")
            scale, axis, block = node.input[1], _attr(node, "axis", 1), _attr(node, "block_size", 0)
            if block:
                scale = expand_blocked(b, scale, node.input[0], axis, block)
            elif axis == 0 and not (scale in initializers and numpy_helper.to_array(initializers[scale]).size == 1):
                # per-axis along the first axis of a 2-D input (static activations: one scale per sample)
                scale = b.node("Unsqueeze", [scale, b.const(int64_tensor(b.name("per_row"), [1]))])
            elif scale not in initializers or numpy_helper.to_array(initializers[scale]).size != 1:
                raise UserError(f"node '{node.name}': FLOAT4E2M1 QuantizeLinear needs a blocked, a per-row or a "
                                "constant scalar scale")
            y = fake_quantize(b, node.input[0], scale, E2M1, output=pairs[0].output[0])
            for other in pairs[1:]:
                b.node("Identity", [y], output=other.output[0])
            replaced.update(id(c) for c in pairs)
        else:
            nodes.append(node)
            continue
        nodes.extend(b.nodes)
        added.extend(b.initializers)
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(added)
    return out


def use_fp4_opset(proto: onnx.ModelProto) -> None:
    """Raises the default-domain opset to the one FLOAT4E2M1 quantization needs."""
    for opset in proto.opset_import:
        if opset.domain in ("", "ai.onnx"):
            opset.version = max(opset.version, FP4_OPSET)
    proto.ir_version = max(proto.ir_version, FP4_IR_VERSION)



