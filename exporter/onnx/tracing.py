"""Tracing a DiT to ONNX with user-facing names: sample, timestep, class_labels -> out_sample.

Quantized Linears (scalar codes and codebooks) are traced as one marker node each (domain
``dit_export``, op ``QuantLinear``, attribute ``layer`` = index into the layer list), which
``qdq.py`` then replaces by standard QuantizeLinear / DequantizeLinear / MatMul nodes, or by the
codebook decode of ``vq_graph.py``.
"""

from __future__ import annotations

import contextlib
import copy
import os
import tempfile
import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

from exporter.onnx.files import deduplicate_initializers
from exporter.quant.module_tree import replace_module
from exporter.quant.qlinear import DecodedLinear

INPUT_NAMES = ("sample", "timestep", "class_labels")
OUTPUT_NAME = "out_sample"
OPSET = 21
IR_VERSION = 10  # what ONNX Runtime 1.2x reads
MARKER_DOMAIN = "dit_export"
MARKER_OP = "QuantLinear"


class _Entry(nn.Module):
    def __init__(self, transformer: nn.Module) -> None:
        super().__init__()
        self.transformer = transformer

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, class_labels: torch.Tensor) -> torch.Tensor:
        return self.transformer(sample, timestep, class_labels).sample


class _Marker(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, layer: int, out_features: int) -> torch.Tensor:  # noqa: ARG004
        # Only shapes matter while tracing: the marker's output values are never used.
        return x.new_zeros(*x.shape[:-1], out_features)

    @staticmethod
    def symbolic(g, x, layer: int, out_features: int):  # noqa: ARG004
        return g.op(f"{MARKER_DOMAIN}::{MARKER_OP}", x, layer_i=layer)


class _Marked(nn.Module):
    def __init__(self, module: DecodedLinear, layer: int) -> None:
        super().__init__()
        self.module, self.layer = module, layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _Marker.apply(x, self.layer, self.module.out_features)


@contextlib.contextmanager
def _quiet_stderr():
    """The tracer warns in C++ (straight to fd 2) that it cannot infer the markers' shapes,
    which it does not need to: qdq.py replaces them."""
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def example_inputs(transformer: nn.Module, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    cfg = transformer.config
    sample = torch.randn(batch, cfg.in_channels, cfg.sample_size, cfg.sample_size,
                         generator=torch.Generator().manual_seed(0))
    return sample, torch.full((batch,), 500, dtype=torch.long), torch.zeros(batch, dtype=torch.long)


def trace(transformer: nn.Module) -> tuple[onnx.ModelProto, list[str]]:
    """The traced graph and the names of the quantized Linears in marker order."""
    model = copy.deepcopy(transformer).eval()
    names = [n for n, m in model.named_modules() if isinstance(m, DecodedLinear)]
    for i, name in enumerate(names):
        replace_module(model, name, _Marked(model.get_submodule(name), i))
    dynamic = {name: {0: "batch"} for name in (*INPUT_NAMES, OUTPUT_NAME)}
    # Through a file: over 2 GB the exporter writes external data, which onnx.load reads back.
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings(), torch.no_grad(), _quiet_stderr():
        warnings.simplefilter("ignore")
        torch.onnx.export(_Entry(model), example_inputs(model), str(Path(tmp) / "model.onnx"),
                          input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME], dynamic_axes=dynamic,
                          opset_version=OPSET, dynamo=False, do_constant_folding=True)
        proto = onnx.load(str(Path(tmp) / "model.onnx"))
    deduplicate_initializers(proto)
    proto.ir_version = IR_VERSION
    return proto, names
