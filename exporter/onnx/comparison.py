"""Comparing a graph's or engine's outputs with a reference's: Polygraphy's error statistics per
input, checked against tolerances (exporter/stages/validate.py says how they were chosen). Used by the
validate and rewrite stages and by the engine stage (engines/)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from exporter.errors import UserError

STATS = ("max", "mean", "median")


@dataclass(frozen=True)
class Tolerances:
    exporter_atol: float = 5e-3  # (a), on exporter_stat of |qdq - simulated|
    exporter_stat: str = "median"
    quantization_atol: float = 0.02  # (b), on quantization_stat of |qdq - fp| x the step's weight
    quantization_stat: str = "mean"

    def __post_init__(self) -> None:
        for stat in (self.exporter_stat, self.quantization_stat):
            if stat not in STATS:
                raise UserError(f"unknown error statistic '{stat}'; valid: {', '.join(STATS)}")


def comparison(results, pair: tuple[int, int], atol: float, stat: str,
                weights: list[float] | None = None) -> tuple[bool, list[dict[str, Any]]]:
    """Polygraphy's error statistics per iteration and output; an iteration passes when its
    ``stat`` times its weight (1 without weights) is at most ``atol``."""
    from polygraphy.comparator import Comparator
    from polygraphy.comparator.compare import SimpleCompareFunc

    compare = SimpleCompareFunc(atol=float("inf"), rtol=0.0, check_error_stat=stat)
    accuracy = Comparator.compare_accuracy(results, comparisons=[pair], compare_func=compare)
    rows = []
    for _, iterations in accuracy[0].items():
        for i, outputs in enumerate(iterations):
            for name, r in outputs.items():
                row = {"iteration": i, "output": name, "max_abs": float(r.max_absdiff),
                       "mean_abs": float(r.mean_absdiff), "median_abs": float(r.median_absdiff)}
                if weights is not None:
                    row["step_weight"] = weights[i]
                    row[f"step_{stat}_abs"] = weights[i] * row[f"{stat}_abs"]
                row["passed"] = row[f"step_{stat}_abs" if weights is not None else f"{stat}_abs"] <= atol
                rows.append(row)
    return all(r["passed"] for r in rows), rows


def worst(section: dict[str, Any], stat: str) -> float:
    """The largest ``stat`` absolute error over a report section's iterations (times the step
    weights, where the section's check uses them)."""
    key = f"step_{stat}_abs" if "step_weight" in section["iterations"][0] else f"{stat}_abs"
    return max(r[key] for r in section["iterations"])
