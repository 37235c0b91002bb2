"""Integer quantization primitives, pure torch.

Conventions, stated once:

| granularity   | tensor viewed as        | scale / zero-point shape      |
| ------------- | ----------------------- | ----------------------------- |
| per-tensor    | [1, numel]              | [1, 1]                        |
| per-channel   | [rows, K]               | [rows, 1]                     |
| group g       | [rows, ceil(K/g), g]    | [rows, ceil(K/g)]             |

Groups run along the last axis (a Linear weight's input channels, an activation's channels).
When K is not a multiple of g the last group is shorter; for statistics it is padded by
repeating its last element, which changes neither its minimum nor its maximum.

Symmetric formats are signed with zero-point 0 and use [-2^(b-1), 2^(b-1)-1], the scale mapping
the largest magnitude to 2^(b-1)-1. Asymmetric formats are unsigned, [0, 2^b - 1], with an
integer zero-point (what ONNX QuantizeLinear calls uint4 / uint8).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

from exporter.errors import UserError
from exporter.numerics.fp4 import Fp4Format

PER_TENSOR = 0
PER_CHANNEL = -1
SMALLEST_SCALE = torch.finfo(torch.float32).tiny * 2**24  # every scale is at least this


@dataclass(frozen=True)
class IntFormat:
    bits: int
    symmetric: bool = True

    def __post_init__(self) -> None:
        if not 2 <= self.bits <= 8:
            raise ValueError(f"integer formats have 2 to 8 bits, not {self.bits}")

    @property
    def qmin(self) -> int:
        return -(2 ** (self.bits - 1)) if self.symmetric else 0

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.symmetric else 2**self.bits - 1

    @property
    def name(self) -> str:
        return f"{'int' if self.symmetric else 'uint'}{self.bits}"

    def round(self, scaled: torch.Tensor) -> torch.Tensor:
        """Nearest representable code of values already divided by the scale (and shifted)."""
        return scaled.round().clamp(self.qmin, self.qmax)

    def encode(self, rounded: torch.Tensor) -> torch.Tensor:
        """Storage of rounded values: int8 for signed formats, uint8 for unsigned."""
        return rounded.to(torch.int8 if self.symmetric else torch.uint8)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return codes.float()


@dataclass(frozen=True)
class Fp8E4M3Format:
    """FP8 E4M3 (the 'FN' variant: no infinities, largest magnitude 448), symmetric, scaled so
    that the range maps onto +-448; values round to the nearest FP8 number, ties to even."""

    bits: int = 8
    symmetric: bool = True
    qmin: float = -448.0
    qmax: float = 448.0
    name: str = "fp8e4m3"

    def round(self, scaled: torch.Tensor) -> torch.Tensor:
        return scaled.clamp(self.qmin, self.qmax).to(torch.float8_e4m3fn).to(scaled.dtype)


QuantFormat = IntFormat | Fp8E4M3Format | Fp4Format


def format_from_name(name: str) -> QuantFormat:
    if name == Fp8E4M3Format.name:
        return Fp8E4M3Format()
    if name.startswith("fp4"):
        return Fp4Format(name[3:])
    match = re.fullmatch(r"(u?)int(\d)", name)
    if not match:
        raise ValueError(f"unknown number format '{name}'")
    return IntFormat(int(match.group(2)), symmetric=not match.group(1))


def group_view(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """[..., K] -> [..., ceil(K/g), g]; group_size PER_TENSOR / PER_CHANNEL as in the table."""
    if group_size == PER_TENSOR:
        return x.reshape(1, 1, -1)
    k = x.shape[-1]
    if group_size == PER_CHANNEL or group_size >= k:
        return x.unsqueeze(-2)
    pad = -k % group_size
    if pad:
        x = torch.cat([x, x[..., -1:].expand(*x.shape[:-1], pad)], dim=-1)
    return x.reshape(*x.shape[:-1], -1, group_size)


def ungroup(grouped: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Inverse of group_view for a tensor of the original ``shape``."""
    return grouped.reshape(*shape[:-1], -1)[..., : shape[-1]]


def activation_group(group_size: int, k: int) -> int:
    """Channels per activation scale: the whole token unless a smaller group is given, which must
    divide k (the exported blocked Q/DQ and the plugins' scale tables need whole groups)."""
    g = k if group_size in (PER_CHANNEL, PER_TENSOR) or group_size >= k else group_size
    if k % g:
        raise UserError(f"activation groups of {g} do not divide {k} channels")
    return g


def num_groups(k: int, group_size: int) -> int:
    return 1 if group_size in (PER_TENSOR, PER_CHANNEL) or group_size >= k else math.ceil(k / group_size)


