"""The engine stage of `dit-export build` and `dit-export engine`: the quantized and FP16 engines
from the files export and rewrite wrote, and the quantized engine's validation. Arguments are
checked first, TensorRT second: without TensorRT the stage says so in one line and returns the
trtexec / polygraphy commands that do the same with the files already written."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from engines.engine_builder import (
    DEFAULT_OPTIMIZATION_LEVEL,
    BuiltEngine,
    EngineSpec,
    build_engine,
    check_onnx,
    trtexec_command,
)
from engines.engine_validation import polygraphy_command, saved_validation_files, validate_engine
from engines.profiles import EngineProfile
from engines.tensorrt_support import BUILD_PLUGINS, PLUGIN_LIBRARY, check_plugin_library, tensorrt_missing
from exporter import artifacts
from exporter.onnx.comparison import Tolerances


@dataclass(frozen=True)
class EnginePlan:
    quantized: EngineSpec
    fp16: EngineSpec
    shapes: dict
    optimization_level: int
    plugin_library: Path
    plugin_library_given: bool


@dataclass(frozen=True)
class EngineStageResult:
    status: str  # done, or not-available: TensorRT is missing (reason), and the commands that do the same
    reason: str | None = None
    commands: list[str] = field(default_factory=list)
    quantized: BuiltEngine | None = None
    fp16: BuiltEngine | None = None
    validation_worst: float | None = None  # the largest error statistic x step weight of the engine's validation
    report: Path | None = None


def plan_engines(out_dir: Path, precision: str, config, profile: EngineProfile = EngineProfile(),
                 plugin_library: Path | None = None,
                 optimization_level: int = DEFAULT_OPTIMIZATION_LEVEL) -> EnginePlan:
    """Checks what the engines are built from (UserError naming what is wrong) and where they go."""
    trt_onnx = artifacts.trt_onnx(artifacts.qdq_onnx(out_dir, precision))
    check_onnx(trt_onnx)
    check_onnx(artifacts.fp_onnx(out_dir))
    shapes = profile.shapes(config)
    library = Path(plugin_library) if plugin_library is not None else PLUGIN_LIBRARY
    if plugin_library is not None:
        check_plugin_library(library)
    return EnginePlan(EngineSpec(trt_onnx, artifacts.engine(out_dir, precision), strongly_typed=True, fp16=False,
                                 plugin_library=library),
                      EngineSpec(artifacts.fp_onnx(out_dir), artifacts.engine(out_dir, artifacts.FP16_ENGINE),
                                 strongly_typed=False, fp16=True),
                      shapes, optimization_level, library, plugin_library is not None)


def commands(plan: EnginePlan, out_dir: Path, tolerances: Tolerances, step_weights: list[float]) -> list[str]:
    """What to run where TensorRT is installed, with the files this run wrote."""
    lines = [] if plan.plugin_library.is_file() else [BUILD_PLUGINS]
    lines += [trtexec_command(plan.quantized, plan.shapes, plan.optimization_level),
              trtexec_command(plan.fp16, plan.shapes, plan.optimization_level),
              polygraphy_command(plan.quantized.engine, out_dir, plan.plugin_library, tolerances, step_weights)]
    return lines


def run_engine_stage(plan: EnginePlan, out_dir: Path, timesteps: list[int], step_weights: list[float],
                     tolerances: Tolerances = Tolerances()) -> EngineStageResult:
    """The engines built and validated, or where TensorRT is missing, why and the commands."""
    saved_validation_files(out_dir)
    missing = tensorrt_missing()
    if missing:
        return EngineStageResult("not-available", missing, commands(plan, out_dir, tolerances, step_weights))
    check_plugin_library(plan.plugin_library)
    (out_dir / artifacts.ENGINE_DIR).mkdir(parents=True, exist_ok=True)
    quantized = build_engine(plan.quantized, plan.shapes, plan.optimization_level)
    fp16 = build_engine(plan.fp16, plan.shapes, plan.optimization_level)
    validation = validate_engine(plan.quantized.engine, out_dir, timesteps, step_weights, plan.plugin_library,
                                 tolerances)
    worst = max(r[f"step_{tolerances.quantization_stat}_abs"] for r in validation["iterations"])
    return EngineStageResult("done", quantized=quantized, fp16=fp16, validation_worst=worst,
                             report=artifacts.report(out_dir, artifacts.ENGINE_VALIDATION_REPORT, "md"))
