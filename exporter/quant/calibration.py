"""Calibration data: the model inputs (x_t, t, y) met along real sampling trajectories.

Trajectories are sampled with the deployed sampler (its timesteps and classifier-free
guidance), so every timestep the engine will see is covered; with guidance each step yields
the conditional and the null-class input, exactly as the model receives them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from exporter.artifacts import CALIBRATION_FILE
from exporter.atomic import atomic_write_bytes
from exporter.errors import UserError
from exporter.models.loading import LoadedDiT
from exporter.models.placement import CPU, Placement, placed
from exporter.models.sampling import SamplerConfig, balanced_labels, null_class, sample


@dataclass
class CalibrationSet:
    x: torch.Tensor  # [S, C, H, W] model inputs x_t
    t: torch.Tensor  # [S] int64 timesteps
    y: torch.Tensor  # [S] int64 class labels (the null class for the unconditional half)
    sampler: SamplerConfig

    def __len__(self) -> int:
        return len(self.t)

    @property
    def timesteps(self) -> list[int]:
        return sorted(set(self.t.tolist()), reverse=True)

    def to(self, device: torch.device) -> "CalibrationSet":
        return CalibrationSet(self.x.to(device), self.t.to(device), self.y.to(device), self.sampler)

    def batches(self, size: int):
        for i in range(0, len(self), size):
            yield self.x[i:i + size], self.t[i:i + size], self.y[i:i + size]

    def save(self, path: Path) -> Path:
        metadata = {"sampler": json.dumps(self.sampler.to_dict())}
        data = save({"x": self.x.contiguous(), "t": self.t, "y": self.y}, metadata=metadata)
        return atomic_write_bytes(path, data)

    @classmethod
    def load(cls, path: Path) -> "CalibrationSet":
        try:
            from safetensors import safe_open

            tensors = load_file(str(path))
            with safe_open(str(path), "pt") as f:
                sampler = SamplerConfig(**json.loads(f.metadata()["sampler"]))
            x, t, y = tensors["x"], tensors["t"], tensors["y"]
        except (OSError, SafetensorError, KeyError, TypeError, ValueError, json.JSONDecodeError) as e:
            raise UserError(f"corrupt calibration data {path}: {e}") from None
        if not (len(x) == len(t) == len(y)):
            raise UserError(f"corrupt calibration data {path}: x, t and y differ in length")
        return cls(x, t.long(), y.long(), sampler)


def collect_calibration_set(loaded: LoadedDiT, sampler: SamplerConfig, trajectories: int, seed: int,
                            progress: bool = True, placement: Placement = CPU) -> CalibrationSet:
    """Inputs of every step of ``trajectories`` class-balanced sampling runs, sampled on ``placement``
    (the inputs are kept in float32 on the CPU)."""
    if trajectories < 1:
        raise UserError(f"calibration needs at least 1 trajectory, got {trajectories}")
    model = placed(loaded.transformer, placement)
    xs: list[torch.Tensor] = []
    ts: list[torch.Tensor] = []
    ys: list[torch.Tensor] = []

    def record(t: int, x: torch.Tensor, y: torch.Tensor) -> None:
        if sampler.guidance_scale != 1.0:
            x, y = torch.cat([x, x]), torch.cat([y, torch.full_like(y, null_class(model))])
        xs.append(x.detach().float().cpu().clone())
        ys.append(y.detach().cpu().clone())
        ts.append(torch.full((len(x),), t, dtype=torch.long))

    labels = balanced_labels(trajectories, null_class(model))
    seeds = [seed * 1_000_000 + 500_000 + i for i in range(trajectories)]  # apart from eval seeds
    sample(model, loaded.scheduler_config, labels, seeds, sampler, progress=progress, on_step=record)
    return CalibrationSet(torch.cat(xs), torch.cat(ts), torch.cat(ys), sampler)


def calibration_summary(calib: CalibrationSet) -> dict[str, Any]:
    return {"inputs": len(calib), "timesteps": len(calib.timesteps), "sampler": calib.sampler.to_dict()}


def saved_calibration(out_dir: Path) -> CalibrationSet | None:
    """The calibration data a run wrote into out_dir, if any."""
    path = out_dir / CALIBRATION_FILE
    return CalibrationSet.load(path) if path.is_file() else None
