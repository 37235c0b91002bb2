"""Quantization reports: per-layer SQNR (dB) of weights and of layer outputs per timestep, the
model output's SQNR per timestep, and per-timestep activation ranges; as JSON and PNG plots."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from exporter.atomic import atomic_file, atomic_write_text
from exporter.numerics.hadamard import rotate
from exporter.numerics.primitives import sqnr_db
from exporter.quant.calibration import CalibrationSet
from exporter.quant.quantized_model import QuantizedDiT


def _finite(x: float) -> float | None:
    return None if math.isinf(x) or math.isnan(x) else round(x, 3)


class _Energy:
    """Running ||x||^2 and ||x - x_hat||^2 (float64), so that the SQNR of a whole set of outputs
    needs only one chunk of them at a time."""

    def __init__(self) -> None:
        self.signal = self.noise = 0.0

    def add(self, reference: torch.Tensor, approximation: torch.Tensor) -> None:
        reference = reference.double()
        self.signal += float(reference.pow(2).sum())
        self.noise += float((reference - approximation.double()).pow(2).sum())

    def sqnr_db(self) -> float:
        return math.inf if self.noise == 0 else 10 * math.log10(self.signal / self.noise)


@torch.no_grad()
def measure(fp: nn.Module, qdit: QuantizedDiT, calib: CalibrationSet, per_timestep: int = 64,
            chunk: int = 4) -> dict[str, Any]:
    """Runs up to ``per_timestep`` calibration inputs of each timestep through both models,
    ``chunk`` inputs at a time: memory holds one chunk's layer outputs, not the timestep's."""
    names = list(qdit.roles)
    fp_modules = {n: fp.get_submodule(n) for n in names}
    q_modules = {n: qdit.transformer.get_submodule(n) for n in names}
    report: dict[str, Any] = {"layers": {}, "timesteps": calib.timesteps, "output_sqnr_db": []}
    per_t: dict[str, list[float]] = {n: [] for n in names}
    for t in calib.timesteps:
        idx = (calib.t == t).nonzero().flatten()[:per_timestep]
        energies = {n: _Energy() for n in names}
        output = _Energy()
        for part in idx.split(chunk):
            x, ts, y = calib.x[part], calib.t[part], calib.y[part]
            fp_outputs: dict[str, torch.Tensor] = {}
            hooks = [m.register_forward_hook(lambda _m, _i, o, n=n: fp_outputs.__setitem__(n, o))
                     for n, m in fp_modules.items()]
            hooks += [m.register_forward_hook(lambda _m, _i, o, n=n: energies[n].add(fp_outputs.pop(n), o))
                      for n, m in q_modules.items()]
            try:
                output.add(fp(x, ts, y).sample, qdit.transformer(x, ts, y).sample)
            finally:
                for h in hooks:
                    h.remove()
        report["output_sqnr_db"].append(_finite(output.sqnr_db()))
        for n in names:
            per_t[n].append(energies[n].sqnr_db())
    for n in names:
        q = q_modules[n]
        block = getattr(q, "rotation_block", 0)
        weight = rotate(q.weight, block) if block else q.weight  # W H H = W: H is symmetric, orthonormal
        report["layers"][n] = {
            "role": qdit.roles[n],
            "weight_sqnr_db": _finite(sqnr_db(fp_modules[n].weight, weight)),
            "output_sqnr_db_mean": _finite(sum(per_t[n]) / len(per_t[n])),
            "output_sqnr_db_per_timestep": [_finite(v) for v in per_t[n]],
        }
        if n in qdit.activation_ranges:
            lo, hi = qdit.activation_ranges[n]
            report["layers"][n]["activation_range_per_bucket"] = {"min": lo, "max": hi}
    report["buckets"] = qdit.buckets.members
    if qdit.calibration_losses:
        report["block_calibration_losses"] = qdit.calibration_losses
    return report


def write_reports(report: dict[str, Any], out_dir: Path, title: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = [atomic_write_text(out_dir / "quant_report.json", json.dumps(report, indent=2) + "\n")]
    names = list(report["layers"])
    short = [n.replace("transformer_blocks.", "b").replace(".attn1.", ".").replace(".ff.net.", ".ff")
             for n in names]

    fig, ax = plt.subplots(figsize=(max(8, 0.28 * len(names)), 4.5))
    pos = range(len(names))
    w = [report["layers"][n]["weight_sqnr_db"] or 0 for n in names]
    o = [report["layers"][n]["output_sqnr_db_mean"] or 0 for n in names]
    ax.bar([p - 0.2 for p in pos], w, width=0.4, label="weight")
    ax.bar([p + 0.2 for p in pos], o, width=0.4, label="layer output (mean over timesteps)")
    ax.set_xticks(list(pos), short, rotation=90, fontsize=7)
    ax.set_ylabel("SQNR (dB)")
    ax.set_title(f"{title}: per-layer SQNR")
    ax.legend()
    fig.tight_layout()
    paths.append(_save(fig, out_dir / "layer_sqnr.png"))

    fig, ax = plt.subplots(figsize=(10, max(4, 0.22 * len(names))))
    grid = [[v if v is not None else float("nan") for v in report["layers"][n]["output_sqnr_db_per_timestep"]]
            for n in names]
    image = ax.imshow(grid, aspect="auto", cmap="viridis")
    ax.set_yticks(list(pos), short, fontsize=7)
    ts = report["timesteps"]
    ax.set_xticks(range(len(ts)), [str(t) for t in ts], rotation=90, fontsize=7)
    ax.set_xlabel("timestep")
    ax.set_title(f"{title}: layer output SQNR (dB) per timestep")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    paths.append(_save(fig, out_dir / "timestep_sqnr.png"))

    ranged = [n for n in names if "activation_range_per_bucket" in report["layers"][n]]
    if ranged:
        fig, ax = plt.subplots(figsize=(9, 5))
        for n, label in zip(names, short):
            if n in ranged:
                r = report["layers"][n]["activation_range_per_bucket"]
                amax = [max(-a, b) for a, b in zip(r["min"], r["max"])]
                ax.plot(range(len(amax)), amax, marker=".", linewidth=1, label=label)
        ax.set_yscale("log")
        ax.set_xlabel("timestep bucket (0 = first sampling step, noisiest)")
        ax.set_ylabel("input |activation| max")
        ax.set_title(f"{title}: per-timestep activation ranges")
        ax.legend(fontsize=6, ncol=4)
        fig.tight_layout()
        paths.append(_save(fig, out_dir / "activation_ranges.png"))

    if report.get("block_calibration_losses"):
        fig, ax = plt.subplots(figsize=(8, 4.5))
        for block, losses in report["block_calibration_losses"].items():
            ax.plot(range(1, len(losses) + 1), losses, linewidth=1, label=block)
        ax.set_yscale("log")
        ax.set_xlabel("iteration")
        ax.set_ylabel("block output MSE / teacher mean square")
        ax.set_title(f"{title}: block-wise calibration loss (VQ4DiT codebooks or DilateQuant scales)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        paths.append(_save(fig, out_dir / "calibration_loss.png"))
    return paths


def plot_group_search(details: dict, path: Path, title: str) -> Path:
    """Best objective per epoch against the best uniform setting, and the chosen groups per layer."""
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    left.plot(range(1, len(details["history"]) + 1), details["history"], marker="o", label="searched")
    for group, value in details["uniform"].items():
        left.axhline(value, linestyle="--", linewidth=1, color="gray")
        left.annotate(f"uniform {group}", (1, value), fontsize=7, color="gray")
    left.set_yscale("log")
    left.set_xlabel("epoch")
    left.set_ylabel("Fréchet distance to FP samples, same seeds")
    left.text(0.02, 0.02, f"on fresh seeds too: chosen {details['objective']:.3g}, "
              f"uniform seed {details['seed_objective']:.3g}", transform=left.transAxes, ha="left", va="bottom",
              fontsize=8)
    left.set_title(f"{title}: group-size search (budget: mean group >= {details['budget']:g})")
    names = list(details["config"])
    right.bar(range(len(names)), [details["config"][n][0] for n in names], width=0.4, label="weight group")
    right.bar([i + 0.4 for i in range(len(names))], [details["config"][n][1] for n in names], width=0.4,
              label="activation group")
    right.set_xticks(range(len(names)))
    right.set_xticklabels([n.replace("transformer_blocks.", "b") for n in names], rotation=90, fontsize=6)
    right.legend(fontsize=7)
    right.set_title("chosen group sizes per layer")
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path
