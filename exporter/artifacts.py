"""Every file and folder the stages write under a build's output folder OUT, named once.

    OUT/calibration.safetensors          the calibration inputs (calibrate)
    OUT/quantized/                       the quantized checkpoint (calibrate)
    OUT/onnx/fp.onnx                     the FP reference graph (export)
    OUT/onnx/NAME.qdq.onnx               the QDQ graph of precision NAME (export)
    OUT/onnx/NAME.qdq.reference.onnx     its form ONNX Runtime runs, for graphs with FP4 (export)
    OUT/onnx/NAME.rewritten.onnx         plugin nodes with reference functions (rewrite)
    OUT/onnx/NAME.trt.onnx               the same for TensorRT, without the functions (rewrite)
    OUT/onnx/NAME.qdq-fp16io.onnx        the QDQ graph with the plugins' FLOAT16 boundaries (rewrite)
    OUT/validation_inputs.json           Polygraphy inputs and FP reference outputs (validate)
    OUT/fp_reference_outputs.json
    OUT/validation.{json,md}             reports of validate, rewrite and engine validation
    OUT/rewrite_validation.{json,md}
    OUT/engine_validation.{json,md}
    OUT/engines/NAME.engine, fp16.engine the TensorRT engines and their timing cache (engine)
    OUT/build_report.json                what build did (build)
"""

from __future__ import annotations

from pathlib import Path

CALIBRATION_FILE = "calibration.safetensors"
CHECKPOINT_DIR = "quantized"
CALIBRATION_JOURNAL = "quantized.partial"  # the blocks an unfinished calibration has done (--resume)
ONNX_DIR = "onnx"
ENGINE_DIR = "engines"
VALIDATION_INPUTS = "validation_inputs.json"
FP_REFERENCE_OUTPUTS = "fp_reference_outputs.json"
VALIDATION_REPORT = "validation"  # .json and .md
REWRITE_VALIDATION_REPORT = "rewrite_validation"
ENGINE_VALIDATION_REPORT = "engine_validation"
BUILD_REPORT = "build_report.json"
FP16_ENGINE = "fp16"
TIMING_CACHE = "timing.cache"


def fp_onnx(out: Path) -> Path:
    return Path(out) / ONNX_DIR / "fp.onnx"


def qdq_onnx(out: Path, precision: str) -> Path:
    return Path(out) / ONNX_DIR / f"{precision}.qdq.onnx"


def reference_onnx(path: Path) -> Path:
    """The reference form of the graph at ``path`` (NAME.reference.onnx), which ONNX Runtime runs."""
    return path.with_name(f"{path.name.removesuffix('.onnx')}.reference.onnx")


def _graph_name(qdq_path: Path) -> str:
    return qdq_path.name.removesuffix(".onnx").removesuffix(".qdq")


def rewritten_onnx(qdq_path: Path) -> Path:
    return qdq_path.with_name(f"{_graph_name(qdq_path)}.rewritten.onnx")


def trt_onnx(qdq_path: Path) -> Path:
    return qdq_path.with_name(f"{_graph_name(qdq_path)}.trt.onnx")


def qdq_fp16io_onnx(qdq_path: Path) -> Path:
    return qdq_path.with_name(f"{_graph_name(qdq_path)}.qdq-fp16io.onnx")


def engine(out: Path, name: str) -> Path:
    """OUT/engines/NAME.engine (NAME a precision, or FP16_ENGINE)."""
    return Path(out) / ENGINE_DIR / f"{name}.engine"


def report(out: Path, name: str, suffix: str) -> Path:
    """OUT/NAME.json or OUT/NAME.md of a *_REPORT name."""
    return Path(out) / f"{name}.{suffix}"


__all__ = ["BUILD_REPORT", "CALIBRATION_FILE", "CALIBRATION_JOURNAL", "CHECKPOINT_DIR", "ENGINE_DIR", "ENGINE_VALIDATION_REPORT",
           "FP16_ENGINE", "FP_REFERENCE_OUTPUTS", "ONNX_DIR", "REWRITE_VALIDATION_REPORT", "TIMING_CACHE",
           "VALIDATION_INPUTS", "VALIDATION_REPORT", "engine", "fp_onnx", "qdq_fp16io_onnx", "qdq_onnx",
           "reference_onnx", "report", "rewritten_onnx", "trt_onnx"]
