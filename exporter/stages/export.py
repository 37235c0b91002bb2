"""`dit-export export`: the FP reference ONNX and the QDQ ONNX of a quantized checkpoint."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from exporter import artifacts
from exporter.models.loading import LoadedDiT
from exporter.models.sampling import validation_timesteps
from exporter.onnx.files import write_onnx
from exporter.onnx.fp4_graph import needs_reference, reference_graph
from exporter.onnx.ort_check import run, session
from exporter.onnx.qdq import insert_qdq
from exporter.onnx.tracing import trace
from exporter.quant.quantized_model import QuantizedDiT


def fp_onnx(transformer: nn.Module) -> onnx.ModelProto:
    proto, names = trace(transformer)
    assert not names, "an FP model has no quantized layers"
    return proto


def qdq_onnx(qdit: QuantizedDiT) -> onnx.ModelProto:
    proto, names = trace(qdit.transformer)
    return insert_qdq(proto, names, qdit.quant_linears(), qdit.buckets.bucket_of_t)


def check_inputs(transformer: nn.Module, timesteps: list[int], seed: int = 0):
    """One input per timestep (spread over the given ones), class labels including the null class."""
    cfg = transformer.config
    gen = torch.Generator().manual_seed(seed)
    n = len(timesteps)
    sample = torch.randn(n, cfg.in_channels, cfg.sample_size, cfg.sample_size, generator=gen)
    labels = torch.arange(n) % (cfg.num_embeds_ada_norm + 1)
    return sample, torch.tensor(timesteps, dtype=torch.long), labels


@dataclass(frozen=True)
class ErrorStats:
    max_abs: float
    mean_abs: float
    reference_max_abs: float

    @classmethod
    def of(cls, reference: np.ndarray, actual: np.ndarray) -> "ErrorStats":
        diff = np.abs(reference.astype(np.float64) - actual.astype(np.float64))
        return cls(float(diff.max()), float(diff.mean()), float(np.abs(reference).max()))


@dataclass(frozen=True)
class ExportedGraphs:
    """What ``run_export`` wrote, and how the graphs compare with the PyTorch models on its check inputs."""

    fp_onnx: Path
    qdq_onnx: Path
    reference_onnx: Path | None  # the QDQ graph in the form ONNX Runtime runs (FP4), else None
    fp_bytes: int
    qdq_bytes: int
    fp_onnx_vs_torch: ErrorStats
    qdq_vs_simulated: ErrorStats
    qdq_vs_fp: ErrorStats


def run_export(qdit: QuantizedDiT, fp_transformer: nn.Module, out_dir: Path, timesteps: list[int],
               external_data: bool | None = None) -> ExportedGraphs:
    """Writes onnx/fp.onnx and onnx/<precision>.qdq.onnx (external data when over 2 GB or asked),
    and for graphs with FP4 their reference form <precision>.qdq.reference.onnx, which ONNX
    Runtime runs; runs the graphs in ONNX Runtime against the PyTorch models on one input per
    timestep."""
    fp_path = write_onnx(fp_onnx(fp_transformer), artifacts.fp_onnx(out_dir), external_data)
    qdq = qdq_onnx(qdit)
    qdq_path = artifacts.qdq_onnx(out_dir, qdit.recipe.name)
    runnable = None
    if needs_reference(qdq):
        runnable = write_onnx(reference_graph(qdq), artifacts.reference_onnx(qdq_path), external_data)
    elif artifacts.reference_onnx(qdq_path).exists():
        artifacts.reference_onnx(qdq_path).unlink()
    write_onnx(qdq, qdq_path, external_data)
    sample, timestep, labels = check_inputs(fp_transformer, timesteps)
    with torch.no_grad():
        simulated = qdit.transformer(sample, timestep, labels).sample.numpy()
        reference = fp_transformer(sample, timestep, labels).sample.numpy()
    qdq_out = run(session(runnable or qdq_path), sample, timestep, labels)
    fp_out = run(session(fp_path), sample, timestep, labels)
    return ExportedGraphs(fp_path, qdq_path, runnable, _file_bytes(fp_path), _file_bytes(qdq_path),
                          ErrorStats.of(reference, fp_out), ErrorStats.of(simulated, qdq_out), ErrorStats.of(fp_out, qdq_out))


def _file_bytes(path: Path) -> int:
    data = path.parent / f"{path.name}.data"
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


def export_checkpoint(checkpoint: Path, loaded: LoadedDiT, out_dir: Path,
                      external_data: bool | None = None) -> ExportedGraphs:
    """Exports a quantized checkpoint made from ``loaded`` (its FP model is the reference)."""
    from exporter.quant.checkpoint import check_made_from, load_checkpoint

    qdit, manifest = load_checkpoint(checkpoint)
    check_made_from(manifest, loaded.transformer, loaded.source, checkpoint)
    return run_export(qdit, loaded.transformer, out_dir, validation_timesteps(manifest), external_data)
