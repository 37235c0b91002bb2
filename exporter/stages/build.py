"""`dit-export build`: every stage that exists, in order, each writing its artifact to out/."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from exporter import artifacts
from exporter.atomic import atomic_write_text
from exporter.models.digits import IMAGE_SIZE
from exporter.models.loading import LoadedDiT, default_sampler, load_dit
from exporter.models.placement import Placement
from exporter.models.sampling import SamplerConfig, validation_step_weights, validation_timesteps
from exporter.onnx.comparison import worst
from exporter.quant.calibration import saved_calibration
from exporter.quant.checkpoint import as_loaded, open_checkpoint
from exporter.quant.quantized_model import QuantizedDiT
from exporter.quant.recipes import Recipe, no_kernel_reason
from exporter.results import plain
from exporter.stages.calibrate import CalibrationOptions, run_calibrate
from exporter.stages.evaluate import evaluate
from exporter.stages.export import run_export
from exporter.stages.rewrite import run_rewrite
from exporter.stages.validate import run_rewrite_validation, run_validation


@dataclass
class BuildReport:
    model: str
    precision: str
    stages: list[dict[str, Any]] = field(default_factory=list)

    def record(self, name: str, status: str, seconds: float, **details: Any) -> None:
        details = plain(details)
        self.stages.append({"stage": name, "status": status, "seconds": round(seconds, 2), **details})
        extra = "; ".join(f"{k}={v}" for k, v in details.items() if not isinstance(v, (dict, list)))
        print(f"[{name}] {status} ({seconds:.1f}s){': ' + extra if extra else ''}", flush=True)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "precision": self.precision, "stages": self.stages}


def digits_shaped(transformer) -> bool:
    cfg = transformer.config
    return cfg.in_channels == 1 and cfg.sample_size == IMAGE_SIZE


def run_build(model: str | None, recipe: Recipe, out_dir: Path, checkpoint: Path | None, eval_samples: int,
              seed: int, calibration: CalibrationOptions) -> BuildReport:
    out_dir.mkdir(parents=True, exist_ok=True)
    report = BuildReport(model=model or "embedded", precision=recipe.name)

    started = time.monotonic()
    loaded = load_dit(model)
    cfg = loaded.transformer.config
    report.record("load", "done", time.monotonic() - started,
                  parameters=sum(p.numel() for p in loaded.transformer.parameters()),
                  blocks=cfg.num_layers, hidden=cfg.num_attention_heads * cfg.attention_head_dim,
                  placement=calibration.placement.name)
    sampler = default_sampler(loaded)

    # Later stages work on the checkpoint as written, so what is exported is what was saved.
    started = time.monotonic()
    if checkpoint is not None:
        qdit, manifest = open_checkpoint(checkpoint, loaded)
        sampler = SamplerConfig(**manifest["sampler"])
        report.precision = manifest["precision"]
        report.record("calibrate", "reused", time.monotonic() - started, checkpoint=str(checkpoint))
    else:
        _, summary = run_calibrate(loaded, recipe, sampler, calibration, out_dir)
        checkpoint = summary.checkpoint
        qdit, manifest = open_checkpoint(checkpoint, loaded)
        report.record("calibrate", "done", time.monotonic() - started, **summary.to_dict())
    quantized = as_loaded(qdit, manifest, checkpoint)
    timesteps = validation_timesteps(manifest)

    no_kernel = no_kernel_reason(qdit.recipe)
    _export_and_validate(report, qdit, loaded, out_dir, timesteps, validation_step_weights(manifest, timesteps))
    if no_kernel:
        report.record("rewrite", "skipped", 0.0, reason=no_kernel)
    else:
        _rewrite(report, qdit, out_dir, timesteps)
    _fidelity(report, loaded, quantized, sampler, out_dir, eval_samples, seed, calibration.placement)

    if no_kernel:
        for stage in ("engine", "engine-validate"):
            report.record(stage, "skipped", 0.0, reason=no_kernel)
    else:
        _engines(report, loaded, out_dir, timesteps, validation_step_weights(manifest, timesteps))
    atomic_write_text(out_dir / artifacts.BUILD_REPORT, json.dumps(report.to_dict(), indent=2) + "\n")
    print(f"build report: {out_dir / artifacts.BUILD_REPORT}", flush=True)
    return report


def _export_and_validate(report: BuildReport, qdit: QuantizedDiT, loaded: LoadedDiT, out_dir: Path, timesteps: list[int],
                         step_weights: list[float]) -> None:
    started = time.monotonic()
    exported = run_export(qdit, loaded.transformer, out_dir, timesteps)
    report.record("export", "done", time.monotonic() - started, fp_onnx=exported.fp_onnx,
                  qdq_onnx=exported.qdq_onnx, qdq_size_ratio=round(exported.qdq_bytes / exported.fp_bytes, 3),
                  qdq_vs_simulated_max_abs=f"{exported.qdq_vs_simulated.max_abs:.2e}",
                  qdq_vs_fp_max_abs=f"{exported.qdq_vs_fp.max_abs:.2e}", details=exported)

    started = time.monotonic()
    validation = run_validation(exported.fp_onnx, exported.qdq_onnx, qdit.transformer,
                                timesteps, step_weights, out_dir, calibration=saved_calibration(out_dir))
    report.record("validate", "done", time.monotonic() - started, report=str(artifacts.report(out_dir, artifacts.VALIDATION_REPORT, "md")),
                  exporter_mean_abs_worst=worst(validation["exporter_check"], "mean"),
                  quantization_mean_abs_worst=worst(validation["quantization_error"], "mean"),
                  inputs_from=validation["inputs_from"])


def _rewrite(report: BuildReport, qdit: QuantizedDiT, out_dir: Path, timesteps: list[int]) -> None:
    started = time.monotonic()
    rewritten = run_rewrite(artifacts.qdq_onnx(out_dir, qdit.recipe.name))
    checked = run_rewrite_validation(rewritten.qdq_fp16io_onnx, rewritten.rewritten_onnx,
                                     qdit.transformer, timesteps, out_dir, calibration=saved_calibration(out_dir))
    report.record("rewrite", "done", time.monotonic() - started, rewritten_onnx=rewritten.rewritten_onnx,
                  tensorrt_onnx=rewritten.tensorrt_onnx,
                  plugins=", ".join(f"{n} x{c}" for n, c in rewritten.replaced.items()),
                  not_replaced=len(rewritten.not_replaced),
                  rewritten_vs_qdq_fp16io_max_abs=f"{worst(checked['rewrite_check'], 'max'):.2e}", details=rewritten)


def _engines(report: BuildReport, loaded: LoadedDiT, out_dir: Path, timesteps: list[int],
             step_weights: list[float]) -> None:
    from engines.stage import plan_engines, run_engine_stage

    started = time.monotonic()
    result = run_engine_stage(plan_engines(out_dir, report.precision, loaded.transformer.config), out_dir,
                              timesteps, step_weights)
    if result.status == "not-available":
        for stage in ("engine", "engine-validate"):
            report.record(stage, "not-available", 0.0, reason=result.reason, commands=result.commands)
        print("The same with the files written here, where TensorRT is installed:", flush=True)
        for command in result.commands:
            print(f"    {command}", flush=True)
        return
    report.record("engine", "done", time.monotonic() - started, quantized_engine=result.quantized.engine,
                  fp16_engine=result.fp16.engine, details=result)
    report.record("engine-validate", "done", 0.0, report=result.report,
                  quantization_mean_abs_worst=f"{result.validation_worst:.3g}")


def _fidelity(report: BuildReport, loaded: LoadedDiT, quantized: LoadedDiT, sampler: SamplerConfig, out_dir: Path,
              eval_samples: int, seed: int, placement: Placement) -> None:
    """FP samples in the placement's dtype; the quantized model's in float32, its simulation's arithmetic."""
    started = time.monotonic()
    if eval_samples <= 0:
        report.record("fidelity", "skipped", 0.0, reason="--eval-samples 0")
    elif not digits_shaped(loaded.transformer):
        report.record("fidelity", "skipped", 0.0,
                      reason="the digits benchmark needs a 1x16x16 model; use dit-export eval --metrics inception")
    else:
        fp = evaluate(loaded, out_dir, eval_samples, seed, sampler, noise_floor=False, label="fp", placement=placement)
        q = evaluate(quantized, out_dir, eval_samples, seed, sampler, noise_floor=False, label=report.precision,
                     reference_samples=out_dir / fp["samples_file"],
                     placement=replace(placement, dtype=torch.float32))
        report.record("fidelity", "done", time.monotonic() - started, samples=eval_samples,
                      fp_frechet_distance=round(fp["frechet_distance"], 3),
                      quantized_frechet_distance=round(q["frechet_distance"], 3),
                      distance_ratio=round(q["frechet_distance"] / fp["frechet_distance"], 3),
                      distance_to_fp_samples=round(q["frechet_distance_to_reference"], 3),
                      psnr_to_fp_db=round(q["psnr_to_reference_db"], 2),
                      fp_accuracy=round(fp["accuracy"], 4), quantized_accuracy=round(q["accuracy"], 4))
