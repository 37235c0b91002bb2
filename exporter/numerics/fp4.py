"""4-bit floating-point formats (HQ-DiT): the representable magnitudes, rounding to them, and
their 4-bit codes.

A code is sign << 3 | i, where i indexes the format's sorted non-negative magnitudes; for E2M1
this is exactly the OCP / ONNX FLOAT4E2M1 bit layout (sign, 2 exponent bits, 1 mantissa bit).

| format | magnitudes                                  | largest |
| ------ | ------------------------------------------- | ------- |
| E2M1   | 0, 0.5, 1, 1.5, 2, 3, 4, 6                  | 6       |
| E3M0   | 0, 0.25, 0.5, 1, 2, 4, 8, 16 (powers of 2)  | 16      |
| E1M2   | 0, 0.25, 0.5, ..., 1.75 (uniform, like INT4) | 1.75    |

E3M0 spends exponent 0 on zero, so its smallest power of two is 2^-2. Values round to the
nearest magnitude, ties to the even index (the even mantissa), and saturate at the largest.
Scales are applied as for integer formats (exporter/numerics/primitives.py): a group's largest
magnitude maps onto the format's largest.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

MAGNITUDES = {
    "e2m1": (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0),
    "e3m0": (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0),
    "e1m2": (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75),
}


@dataclass(frozen=True)
class Fp4Format:
    kind: str = "e2m1"
    bits: int = field(default=4, init=False)
    symmetric: bool = field(default=True, init=False)

    def __post_init__(self) -> None:
        if self.kind not in MAGNITUDES:
            raise ValueError(f"unknown FP4 format '{self.kind}'; valid: {', '.join(MAGNITUDES)}")

    @property
    def name(self) -> str:
        return f"fp4{self.kind}"

    @property
    def magnitudes(self) -> torch.Tensor:
        return torch.tensor(MAGNITUDES[self.kind])

    @property
    def qmax(self) -> float:
        return MAGNITUDES[self.kind][-1]

    @property
    def qmin(self) -> float:
        return -self.qmax

    def thresholds(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """t such that |y| rounds to magnitude index #(t < |y|): the midpoints between neighbouring
        magnitudes, each one ulp lower where a tie rounds up to the even index. Values past the
        last threshold take the largest magnitude (saturation)."""
        grid = self.magnitudes.to(dtype)
        mids = (grid[1:] + grid[:-1]) / 2
        up_at_tie = torch.arange(1, len(grid)) % 2 == 0
        return torch.where(up_at_tie, torch.nextafter(mids, torch.zeros_like(mids)), mids)

    def index(self, scaled: torch.Tensor) -> torch.Tensor:
        """Index of the nearest magnitude of |scaled| (ties to the even index), int64."""
        return torch.bucketize(scaled.abs(), self.thresholds(scaled.dtype))

    def round(self, scaled: torch.Tensor) -> torch.Tensor:
        grid = self.magnitudes.to(scaled.dtype)
        return torch.sign(scaled) * grid[self.index(scaled)]

    def encode(self, scaled: torch.Tensor) -> torch.Tensor:
        """uint8 codes in [0, 15] of the rounded values (negative zero encodes as zero)."""
        i = self.index(scaled)
        negative = (scaled < 0) & (i > 0)
        return (negative.to(torch.int64) << 3 | i).to(torch.uint8)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Values (in units of the scale) of uint8 codes."""
        c = codes.to(torch.int64)
        value = self.magnitudes[c & 7]
        return torch.where(c >= 8, -value, value)


FP4_FORMATS = tuple(Fp4Format(k) for k in MAGNITUDES)
