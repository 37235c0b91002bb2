"""`dit-export validate`: Polygraphy comparisons of the exported graphs, run in ONNX Runtime.

(a) QDQ graph vs the PyTorch simulated-quantization model: checks the exporter. The two differ
    only where an input sits on a rounding boundary of a QuantizeLinear and the last bit of the
    two computations differs, flipping one code by one step (W8A8 with static scales agrees to
    2e-6). Flips are sparse but the network amplifies them, most at the last step (t = 0): on
    the embedded W4A8 model with trajectory inputs the mean absolute difference reached 8.2e-3
    there while the median stayed at 2e-5 (4.8e-4 at worst over all steps; 2.8e-3 with Gaussian
    noise as input). A wrong scale, layout or bucket moves most elements, so the check is on the
    median: default tolerance 5e-3.
(b) QDQ graph vs the FP reference graph: measures the quantization error. In the model's own
    (epsilon) units it is dominated by the last step (t = 0), where the prediction is the least
    well determined and matters least: the embedded W4A8 model's mean absolute error was
    0.003-0.011 at t >= 200 and 0.13 at t = 0, W4A4-FP4's 0.011-0.039 and 0.66. The check is
    therefore on what the error does to sampling: each timestep's epsilon error times how far
    the scheduler's step moves the next sample per unit of epsilon (``epsilon_step_weights``:
    0.46 at t = 960 down to 0.01 at t = 0 for the embedded DDIM sampler). In those data units
    the embedded W4A8 error stays at or below 1.5e-3 and W4A4-FP4's at or below 7e-3 at every
    step, while an epsilon error of the size of epsilon itself moves the sample by 0.1-0.5 at
    all but the last step: default tolerance 0.02 on the mean.

Inputs are taken at several timesteps of the deployed sampler: the model inputs recorded along
calibration trajectories when they are at hand (what the model meets when sampling), Gaussian
noise otherwise, with class labels including the null class. Inputs and reference outputs are saved in Polygraphy's JSON formats, so that
`polygraphy run MODEL --onnxrt --load-inputs validation_inputs.json --load-outputs
fp_reference_outputs.json` (or `--trt`, later) repeats comparison (b) outside this tool.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from exporter import artifacts
from exporter.atomic import atomic_file, atomic_write_text
from exporter.errors import UserError
from exporter.onnx.comparison import Tolerances, comparison
from exporter.onnx.ort_check import session
from exporter.onnx.tracing import INPUT_NAMES, OUTPUT_NAME
from exporter.quant.calibration import CalibrationSet

SIMULATED = "pytorch-simulated"


def validation_feeds(transformer: nn.Module, timesteps: list[int], calibration: CalibrationSet | None = None,
                     per_timestep: int = 2, seed: int = 0) -> tuple[list[dict[str, np.ndarray]], str]:
    """Inputs per timestep: the model's own trajectory inputs where calibration data of the
    right shape has that timestep, Gaussian noise otherwise; and a word on which was used."""
    cfg = transformer.config
    shape = (cfg.in_channels, cfg.sample_size, cfg.sample_size)
    usable = calibration is not None and tuple(calibration.x.shape[1:]) == shape
    gen = torch.Generator().manual_seed(seed)
    feeds, sources = [], set()
    for i, t in enumerate(timesteps):
        at_t = (calibration.t == t).nonzero().flatten()[:per_timestep] if usable else torch.empty(0)
        if len(at_t) == per_timestep:
            sample, labels = calibration.x[at_t], calibration.y[at_t]
            sources.add("calibration trajectories")
        else:
            sample = torch.randn(per_timestep, *shape, generator=gen)
            labels = (torch.arange(per_timestep) + i) % (cfg.num_embeds_ada_norm + 1)
            sources.add("gaussian noise")
        feeds.append({"sample": sample.numpy(), "timestep": np.full(per_timestep, t, dtype=np.int64),
                      "class_labels": labels.numpy().astype(np.int64)})
    return feeds, " and ".join(sorted(sources))


def _simulated_results(model: nn.Module, feeds: list[dict[str, np.ndarray]]):
    from polygraphy.comparator.struct import IterationResult

    iterations = []
    with torch.no_grad():
        for feed in feeds:
            out = model(*(torch.from_numpy(feed[name]) for name in INPUT_NAMES)).sample.numpy()
            iterations.append(IterationResult({OUTPUT_NAME: out}, runner_name=SIMULATED))
    return iterations


def run_validation(fp_onnx: Path, qdq_onnx: Path, simulated: nn.Module, timesteps: list[int],
                   step_weights: list[float], out_dir: Path, tolerances: Tolerances = Tolerances(), calibration: CalibrationSet | None = None) -> dict[str, Any]:
    """Writes validation.json / validation.md and the Polygraphy inputs and reference outputs;
    raises UserError naming the output and statistic that exceeded its tolerance."""
    from polygraphy.backend.onnxrt import OnnxrtRunner
    from polygraphy.comparator import Comparator
    from polygraphy.json import save_json
    from polygraphy.logger import G_LOGGER

    G_LOGGER.module_severity = G_LOGGER.CRITICAL  # the report carries the figures

    for path in (fp_onnx, qdq_onnx):
        if not Path(path).is_file():
            raise UserError(f"ONNX file '{path}' does not exist (run dit-export export first)")
    feeds, source = validation_feeds(simulated, timesteps, calibration)
    try:
        qdq_runner = OnnxrtRunner(session(qdq_onnx), name="qdq-onnxrt")
        fp_runner = OnnxrtRunner(session(fp_onnx), name="fp-onnxrt")
    except UserError:
        raise
    except Exception as e:  # ONNX Runtime rejects malformed graphs with many exception types
        raise UserError(f"ONNX Runtime cannot load the exported graphs: {str(e).splitlines()[0]}") from None
    results = Comparator.run([qdq_runner, fp_runner], data_loader=feeds)
    results.append((SIMULATED, _simulated_results(simulated, feeds)))

    exporter_ok, exporter_rows = comparison(results, (0, 2), tolerances.exporter_atol, tolerances.exporter_stat)
    quant_ok, quant_rows = comparison(results, (0, 1), tolerances.quantization_atol, tolerances.quantization_stat,
                                       step_weights)

    from polygraphy.comparator import RunResults

    with atomic_file(out_dir / artifacts.VALIDATION_INPUTS) as tmp:
        save_json(feeds, str(tmp))
    with atomic_file(out_dir / artifacts.FP_REFERENCE_OUTPUTS) as tmp:
        RunResults([results[1]]).save(str(tmp))
    report = {
        "timesteps": timesteps, "inputs_per_timestep": len(feeds[0]["timestep"]), "inputs_from": source,
        "tolerances": asdict(tolerances),
        "exporter_check": {"against": SIMULATED, "passed": exporter_ok, "iterations": exporter_rows},
        "quantization_error": {"against": "fp-onnxrt", "passed": quant_ok, "iterations": quant_rows},
        # One tolerance for all steps: the per-step tolerance of the least sensitive step, in epsilon units.
        "polygraphy_command": (f"polygraphy run {_runnable(qdq_onnx)} --onnxrt --load-inputs {out_dir / artifacts.VALIDATION_INPUTS} "
                               f"--load-outputs {out_dir / artifacts.FP_REFERENCE_OUTPUTS} "
                               f"--atol {tolerances.quantization_atol / min(step_weights):.3g} "
                               f"--rtol 0 --check-error-stat {tolerances.quantization_stat}"),
    }
    atomic_write_text(artifacts.report(out_dir, artifacts.VALIDATION_REPORT, "json"), json.dumps(report, indent=2) + "\n")
    atomic_write_text(artifacts.report(out_dir, artifacts.VALIDATION_REPORT, "md"), _markdown(report))
    for ok, rows, what, atol, stat in ((exporter_ok, exporter_rows, f"QDQ vs {SIMULATED}", tolerances.exporter_atol,
                                        tolerances.exporter_stat),
                                       (quant_ok, quant_rows, "QDQ vs FP reference", tolerances.quantization_atol,
                                        tolerances.quantization_stat)):
        if not ok:
            key = f"step_{stat}_abs" if "step_weight" in rows[0] else f"{stat}_abs"
            bad = max((r for r in rows if not r["passed"]), key=lambda r: r[key])
            unit = " x step weight" if key.startswith("step_") else ""
            raise UserError(f"validation failed: {what}, output {bad['output']} (timestep "
                            f"{timesteps[bad['iteration']]}): {stat} absolute error{unit} {bad[key]:.3g} > {atol:g}")
    return report


def _runnable(path: Path) -> Path:
    """The graph Polygraphy's ONNX Runtime backend can run: for FP4 graphs, their reference form."""
    reference = artifacts.reference_onnx(Path(path))
    return reference if reference.exists() else path