def qparams_from_range(lo: torch.Tensor, hi: torch.Tensor, fmt: QuantFormat) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and integer zero-point mapping [lo, hi] onto the format's grid (lo <= 0 <= hi)."""
    lo = torch.minimum(lo, torch.zeros_like(lo))
    hi = torch.maximum(hi, torch.zeros_like(hi))
    if fmt.symmetric:
        scale = torch.maximum(-lo, hi) / fmt.qmax
        zero = torch.zeros_like(scale)
    else:
        scale = (hi - lo) / (fmt.qmax - fmt.qmin)
        zero = (fmt.qmin - lo / scale.clamp_min(torch.finfo(scale.dtype).tiny)).round().clamp(fmt.qmin, fmt.qmax)
    return scale.clamp_min(SMALLEST_SCALE), zero


def choose_qparams(x: torch.Tensor, fmt: QuantFormat, group_size: int,
                   clip_ratio: float | torch.Tensor = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Min/max scale and zero-point for each group of x (shapes as in the module table)."""
    g = group_view(x.detach().float(), group_size)
    lo, hi = g.amin(-1), g.amax(-1)
    scale, zero = qparams_from_range(lo * clip_ratio, hi * clip_ratio, fmt)
    return _as_param_shape(scale, x, group_size), _as_param_shape(zero, x, group_size)


def _as_param_shape(p: torch.Tensor, x: torch.Tensor, group_size: int) -> torch.Tensor:
    if group_size == PER_TENSOR:
        return p.reshape(1, 1)
    return p.reshape(*x.shape[:-1], -1)


def quantize(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, fmt: QuantFormat,
             group_size: int) -> torch.Tensor:
    """Codes of x, same shape as x, in the format's storage (``fmt.encode``): int8 for signed
    integers, uint8 for unsigned ones and for 4-bit floats (exporter/numerics/fp4.py)."""
    g = group_view(x.float(), group_size)
    q = fmt.round(g / scale.unsqueeze(-1) + zero.unsqueeze(-1))
    return fmt.encode(ungroup(q, x.shape))


def dequantize(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, fmt: QuantFormat,
               group_size: int) -> torch.Tensor:
    g = group_view(fmt.decode(codes), group_size)
    return ungroup((g - zero.unsqueeze(-1)) * scale.unsqueeze(-1), codes.shape)


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, fmt: QuantFormat,
                  group_size: int) -> torch.Tensor:
    """dequantize(quantize(x)) in x's dtype."""
    g = group_view(x.float(), group_size)
    s, z = scale.unsqueeze(-1), zero.unsqueeze(-1)
    out = (fmt.round(g / s + z) - z) * s
    return ungroup(out, x.shape).to(x.dtype)


def search_clip_ratio(x: torch.Tensor, fmt: IntFormat, group_size: int, candidates: int = 100,
                      min_ratio: float = 0.2, p: float = 2.4) -> torch.Tensor:
    """Per-group clip ratio (shape of the scales) minimising sum |x - fake_quant(x)|^p, as in
    Q-DiT's MSE clip search; ratio 1.0 (plain min/max) is always a candidate and wins ties."""
    g = group_view(x.detach().float(), group_size)
    lo, hi = g.amin(-1), g.amax(-1)
    ratios = torch.linspace(1.0, min_ratio, candidates)
    chunk = max(1, (1 << 24) // max(1, g.numel()))  # candidates evaluated at once, bounded memory
    errors = []
    for part in ratios.split(chunk):
        r = part.reshape(-1, *([1] * lo.dim()))
        scale, zero = qparams_from_range(lo * r, hi * r, fmt)
        s, z = scale.unsqueeze(-1), zero.unsqueeze(-1)
        errors.append(((fmt.round(g / s + z) - z) * s - g).abs().pow(p).sum(-1))
    best = torch.cat(errors).argmin(0)  # first minimum: the largest ratio among equals
    return _as_param_shape(ratios[best], x, group_size)


def sqnr_db(reference: torch.Tensor, approximation: torch.Tensor) -> float:
    """20 log10(||x|| / ||x - x_hat||); +inf for an exact approximation."""
    noise = (reference.double() - approximation.double()).norm()
    if noise == 0:
        return math.inf
    return float(20 * torch.log10(reference.double().norm() / noise))


def first_valid_candidate(valid: torch.Tensor, what: str) -> torch.Tensor:
    """Per row of ``valid`` [N, C], the index of its first True candidate; ValueError naming ``what``
    (the grid the scales are not on) and the rows with none."""
    if not bool(valid.any(1).all()):
        rows = (~valid.any(1)).nonzero().flatten()
        raise ValueError(f"scales are not {what}: {len(rows)} of {len(valid)} rows, first row {int(rows[0])}")
    return valid.int().argmax(1)

