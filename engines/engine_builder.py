"""Building TensorRT engines from ONNX: the quantized engine from the rewritten graph's TensorRT
variant (strongly typed, with the plugin library loaded), and the FP16 engine of the
unquantized model, the baseline users compare against (TensorRT's FP16 precision flag on the
FP graph). Engines and the timing cache, shared by every build in the folder, are written
atomically."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from engines.profiles import EngineProfile
from engines.tensorrt_support import load_plugin_library, require_tensorrt
from exporter import artifacts
from exporter.atomic import atomic_write_bytes
from exporter.errors import UserError

DEFAULT_OPTIMIZATION_LEVEL = 3


@dataclass(frozen=True)
class EngineSpec:
    onnx: Path
    engine: Path
    strongly_typed: bool
    fp16: bool
    plugin_library: Path | None = None


def check_onnx(path: Path) -> Path:
    if not Path(path).is_file():
        raise UserError(f"ONNX file '{path}' does not exist (run dit-export export and rewrite first)")
    return Path(path)


@dataclass(frozen=True)
class BuiltEngine:
    engine: Path
    bytes: int
    build_seconds: float


def build_engine(spec: EngineSpec, profile_shapes: dict,
                 optimization_level: int = DEFAULT_OPTIMIZATION_LEVEL) -> BuiltEngine:
    """Builds and writes one engine; returns its size and build time."""
    if not 0 <= optimization_level <= 5:
        raise UserError(f"builder optimization level must be 0 to 5, not {optimization_level}")
    check_onnx(spec.onnx)
    require_tensorrt()
    import tensorrt as trt

    if spec.plugin_library is not None:
        load_plugin_library(spec.plugin_library)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if spec.strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(spec.onnx)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(min(parser.num_errors, 3)))
        raise UserError(f"TensorRT cannot parse {spec.onnx}: {errors}")
    config = builder.create_builder_config()
    config.builder_optimization_level = optimization_level
    if spec.fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    cache_path = spec.engine.parent / artifacts.TIMING_CACHE
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in profile_shapes.items():
        profile.set_shape(name, trt.Dims(lo), trt.Dims(opt), trt.Dims(hi))
    config.add_optimization_profile(profile)
    started = time.monotonic()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise UserError(f"TensorRT could not build an engine from {spec.onnx} (its log above says why)")
    atomic_write_bytes(spec.engine, bytes(serialized))
    timing = config.get_timing_cache()
    if timing is not None:
        atomic_write_bytes(cache_path, bytes(timing.serialize()))
    return BuiltEngine(spec.engine, spec.engine.stat().st_size, round(time.monotonic() - started, 1))


def trtexec_command(spec: EngineSpec, profile_shapes: dict,
                    optimization_level: int = DEFAULT_OPTIMIZATION_LEVEL) -> str:
    """The trtexec command that builds the same engine."""
    parts = ["trtexec", f"--onnx={spec.onnx}", f"--saveEngine={spec.engine}",
             f"--timingCacheFile={spec.engine.parent / artifacts.TIMING_CACHE}",
             f"--builderOptimizationLevel={optimization_level}", *EngineProfile.trtexec_flags(profile_shapes)]
    if spec.strongly_typed:
        parts.append("--stronglyTyped")
    if spec.fp16:
        parts.append("--fp16")
    if spec.plugin_library is not None:
        parts.append(f"--dynamicPlugins={spec.plugin_library}")
    return " ".join(parts)
