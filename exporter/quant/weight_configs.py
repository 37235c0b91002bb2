"""What a recipe says about its weights: one config type per kind of weight (integer grids, FP4
grids, codebooks), each validating its own fields. ``WEIGHT_CONFIGS`` names them for manifests."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

import torch

from exporter.errors import UserError
from exporter.numerics.fp4 import MAGNITUDES, Fp4Format
from exporter.numerics.fp4_groups import select_pow2_format
from exporter.numerics.primitives import PER_CHANNEL, PER_TENSOR, IntFormat, QuantFormat
from exporter.numerics.vq import VqFormat
from exporter.quant.methods.hqdit import select_format


def check_bits(bits: int) -> None:
    if not 2 <= bits <= 8:
        raise UserError(f"integer formats have 2 to 8 bits, not {bits}")


def _check_choice(what: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise UserError(f"unknown {what} '{value}'; valid: {', '.join(valid)}")


@dataclass(frozen=True)
class ScalarWeights:
    """Weights quantized one number at a time on a grid, with a scale per group of ``group_size``
    input channels (PER_CHANNEL: per output row, PER_TENSOR: one), rounded to nearest (rtn) or
    by GPTQ; clip_search: group ranges clipped where that lowers the weight error."""

    kind: ClassVar[str]
    METHODS: ClassVar[tuple[str, ...]] = ("rtn", "gptq")
    SCALES: ClassVar[tuple[str, ...]]
    SCALES_NEED: ClassVar[str]  # what scales other than float need, when the fields do not fit them
    group_size: int = PER_CHANNEL
    method: str = "rtn"
    clip_search: bool = False
    scales: str = "float"

    def __post_init__(self) -> None:
        _check_choice(f"{self.kind} weight scales", self.scales, self.SCALES)
        if self.method not in self.METHODS:
            raise UserError(f"weight method '{self.method}' does not apply to {self.kind} weights; valid: "
                            f"{', '.join(self.METHODS)}")
        if self.group_size < PER_CHANNEL:
            raise UserError(f"weight group size must be -1 (per channel), 0 (per tensor) or positive, "
                            f"not {self.group_size}")
        if self.method == "gptq" and self.group_size == PER_TENSOR:
            raise UserError("GPTQ needs per-channel or group-wise weight scales, not per-tensor")
        if not self.scales_fit(asdict(self)):
            raise UserError(self.SCALES_NEED)

    @staticmethod
    def scales_fit(values: dict[str, Any]) -> bool:
        """Whether the fields ``values`` allow their scales: float scales fit everything; a kind with
        other scales says when they fit."""
        return values["scales"] == "float"


@dataclass(frozen=True)
class IntWeights(ScalarWeights):
    """Integer weights of ``bits`` bits. scales float: a float32 scale per group; two-level:
    symmetric INT4 groups scaled by s[n] * f[n, g], s a float per output row and f an integer 1..16
    per group, so that a kernel's K loop is a pure INT8 MMA (exporter/numerics/two_level.py)."""

    kind: ClassVar[str] = "int"
    SCALES: ClassVar[tuple[str, ...]] = ("float", "two-level")
    SCALES_NEED: ClassVar[str] = "two-level weight scales need symmetric INT4 weights in groups (group size > 0)"
    bits: int = 8
    symmetric: bool = True

    def __post_init__(self) -> None:
        check_bits(self.bits)
        super().__post_init__()

    @staticmethod
    def scales_fit(values: dict[str, Any]) -> bool:
        return values["scales"] != "two-level" or (values["bits"] == 4 and values["symmetric"]
                                                   and values["group_size"] > 0)

    def format_for(self, weight: torch.Tensor) -> QuantFormat:
        return IntFormat(self.bits, self.symmetric)


