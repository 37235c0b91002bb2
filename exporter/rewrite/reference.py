"""Reference semantics of the plugins: model-local ONNX functions made of standard ops, so that a
rewritten graph runs in ONNX Runtime on CPU.

One function per plugin and field values, told apart by the node's ``overload`` (ONNX IR 10):
the field values are baked into the function body as constants, so each body is the same
arithmetic as the QDQ subgraph the plugin replaced, built by the same builders
(exporter/export/qdq.py, fp4_graph.py, vq_graph.py), with the packed inputs of the contract
(exporter/rewrite/contract.py) unpacked by standard ops:

    4-bit codes   bytes -> (byte mod 16, byte div 16) interleaved -> [K, N]; signed codes c >= 8
                  become c - 16
    INT weights   W^T = code * weight_scale[k // group_size]
    FP4 weights   W^T = decode_table[code] * weight_scale[k // group_size]
    VQ weights    exporter/export/vq_graph.py's unpack and codebook gather
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from exporter.export.fp4_graph import expand_blocked, fake_quantize, scale_rows, weight_decode
from exporter.export.graph_builder import Builder, int64_tensor, onnx_quant_type
from exporter.export.qdq import dynamic_scale, rotation, static_activation
from exporter.export.vq_graph import vq_decode
from exporter.quant.fp4 import Fp4Format
from exporter.quant.primitives import format_from_name
from exporter.rewrite.contract import DOMAIN, FP4_GEMM, VQ_GEMM, PluginContract

OUTPUT = "y"


def overload_key(fields: dict) -> str:
    """The overload that names one set of field values: stable, readable, unique."""
    return ",".join(f"{name}={fields[name]}" for name in sorted(fields))


def _nibbles(b: Builder, packed: str, signed: bool) -> str:
    """int64 [K, 2 M] codes from bytes [K, M], the low nibble first."""
    byte = b.node("Mod", [b.node("Cast", [packed], to=TensorProto.INT64), b.const(int64_tensor(b.name("256"), 256))])
    sixteen = b.const(int64_tensor(b.name("16"), 16))
    last = b.const(int64_tensor(b.name("last"), [-1]))
    low = b.node("Unsqueeze", [b.node("Mod", [byte, sixteen]), last])
    high = b.node("Unsqueeze", [b.node("Div", [byte, sixteen]), last])
    codes = b.node("Reshape", [b.node("Concat", [low, high], axis=-1),
                               b.const(int64_tensor(b.name("rows"), [0, -1]))])
    if signed:
        negative = b.node("Cast", [b.node("Greater", [codes, b.const(int64_tensor(b.name("7"), 7))])],
                          to=TensorProto.INT64)
        codes = b.node("Sub", [codes, b.node("Mul", [negative, sixteen])])
    return codes


def _weight(b: Builder, contract: PluginContract, f: dict) -> str:
    k, n = f["in_features"], f["out_features"]
    if contract is VQ_GEMM:
        return vq_decode(b, "assignments", "codebook", n, k, f["codeword_dim"], f["index_bits"])
    if contract is FP4_GEMM:
        return weight_decode(b, _nibbles(b, "weight", signed=False), Fp4Format(f["weight_format"]), "weight_scale",
                             f["group_size"], k)
    codes = _nibbles(b, "weight", signed=True) if f["weight_bits"] == 4 else "weight"
    values = b.node("Cast", [codes], to=TensorProto.FLOAT)
    return b.node("Mul", [values, scale_rows(b, "weight_scale", f["group_size"], k)])


def _activation(b: Builder, x: str, f: dict) -> str:
    if f["act_mode"] == "none":
        return x
    fmt = format_from_name(f["act_format"])
    if f["act_mode"] == "static":
        if isinstance(fmt, Fp4Format):
            flat = b.node("Reshape", [x, b.const(int64_tensor(b.name("flat"), [0, -1]))])
            scale = b.node("Unsqueeze", [b.node("Gather", ["act_scale_table", "timestep_bucket"]),
                                         b.const(int64_tensor(b.name("per_row"), [1]))])
            return b.node("Reshape", [fake_quantize(b, flat, scale, fmt), b.node("Shape", [x])])
        k, group = f["in_features"], f["act_group_size"]
        zero = "act_zero_table" if f["act_format"] == "uint4" else None
        return static_activation(b, x, "act_scale_table", zero, fmt, "timestep_bucket", k // group if group else 1, k)
    k = f["in_features"]
    group = f["act_group_size"] or k
    scale = dynamic_scale(b, x, fmt, group, k)
    if isinstance(fmt, Fp4Format):
        return fake_quantize(b, x, expand_blocked(b, scale, x, -1, group), fmt)
    q = b.node("QuantizeLinear", [x, scale], output_dtype=onnx_quant_type(fmt), axis=-1, block_size=group)
    return b.node("DequantizeLinear", [q, scale], axis=-1, block_size=group)


def reference_function(contract: PluginContract, fields: dict, opset: int) -> onnx.FunctionProto:
    """The function a plugin node with these fields calls in ONNX Runtime (overload_key(fields))."""
    contract.check(fields)
    b = Builder("ref", [], [])
    x = "x"
    if fields["rotation_block"]:
        x = rotation(b, x, "hadamard", fields["rotation_block"])
    x = _activation(b, x, fields)
    y = b.node("MatMul", [x, _weight(b, contract, fields)], output=None if fields["has_bias"] else OUTPUT)
    if fields["has_bias"]:
        b.node("Add", [y, "bias"], output=OUTPUT)
    constants = [helper.make_node("Constant", [], [t.name], value=t) for t in b.initializers]
    return helper.make_function(DOMAIN, contract.name, [p.name for p in contract.present_inputs(fields)], [OUTPUT],
                                constants + b.nodes, [helper.make_opsetid("", opset)],
                                overload=overload_key(fields))
