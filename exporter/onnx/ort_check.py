"""Running exported graphs in ONNX Runtime, with graph optimizations off: ORT's optimizer fuses
DequantizeLinear(INT4) + MatMul into MatMulNBits, whose CPU kernel computes in lower precision
(about 0.1 absolute error at the embedded model's output), which would hide exporter errors.

Graphs with FP4 (FLOAT4E2M1), which ONNX Runtime has no kernels for, run in their reference form
(exporter/onnx/fp4_graph.py), converted in memory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from exporter import artifacts
from exporter.errors import UserError
from exporter.onnx.files import EXTERNAL_DATA_THRESHOLD, check_external_data, initializer_bytes, load_onnx
from exporter.onnx.fp4_graph import needs_reference, reference_graph


def session(model: str | Path | bytes) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    source: str | bytes = model if isinstance(model, bytes) else str(model)
    if isinstance(model, bytes):
        proto = onnx.load_from_string(model)
    else:
        check_external_data(Path(model))
        proto = onnx.load(str(model), load_external_data=False)
    if needs_reference(proto):
        if not isinstance(model, bytes):
            proto = load_onnx(Path(model))
            if initializer_bytes(proto) > EXTERNAL_DATA_THRESHOLD:
                raise UserError(f"{model} holds FP4, which ONNX Runtime cannot run, and is too large to convert in "
                                f"memory: run its reference form {artifacts.reference_onnx(Path(model))} instead")
        source = reference_graph(proto).SerializeToString()
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def run(sess: ort.InferenceSession, sample: torch.Tensor, timestep: torch.Tensor,
        class_labels: torch.Tensor) -> np.ndarray:
    feeds = {"sample": sample.numpy(), "timestep": timestep.long().numpy(), "class_labels": class_labels.long().numpy()}
    return sess.run(None, feeds)[0]