@dataclass(frozen=True)
class Fp4Weights(ScalarWeights):
    """4-bit float weights: ``format`` e2m1 / e3m0 / e1m2, or auto: chosen per layer from its
    weights (HQ-DiT). scales float: a float32 scale per group; pow2-groups: s[n] * 2**t[n, g], t in
    the format's exponent range, so that v * 2**t is an exact E4M3 operand and the K loop a pure
    FP8 MMA (exporter/numerics/fp4_groups.py)."""

    kind: ClassVar[str] = "fp4"
    SCALES: ClassVar[tuple[str, ...]] = ("float", "pow2-groups")
    SCALES_NEED: ClassVar[str] = "power-of-two group scales (pow2-groups) need FP4 weights in groups (group size > 0)"
    bits: ClassVar[int] = 4
    symmetric: ClassVar[bool] = True
    format: str = "auto"

    def __post_init__(self) -> None:
        _check_choice("FP4 weight format", self.format, (*MAGNITUDES, "auto"))
        super().__post_init__()

    @staticmethod
    def scales_fit(values: dict[str, Any]) -> bool:
        return values["scales"] != "pow2-groups" or values["group_size"] > 0

    def format_for(self, weight: torch.Tensor) -> Fp4Format:
        """The layer's format; with format auto, the one that fits ``weight`` best (on the
        power-of-two-group grid with pow2-groups scales)."""
        if self.format != "auto":
            return Fp4Format(self.format)
        if self.scales == "pow2-groups":
            return select_pow2_format(weight, self.group_size, clip_search=self.clip_search)[0]
        return select_format(weight, self.group_size, clip_search=self.clip_search)[0]


@dataclass(frozen=True)
class VqWeights:
    """Codebooks of ``codewords`` codewords over sub-vectors of ``dim`` weights (VQ4DiT), log2(codewords)
    / dim bits per weight: calibrated block by block (vq4dit, ``iterations`` per block, ``candidates``
    nearest codewords per sub-vector) or nearest codewords (kmeans)."""

    kind: ClassVar[str] = "vq"
    METHODS: ClassVar[tuple[str, ...]] = ("vq4dit", "kmeans")
    codewords: int = 256
    dim: int = 4
    method: str = "vq4dit"
    iterations: int = 300
    candidates: int = 2

    def __post_init__(self) -> None:
        if self.method not in self.METHODS:
            raise UserError(f"weight method '{self.method}' does not apply to vq weights; valid: "
                            f"{', '.join(self.METHODS)}")
        self.codebook_format
        if self.iterations < 0 or self.candidates < 1:
            raise UserError("VQ calibration needs iterations >= 0 and at least one candidate codeword")

    @property
    def bits(self) -> float:
        return self.codebook_format.bits_per_weight

    @property
    def codebook_format(self) -> VqFormat:
        try:
            return VqFormat(self.codewords, self.dim)
        except ValueError as e:
            raise UserError(str(e)) from None


WeightConfig = IntWeights | Fp4Weights | VqWeights
WEIGHT_CONFIGS: dict[str, type[WeightConfig]] = {c.kind: c for c in (IntWeights, Fp4Weights, VqWeights)}


def weights_to_dict(config: WeightConfig) -> dict[str, Any]:
    return {"kind": config.kind, **asdict(config)}


def weights_from_dict(d: dict[str, Any]) -> WeightConfig:
    """The config ``weights_to_dict`` wrote."""
    values = dict(d)
    kind = values.pop("kind", None)
    if kind not in WEIGHT_CONFIGS:
        raise UserError(f"unknown weight kind {kind!r}; valid: {', '.join(WEIGHT_CONFIGS)}")
    return _config(WEIGHT_CONFIGS[kind], values)


def with_weight_overrides(config: WeightConfig, overrides: dict[str, Any]) -> WeightConfig:
    """``config`` with ``overrides`` of its fields; scales the result cannot take switch to float
    unless the overrides name them."""
    values = {**asdict(config), **overrides}
    if "scales" not in overrides and isinstance(config, ScalarWeights) and not config.scales_fit(values):
        values["scales"] = "float"
    return _config(type(config), values)


def _config(cls: type[WeightConfig], values: dict[str, Any]) -> WeightConfig:
    names = [f.name for f in fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise UserError(f"{cls.kind} weights have no setting {', '.join(unknown)}; theirs: {', '.join(names)}")
    return cls(**values)


__all__ = ["Fp4Weights", "IntWeights", "ScalarWeights", "VqWeights", "WEIGHT_CONFIGS", "WeightConfig", "check_bits",
           "weights_from_dict", "weights_to_dict", "with_weight_overrides"]
