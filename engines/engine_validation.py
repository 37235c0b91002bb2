"""The quantized engine against the FP reference outputs that `dit-export validate` saved, with
Polygraphy's TrtRunner and the same Comparator, tolerances and step weights as the ONNX
validation (exporter/stages/validate.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from engines.tensorrt_support import load_plugin_library, require_tensorrt
from exporter import artifacts
from exporter.atomic import atomic_write_text
from exporter.errors import UserError
from exporter.onnx.comparison import Tolerances, comparison


def saved_validation_files(out_dir: Path) -> tuple[Path, Path]:
    inputs, reference = out_dir / artifacts.VALIDATION_INPUTS, out_dir / artifacts.FP_REFERENCE_OUTPUTS
    for path in (inputs, reference):
        if not path.is_file():
            raise UserError(f"{path} does not exist (run dit-export validate first)")
    return inputs, reference


def validate_engine(engine: Path, out_dir: Path, timesteps: list[int], step_weights: list[float],
                    plugin_library: Path | None, tolerances: Tolerances = Tolerances()) -> dict[str, Any]:
    """Writes engine_validation.json / .md; UserError when an output exceeds the tolerance."""
    inputs_path, reference_path = saved_validation_files(out_dir)
    if not Path(engine).is_file():
        raise UserError(f"engine {engine} does not exist (run dit-export engine first)")
    require_tensorrt()
    if plugin_library is not None:
        load_plugin_library(plugin_library)
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner
    from polygraphy.comparator import Comparator, RunResults
    from polygraphy.json import load_json

    feeds = load_json(str(inputs_path))
    reference = RunResults.load(str(reference_path))
    results = Comparator.run([TrtRunner(EngineFromBytes(Path(engine).read_bytes()), name="quantized-trt")],
                             data_loader=feeds)
    results.extend(reference)
    ok, rows = comparison(results, (0, 1), tolerances.quantization_atol, tolerances.quantization_stat,
                          step_weights)
    report = {"engine": str(engine), "timesteps": timesteps, "tolerances": tolerances.__dict__,
              "passed": ok, "iterations": rows}
    atomic_write_text(artifacts.report(out_dir, artifacts.ENGINE_VALIDATION_REPORT, "json"), json.dumps(report, indent=2) + "\n")
    stat = tolerances.quantization_stat
    lines = ["# Quantized TensorRT engine vs FP reference", "",
             f"| timestep | output | max abs | mean abs | median abs | step weight | {stat} abs x weight | passed |",
             "| ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    lines += [f"| {timesteps[r['iteration']]} | {r['output']} | {r['max_abs']:.3e} | {r['mean_abs']:.3e} | "
              f"{r['median_abs']:.3e} | {r['step_weight']:.3g} | {r[f'step_{stat}_abs']:.3e} | {r['passed']} |"
              for r in rows]
    atomic_write_text(artifacts.report(out_dir, artifacts.ENGINE_VALIDATION_REPORT, "md"), "\n".join(lines) + "\n")
    if not ok:
        bad = max(rows, key=lambda r: r[f"step_{stat}_abs"])
        raise UserError(f"validation failed: quantized engine vs FP reference, output {bad['output']} (timestep "
                        f"{timesteps[bad['iteration']]}): {stat} absolute error x step weight "
                        f"{bad[f'step_{stat}_abs']:.3g} > {tolerances.quantization_atol:g}")
    return report


def polygraphy_command(engine: Path, out_dir: Path, plugin_library: Path | None, tolerances: Tolerances,
                       step_weights: list[float]) -> str:
    """The polygraphy command that repeats the comparison (one tolerance for every step: the
    least sensitive step's, in epsilon units, as in the ONNX validation report)."""
    plugins = f" --plugins {plugin_library}" if plugin_library is not None else ""
    return (f"polygraphy run {engine} --model-type engine --trt{plugins} --load-inputs {out_dir / artifacts.VALIDATION_INPUTS} "
            f"--load-outputs {out_dir / artifacts.FP_REFERENCE_OUTPUTS} --atol {tolerances.quantization_atol / min(step_weights):.3g} "
            f"--rtol 0 --check-error-stat {tolerances.quantization_stat}")