def _markdown(report: dict[str, Any]) -> str:
    lines = ["# Validation", "", f"Inputs: {report['inputs_per_timestep']} per timestep at "
             f"{', '.join(map(str, report['timesteps']))}, from {report['inputs_from']}.", ""]
    for key, title in (("exporter_check", "QDQ graph vs PyTorch simulated quantization (exporter check)"),
                       ("quantization_error", "QDQ graph vs FP reference graph (quantization error)")):
        section = report[key]
        stat = report["tolerances"]["quantization_stat"]
        weighted = "step_weight" in section["iterations"][0]
        extra = f" step weight | {stat} abs x weight |" if weighted else ""
        lines += [f"## {title}: {'passed' if section['passed'] else 'FAILED'}", "",
                  f"| timestep | output | max abs | mean abs | median abs |{extra} passed |",
                  "| ---: | --- | ---: | ---: | ---: |" + (" ---: | ---: |" if weighted else "") + " --- |"]
        for r in section["iterations"]:
            cells = f" {r['step_weight']:.3g} | {r[f'step_{stat}_abs']:.3e} |" if weighted else ""
            lines.append(f"| {report['timesteps'][r['iteration']]} | {r['output']} | {r['max_abs']:.3e} | "
                         f"{r['mean_abs']:.3e} | {r['median_abs']:.3e} |{cells} {r['passed']} |")
        lines.append("")
    lines += ["Tolerances: " + ", ".join(f"{k}={v}" for k, v in report["tolerances"].items()) + ". The "
              "quantization error is checked in data units: each step's error times how far the sampler's "
              "step moves the next sample per unit of epsilon (the step weight).", "",
              "Repeat the FP comparison with Polygraphy itself (one tolerance for every step: the least "
              "sensitive step's, in epsilon units):", "", f"    {report['polygraphy_command']}", ""]
    return "\n".join(lines)


