"""Running exported graphs in ONNX Runtime, with graph optimizations off: ORT's optimizer fuses
DequantizeLinear(INT4) + MatMul into MatMulNBits, whose CPU kernel computes in lower precision
(about 0.1 absolute error at the embedded model's output), which would hide exporter errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from exporter.export.onnx_files import check_external_data


def session(model: str | Path | bytes) -> ort.InferenceSession:
    if not isinstance(model, bytes):
        check_external_data(Path(model))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def run(sess: ort.InferenceSession, sample: torch.Tensor, timestep: torch.Tensor,
        class_labels: torch.Tensor) -> np.ndarray:
    feeds = {"sample": sample.numpy(), "timestep": timestep.long().numpy(), "class_labels": class_labels.long().numpy()}
    return sess.run(None, feeds)[0]
