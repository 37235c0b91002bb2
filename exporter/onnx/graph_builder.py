"""Building replacement subgraphs: ONNX element types of the quantization formats, initializers
of their codes, and a node builder that names everything after the layer it belongs to."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from exporter.errors import UserError
from exporter.numerics.fp4 import Fp4Format
from exporter.numerics.packing import pack_int4
from exporter.numerics.primitives import Fp8E4M3Format, QuantFormat


def onnx_quant_type(fmt: QuantFormat) -> int:
    """The ONNX element type of a format's codes. FP4 formats other than E2M1 have none in ONNX:
    their codes travel as UINT4 (exporter/onnx/fp4_graph.py)."""
    if isinstance(fmt, Fp8E4M3Format):
        return TensorProto.FLOAT8E4M3FN
    if isinstance(fmt, Fp4Format):
        return TensorProto.FLOAT4E2M1 if fmt.kind == "e2m1" else TensorProto.UINT4
    if fmt.bits == 4:
        return TensorProto.INT4 if fmt.symmetric else TensorProto.UINT4
    if fmt.bits == 8:
        return TensorProto.INT8 if fmt.symmetric else TensorProto.UINT8
    raise UserError(f"ONNX has no {fmt.bits}-bit integer type: export supports 4- and 8-bit formats")


def code_tensor(name: str, codes: torch.Tensor, fmt: QuantFormat) -> TensorProto:
    """An initializer of codes in the format's storage (``fmt.encode``); 4-bit codes stay packed
    two per byte in ONNX's layout, which for FP4 codes is also FLOAT4E2M1's."""
    data_type = onnx_quant_type(fmt)
    if fmt.bits == 4:
        raw = pack_int4(codes.reshape(-1)).numpy().tobytes()
        return helper.make_tensor(name, data_type, list(codes.shape), raw, raw=True)
    dtype = np.int8 if fmt.symmetric else np.uint8
    return numpy_helper.from_array(codes.numpy().astype(dtype), name)


def float_tensor(name: str, values: torch.Tensor | np.ndarray) -> TensorProto:
    if isinstance(values, torch.Tensor):
        values = values.detach().float().numpy()
    return numpy_helper.from_array(np.asarray(values, dtype=np.float32), name)


def int64_tensor(name: str, values) -> TensorProto:
    return numpy_helper.from_array(np.asarray(values, dtype=np.int64), name)


@dataclass
class Builder:
    """Collects the nodes and initializers of one replacement, with names prefixed by ``prefix``."""

    prefix: str
    nodes: list[onnx.NodeProto]
    initializers: list[TensorProto]

    def name(self, suffix: str) -> str:
        return f"{self.prefix}.{suffix}"

    def node(self, op: str, inputs: list[str], output: str | None = None, **attrs) -> str:
        out = output or self.name(f"{op.lower()}_{len(self.nodes)}")
        self.nodes.append(helper.make_node(op, inputs, [out], name=self.name(f"{op}_{len(self.nodes)}"), **attrs))
        return out

    def const(self, tensor: TensorProto) -> str:
        """Adds an initializer and returns its name, made unique within this builder."""
        if any(t.name == tensor.name for t in self.initializers):
            tensor.name = f"{tensor.name}_{len(self.initializers)}"
        self.initializers.append(tensor)
        return tensor.name