REWRITE_ATOL = 1e-4  # rewritten vs QDQ graph, max absolute difference


def run_rewrite_validation(qdq_onnx: Path, rewritten_onnx: Path, transformer: nn.Module, timesteps: list[int],
                           out_dir: Path, atol: float = REWRITE_ATOL,
                           calibration: CalibrationSet | None = None) -> dict[str, Any]:
    """The rewritten graph (plugins run by their reference functions) against the QDQ graph it
    came from, with Polygraphy in ONNX Runtime: both compute the same arithmetic, so they may
    differ only by floating-point reordering. Writes rewrite_validation.json / .md; UserError
    when the largest difference exceeds ``atol``."""
    from polygraphy.backend.onnxrt import OnnxrtRunner
    from polygraphy.comparator import Comparator
    from polygraphy.logger import G_LOGGER

    G_LOGGER.module_severity = G_LOGGER.CRITICAL
    for path in (qdq_onnx, rewritten_onnx):
        if not Path(path).is_file():
            raise UserError(f"ONNX file '{path}' does not exist")
    feeds, source = validation_feeds(transformer, timesteps, calibration)
    try:
        runners = [OnnxrtRunner(session(rewritten_onnx), name="rewritten-onnxrt"),
                   OnnxrtRunner(session(qdq_onnx), name="qdq-onnxrt")]
    except UserError:
        raise
    except Exception as e:  # ONNX Runtime rejects malformed graphs with many exception types
        raise UserError(f"ONNX Runtime cannot load the graphs: {str(e).splitlines()[0]}") from None
    results = Comparator.run(runners, data_loader=feeds)
    ok, rows = comparison(results, (0, 1), atol, "max")
    report = {"timesteps": timesteps, "inputs_from": source, "atol": atol, "stat": "max",
              "rewrite_check": {"against": "qdq-onnxrt", "passed": ok, "iterations": rows}}
    atomic_write_text(artifacts.report(out_dir, artifacts.REWRITE_VALIDATION_REPORT, "json"), json.dumps(report, indent=2) + "\n")
    lines = ["# Rewritten graph vs QDQ graph", "", f"Inputs at {', '.join(map(str, timesteps))}, from {source}; "
             f"tolerance {atol:g} on the max absolute difference.", "",
             "| timestep | output | max abs | mean abs | passed |", "| ---: | --- | ---: | ---: | --- |"]
    lines += [f"| {timesteps[r['iteration']]} | {r['output']} | {r['max_abs']:.3e} | {r['mean_abs']:.3e} | "
              f"{r['passed']} |" for r in rows]
    atomic_write_text(artifacts.report(out_dir, artifacts.REWRITE_VALIDATION_REPORT, "md"), "\n".join(lines) + "\n")
    if not ok:
        bad = max(rows, key=lambda r: r["max_abs"])
        raise UserError(f"validation failed: rewritten vs QDQ graph, output {bad['output']} (timestep "
                        f"{timesteps[bad['iteration']]}): max absolute difference {bad['max_abs']:.3g} > {atol:g}")
    return report
