"""A quantized DiT as calibration leaves it: its transformer with quantized Linears, the
timestep buckets of its static scales, and what calibration measured."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from exporter.errors import UserError
from exporter.quant.qlinear import DecodedLinear, TimestepContext
from exporter.quant.recipes import Recipe


@dataclass
class TimestepBuckets:
    """bucket_of_t [num_train_timesteps] int64 and the calibrated timesteps of each bucket."""

    bucket_of_t: torch.Tensor
    members: list[list[int]]

    @property
    def count(self) -> int:
        return len(self.members)

    @classmethod
    def build(cls, calibrated: list[int], n_buckets: int | None, num_train_timesteps: int) -> "TimestepBuckets":
        steps = sorted(set(calibrated), reverse=True)
        n = len(steps) if n_buckets is None else n_buckets
        if not 1 <= n <= len(steps):
            raise UserError(f"timestep buckets must be between 1 and {len(steps)} (calibrated timesteps), got {n}")
        members = [chunk.tolist() for chunk in torch.tensor(steps).tensor_split(n)]
        bucket_of_step = {t: b for b, chunk in enumerate(members) for t in chunk}
        anchors = torch.tensor(steps)
        nearest = (torch.arange(num_train_timesteps)[:, None] - anchors[None, :]).abs().argmin(1)
        bucket_of_t = torch.tensor([bucket_of_step[int(anchors[i])] for i in nearest])
        return cls(bucket_of_t, members)


@dataclass
class QuantizedDiT:
    transformer: nn.Module
    context: TimestepContext
    recipe: Recipe
    buckets: TimestepBuckets
    roles: dict[str, str]  # quantized layer name -> role
    activation_ranges: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)
    calibration_losses: dict[str, list[float]] = field(default_factory=dict)  # per block: VQ4DiT, DilateQuant

    def to(self, device: torch.device) -> "QuantizedDiT":
        """The model and its bucket table moved to ``device``, in place."""
        self.transformer.to(device)
        self.buckets.bucket_of_t = self.buckets.bucket_of_t.to(device)
        return self

    def quant_linears(self) -> dict[str, DecodedLinear]:
        return {n: m for n, m in self.transformer.named_modules() if isinstance(m, DecodedLinear)}
