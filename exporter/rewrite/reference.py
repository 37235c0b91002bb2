"""Reference semantics of the plugins: model-local ONNX functions made of standard ops, so that a
rewritten graph runs in ONNX Runtime on CPU.

One function per plugin and field values, told apart by the node's ``overload`` (ONNX IR 10):
the field values are baked into the function body as constants. Each body computes what the
Triton kernels compute on the contract's layouts (exporter/contract/plugin_contract.py), in float32:

    x            FLOAT16 -> float32
    act          the activation quantizer's codes times its scale, built by the QDQ graph's own
                 builders (exporter/onnx/qdq.py, fp4_graph.py): INT8 per token (dynamic, or
                 the static table row of the sample's timestep bucket), FP4 E2M1 on fine groups
                 (dynamic; of x H, each group rotated by qdq.py's rotation, for
                 fp4e2m1_hadamard), UINT4 on two-level groups (static: scales act_scale_table[b] f, zero
                 points z)
    W [N, K]     the kernel's operand times the row scale s[n], rounded once:
                   INT8 operands      q f                  (weight_bits 8)
                   INT4 chunks        q * factor per span  (weight_bits 4)
                   E4M3 operands      v 2^t                (weight_bits 8, FP4 weights)
                   FP4 chunks         v * 2^(t_min + offset per span)  (weight_bits 4; t_min of the format)
                   codebook           codebook[indices[n, s]]
    y            act(x) W^T + b -> FLOAT16

The operand times s is the same single rounding of the same real number as the QDQ graph's code
times its group scale (s f or s 2^t, exact in float32), so a rewritten graph matches its QDQ graph
with the same FLOAT16 boundaries to float reordering.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper

from exporter.contract.plugin_contract import DOMAIN, FP4_GEMM, VQ_GEMM, PluginContract
from exporter.numerics import fp4_fine_groups
from exporter.numerics.fp4 import Fp4Format
from exporter.numerics.fp4_groups import EXPONENTS
from exporter.numerics.kernel_layout import FP4_GROUP, INT4_GROUP, SPAN
from exporter.numerics.primitives import IntFormat
from exporter.onnx.fp4_graph import decode_table, expand_blocked, fake_quantize
from exporter.onnx.graph_builder import Builder, float_tensor, int64_tensor, onnx_quant_type
from exporter.onnx.qdq import dynamic_scale, fine_group_scale, rotation, static_activation

OUTPUT = "y"
INT8, UINT4 = IntFormat(8), IntFormat(4, symmetric=False)


def overload_key(fields: dict) -> str:
    """The overload that names one set of field values: stable, readable, unique."""
    return ",".join(f"{name}={fields[name]}" for name in sorted(fields))


def _unsigned(b: Builder, packed: str) -> str:
    """int64 values 0..255 of INT8 bytes."""
    return b.node("Mod", [b.node("Cast", [packed], to=TensorProto.INT64), b.const(int64_tensor(b.name("256"), 256))])


def _chunk_codes(b: Builder, packed: str, n: int, k: int, signed: bool) -> str:
    """int64 codes [N, K] of the 4-bit chunk layout [N, K / 2] (byte j of chunk c: channel 2 SPAN c
    + j in the low nibble, 2 SPAN c + SPAN + j in the high one)."""
    byte = b.node("Reshape", [_unsigned(b, packed), b.const(int64_tensor(b.name("chunks"), [n, k // (2 * SPAN), 1,
                                                                                            SPAN]))])
    sixteen = b.const(int64_tensor(b.name("16"), 16))
    halves = b.node("Concat", [b.node("Mod", [byte, sixteen]), b.node("Div", [byte, sixteen])], axis=2)
    codes = b.node("Reshape", [halves, b.const(int64_tensor(b.name("rows"), [n, k]))])
    if signed:
        negative = b.node("Cast", [b.node("Greater", [codes, b.const(int64_tensor(b.name("7"), 7))])],
                          to=TensorProto.INT64)
        codes = b.node("Sub", [codes, b.node("Mul", [negative, sixteen])])
    return codes


def _per_span(b: Builder, values: str, n: int, k: int) -> str:
    """[N, K / SPAN] repeated to [N, K]: each span's value for each of its channels."""
    column = b.node("Unsqueeze", [values, b.const(int64_tensor(b.name("span_axis"), [2]))])
    spread = b.node("Expand", [column, b.const(int64_tensor(b.name("span_shape"), [n, k // SPAN, SPAN]))])
    return b.node("Reshape", [spread, b.const(int64_tensor(b.name("rows"), [n, k]))])


def _e4m3_values() -> np.ndarray:
    """The value of each E4M3 byte (float32 [256])."""
    return torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).float().numpy()


def _operand(b: Builder, contract: PluginContract, f: dict) -> str:
    """The kernel's weight operand W / s, float32 [N, K] (exact)."""
    n, k = f["out_features"], f["in_features"]
    if contract is VQ_GEMM:
        codebook = b.node("Cast", ["codebook"], to=TensorProto.FLOAT)
        words = b.node("Gather", [codebook, _unsigned(b, "indices")])  # [N, K / D, D]
        return b.node("Reshape", [words, b.const(int64_tensor(b.name("rows"), [n, k]))])
    if contract is FP4_GEMM and f["weight_bits"] == 8:
        table = b.const(float_tensor(b.name("e4m3_values"), _e4m3_values()))
        return b.node("Gather", [table, _unsigned(b, "weight")])
    if contract is FP4_GEMM:
        kind = f["weight_format"]
        values = b.const(float_tensor(b.name("fp4_values"), decode_table(Fp4Format(kind))))
        t_min, t_max = EXPONENTS[kind]
        steps = b.const(float_tensor(b.name("pow2"), np.exp2(np.arange(t_min, t_max + 1)).astype(np.float32)))
        scale = b.node("Gather", [steps, _per_span(b, _unsigned(b, "weight_offset"), n, k)])
        return b.node("Mul", [b.node("Gather", [values, _chunk_codes(b, "weight", n, k, signed=False)]), scale])
    if f["weight_bits"] == 8:
        return b.node("Cast", ["weight"], to=TensorProto.FLOAT)
    factor = _per_span(b, _unsigned(b, "weight_factor"), n, k)
    product = b.node("Mul", [_chunk_codes(b, "weight", n, k, signed=True), factor])
    return b.node("Cast", [product], to=TensorProto.FLOAT)


def _weight_t(b: Builder, contract: PluginContract, f: dict) -> str:
    """W^T [K, N]: the operand times the row scale (codebooks have none)."""
    w = _operand(b, contract, f)
    if contract is not VQ_GEMM:
        w = b.node("Mul", [w, b.node("Unsqueeze", ["weight_scale", b.const(int64_tensor(b.name("col"), [1]))])])
    return b.node("Transpose", [w], perm=[1, 0])


def _two_level_activation(b: Builder, x: str, k: int) -> str:
    """Static UINT4 on two-level groups: the QDQ graph's blocked static quantizer with the group
    scales act_scale_table[b] f[b, g] (exact products) and zero points z[b, g] from act_groups."""
    groups = _unsigned(b, "act_groups")  # [buckets, G, 2]
    factor = b.node("Gather", [groups, b.const(int64_tensor(b.name("factor_index"), 0))], axis=2)
    zero = b.node("Gather", [groups, b.const(int64_tensor(b.name("zero_index"), 1))], axis=2)
    bucket_scale = b.node("Unsqueeze", ["act_scale_table", b.const(int64_tensor(b.name("group_axis"), [1]))])
    scale = b.node("Mul", [bucket_scale, b.node("Cast", [factor], to=TensorProto.FLOAT)])
    return static_activation(b, x, scale, b.node("Cast", [zero], to=TensorProto.UINT8), UINT4, "timestep_bucket",
                             k // INT4_GROUP, k)


def _activation(b: Builder, x: str, f: dict) -> str:
    mode, k = f.get("act_mode", "none"), f["in_features"]
    if mode == "none":
        return x
    if f["act_format"] == "fp4e2m1_hadamard":
        x = rotation(b, x, FP4_GROUP)
    if f["act_format"] in ("fp4e2m1", "fp4e2m1_hadamard"):
        fmt = fp4_fine_groups.FORMAT
        scale = fine_group_scale(b, x, FP4_GROUP, k)
        return fake_quantize(b, x, expand_blocked(b, scale, x, -1, FP4_GROUP), fmt)
    if f["act_format"] == "uint4":
        return _two_level_activation(b, x, k)
    if mode == "static":
        return static_activation(b, x, "act_scale_table", None, INT8, "timestep_bucket")
    scale = dynamic_scale(b, x, INT8, k, k)
    q = b.node("QuantizeLinear", [x, scale], output_dtype=onnx_quant_type(INT8), axis=-1, block_size=k)
    return b.node("DequantizeLinear", [q, scale], axis=-1, block_size=k)


def reference_function(contract: PluginContract, fields: dict, opset: int) -> onnx.FunctionProto:
    """The function a plugin node with these fields calls in ONNX Runtime (overload_key(fields))."""
    contract.check(fields)
    b = Builder("ref", [], [])
    x = _activation(b, b.node("Cast", ["x"], to=TensorProto.FLOAT), fields)
    y = b.node("MatMul", [x, _weight_t(b, contract, fields)])
    if fields["has_bias"]:
        y = b.node("Add", [y, "bias"])
    b.node("Cast", [y], to=TensorProto.FLOAT16, output=OUTPUT)
    constants = [helper.make_node("Constant", [], [t.name], value=t) for t in b.initializers]
    return helper.make_function(DOMAIN, contract.name, [p.name for p in contract.present_inputs(fields)], [OUTPUT],
                                constants + b.nodes, [helper.make_opsetid("", opset)],
                                overload=overload_key(fields))
