"""Optimization profiles: the batch sizes and the resolution an engine accepts.

The default fits classifier-free-guidance sampling: each image is run as a conditional and a
null-class sample, so batch 2 is the typical shape (opt), 1 the smallest and 16 (eight images)
the largest. A DiT's positional embedding is built for one latent size, so the resolution is
the model's ``sample_size``; any other is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

from exporter.errors import UserError
from exporter.onnx.tracing import INPUT_NAMES

Shape = tuple[int, ...]


@dataclass(frozen=True)
class EngineProfile:
    min_batch: int = 1
    opt_batch: int = 2
    max_batch: int = 16
    resolution: int | None = None  # latent height = width; None: the model's sample_size

    @classmethod
    def parse(cls, batches: str, resolution: int | None = None) -> "EngineProfile":
        """'1,2,16' (min, opt, max) or one batch size for all three."""
        try:
            values = [int(v) for v in batches.split(",")]
        except ValueError:
            raise UserError(f"batch sizes must be integers 'MIN,OPT,MAX' or 'N', not '{batches}'") from None
        if len(values) == 1:
            values *= 3
        if len(values) != 3:
            raise UserError(f"batch sizes must be 'MIN,OPT,MAX' or 'N', not '{batches}'")
        return cls(values[0], values[1], values[2], resolution=resolution)

    def shapes(self, config) -> dict[str, tuple[Shape, Shape, Shape]]:
        """(min, opt, max) shape of each graph input for a model with this diffusers config."""
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise UserError(f"batch sizes must satisfy 1 <= min <= opt <= max, not {self.min_batch}, "
                            f"{self.opt_batch}, {self.max_batch}")
        size = config.sample_size if self.resolution is None else self.resolution
        if size != config.sample_size:
            raise UserError(f"profile resolution {size} does not fit the model: its positional embedding is "
                            f"built for {config.sample_size} x {config.sample_size} latents")
        batches = (self.min_batch, self.opt_batch, self.max_batch)
        sample = tuple((b, config.in_channels, size, size) for b in batches)
        vector = tuple((b,) for b in batches)
        return {INPUT_NAMES[0]: sample, INPUT_NAMES[1]: vector, INPUT_NAMES[2]: vector}  # type: ignore[dict-item]

    @staticmethod
    def trtexec_flags(shapes: dict[str, tuple[Shape, Shape, Shape]]) -> list[str]:
        flags = []
        for i, option in enumerate(("--minShapes", "--optShapes", "--maxShapes")):
            flags.append(f"{option}=" + ",".join(f"{name}:{'x'.join(map(str, s[i]))}" for name, s in shapes.items()))
        return flags
