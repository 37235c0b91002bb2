"""Precisions: one frozen recipe per name, selected with --precision."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

from exporter.errors import UserError
from exporter.numerics.fp4 import Fp4Format
from exporter.numerics.kernel_layout import FP4_GROUP, INT4_GROUP
from exporter.numerics.primitives import PER_CHANNEL, PER_TENSOR, Fp8E4M3Format, IntFormat, QuantFormat
from exporter.quant.policy import LayerPolicy
from exporter.quant.weight_configs import (
    Fp4Weights,
    IntWeights,
    VqWeights,
    WeightConfig,
    check_bits,
    weights_from_dict,
    weights_to_dict,
    with_weight_overrides,
)


def _fits_activation_scales(scales: str, kind: str, bits: int, symmetric: bool, mode: str, group_size: int) -> bool:
    if scales == "two-level":
        return kind == "int" and bits == 4 and not symmetric and mode == "static" and group_size > 0
    return scales != "e4m3-groups" or (kind == "fp4" and mode == "dynamic" and group_size > 0)


ACTIVATION_SCALES = ("float", "e4m3-groups", "two-level")


@dataclass(frozen=True)
class ActivationSpec:
    bits: int = 8
    symmetric: bool = True
    mode: Literal["static", "dynamic"] = "static"
    # static: scales per timestep bucket (per_timestep) or one set for all timesteps, for the
    # whole token (group_size PER_CHANNEL, -1) or per group of group_size channels; clip_search:
    # ranges clipped where that lowers the calibration activations' error (static_clipping.py).
    # dynamic: scales from each token (per group of group_size channels; -1: the whole token).
    per_timestep: bool = True
    group_size: int = PER_CHANNEL
    clip_search: bool = False
    kind: Literal["int", "fp8", "fp4"] = "int"  # fp8: FP8 E4M3; fp4: FP4 E2M1 (symmetric)
    # float: a float32 scale per group (max|x| / qmax); e4m3-groups (fp4, dynamic, groups): a float
    # per token times m 2**t per group, m in {1, 1.25, 1.5}, from comparisons of each group's maximum
    # with the token's (exporter/numerics/fp4_fine_groups.py), so that the operands are exact E4M3 numbers;
    # two-level (static asymmetric INT4 in groups): a float per bucket times an integer 1..8 per group
    # (exporter/numerics/two_level_activations.py), so that (q - z) f is an exact INT8 operand
    scales: Literal["float", "e4m3-groups", "two-level"] = "float"

    def __post_init__(self) -> None:
        check_bits(self.bits)
        if self.scales not in ACTIVATION_SCALES:
            raise UserError(f"unknown activation scales '{self.scales}'; valid: {', '.join(ACTIVATION_SCALES)}")
        if not _fits_activation_scales(self.scales, self.kind, self.bits, self.symmetric, self.mode, self.group_size):
            raise UserError("fine group activation scales (e4m3-groups) need dynamic FP4 activations in groups, "
                            "two-level activation scales static asymmetric INT4 activations in groups (group size > 0)")
        if self.kind not in ("int", "fp8", "fp4"):
            raise UserError(f"unknown activation format '{self.kind}'; valid: int, fp8, fp4")
        if self.kind == "fp8" and (self.bits != 8 or not self.symmetric):
            raise UserError("FP8 activations are 8-bit E4M3 and symmetric")
        if self.kind == "fp4" and (self.bits != 4 or not self.symmetric):
            raise UserError("FP4 activations are 4-bit E2M1 and symmetric")
        if self.mode not in ("static", "dynamic"):
            raise UserError(f"unknown activation mode '{self.mode}'; valid: static, dynamic")
        if self.group_size < PER_CHANNEL:
            raise UserError(f"activation group size must be -1 (whole token) or positive, not {self.group_size}")
        if self.clip_search and self.mode != "static":
            raise UserError("activation clip search sets static ranges: it needs static activations")

    @property
    def format(self) -> QuantFormat:
        if self.kind == "fp8":
            return Fp8E4M3Format()
        if self.kind == "fp4":
            return Fp4Format("e2m1")
        return IntFormat(self.bits, self.symmetric)


_SCALARS = {"str": str, "bool": bool, "int": int}  # Recipe's plain fields by annotation, and their types


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    weight: WeightConfig
    activation: ActivationSpec | None
    policy: LayerPolicy = field(default_factory=LayerPolicy)
    hadamard: bool = False  # rotate every quantized layer's input channels (exporter/numerics/hadamard.py)
    # 0: every quantized layer rotates, in blocks of the largest power of two dividing its width; n: the
    # layers whose activations are quantized rotate the quantizer's groups, blocks of n channels
    hadamard_block: int = 0
    dilation: bool = False  # DilateQuant's weight dilation before quantizing (exporter/quant/methods/dilation.py)
    kd_iterations: int = 0  # block-wise distillation of the per-timestep activation scales (dilatequant.py)
    # (layer, weight group, activation group) where a group-size search chose them (granularity.py)
    layer_groups: tuple[tuple[str, int, int], ...] = ()

    def groups_of(self, layer: str) -> tuple[int, int]:
        """The layer's weight and dynamic-activation group sizes: searched, else the recipe's."""
        for name, w, a in self.layer_groups:
            if name == layer:
                return w, a
        return self.weight.group_size, self.activation.group_size if self.activation else PER_CHANNEL

    @property
    def deployable(self) -> bool:
        """Whether a kernel runs this recipe's GEMMs at full speed: for integer weights, a K loop
        that is a pure INT8 x INT8 -> INT32 MMA with one float rescale in the epilogue. That needs
        symmetric integer weights with one scale per output row (per channel or per tensor) or
        two-level INT4 scales, and symmetric INT8 activations with one scale per token (dynamic
        per token, or static without channel groups) or static INT4 activations in groups of 32
        on two-level scales (a float per bucket times an integer 1..8 per group). FP4 weights on power-of-two groups with
        FP4 activations on fine groups of 32 (or FP activations) are a pure E4M3 MMA on
        FP8 tensor cores (sm_89+); their quantizer may rotate each group by a Hadamard
        transform of its 32 channels first (the weights store W H). Codebook (VQ) weights with FP
        activations are deployable too: an FP16 GEMM that decodes the codebook in its prologue.
        Everything else (float scales per group, channel-grouped or other 4-bit activations,
        other Hadamard rotations) is an accuracy reference: its kernel rescales every group's
        partial sum in the K loop, or no kernel rotates its inputs."""
        w, a = self.weight, self.activation
        if self.hadamard and not (self.hadamard_block == FP4_GROUP and a is not None and a.kind == "fp4"):
            return False
        if isinstance(w, VqWeights):
            return a is None
        if isinstance(w, Fp4Weights):
            return w.scales == "pow2-groups" and not self.layer_groups and (
                a is None or (a.kind == "fp4" and a.scales == "e4m3-groups" and a.group_size == 32))
        one_scale = (PER_CHANNEL, PER_TENSOR)
        weights = isinstance(w, IntWeights) and w.symmetric and (
            w.scales == "two-level"
            or (w.group_size in one_scale and all(g in one_scale for _, g, _ in self.layer_groups)))
        if not weights or a is None or a.kind != "int":
            return False
        if a.scales == "two-level":
            return a.group_size == INT4_GROUP and not self.layer_groups
        return (a.bits == 8 and a.symmetric and a.group_size == PER_CHANNEL
                and all(g == PER_CHANNEL for _, _, g in self.layer_groups))

    def __post_init__(self) -> None:
        if self.kd_iterations < 0:
            raise UserError(f"distillation iterations must be 0 or more, not {self.kd_iterations}")
        if self.hadamard_block < 0 or self.hadamard_block & (self.hadamard_block - 1):
            raise UserError(f"Hadamard blocks are a power of two channels (0: the largest dividing the width), "
                            f"not {self.hadamard_block}")
        if self.kd_iterations and (self.activation is None or self.activation.mode != "static"
                                   or self.activation.kind != "int"):
            raise UserError("distillation trains static integer activation scales: it needs static int activations")
        if isinstance(self.weight, VqWeights) and self.activation is not None and self.activation.mode != "dynamic":
            raise UserError("codebook (VQ) weights take dynamic activations only: their calibration keeps no "
                            "activation ranges")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["weight"], d["policy"] = weights_to_dict(self.weight), self.policy.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Recipe":
        """The recipe ``to_dict`` wrote; fields it lacks (older checkpoints) keep their defaults."""
        values = {f.name: _SCALARS[f.type](d[f.name]) for f in fields(cls) if f.name in d and f.type in _SCALARS}
        act = d.get("activation")
        return cls(**values, weight=weights_from_dict(d["weight"]), activation=ActivationSpec(**act) if act else None,
                   policy=LayerPolicy.from_dict(d["policy"]),
                   layer_groups=tuple((str(n), int(w), int(a)) for n, w, a in d.get("layer_groups", ())))

    def with_overrides(self, **overrides: Any) -> "Recipe":
        """weight_* (the weight config's fields) / activation_* / hadamard(_block) / dilation /
        kd_iterations keyword overrides; None leaves a field as it is. Switching activations to
        dynamic also resets the static-only clip search and asymmetric grid unless they are given;
        overrides that two-level or power-of-two-group or fine-group scales cannot take (e.g.
        per-channel groups, static activations) switch them to float scales unless given."""
        weight = {k[len("weight_"):]: v for k, v in overrides.items() if k.startswith("weight_") and v is not None}
        act = {k[len("activation_"):]: v for k, v in overrides.items()
               if k.startswith("activation_") and v is not None}
        if act and self.activation is None:
            raise UserError(f"precision {self.name} quantizes no activations")
        if act.get("mode") == "dynamic":  # static-only choices of the recipe do not carry over
            act = {"clip_search": False, "symmetric": True, **act}
        if self.activation is not None and "scales" not in act:
            merged_act = {**asdict(self.activation), **act}
            if not _fits_activation_scales(merged_act["scales"], merged_act["kind"], merged_act["bits"],
                                           merged_act["symmetric"], merged_act["mode"], merged_act["group_size"]):
                act["scales"] = "float"
        top = {k: v for k, v in overrides.items()
               if k in ("hadamard", "hadamard_block", "dilation", "kd_iterations") and v is not None}
        return replace(self, weight=with_weight_overrides(self.weight, weight),
                       activation=replace(self.activation, **act) if self.activation else None, **top)


RECIPES: dict[str, Recipe] = {r.name: r for r in [
    Recipe("w8a8", "INT8 per-channel weights, INT8 static activations with per-timestep scales",
           IntWeights(bits=8, group_size=PER_CHANNEL, method="rtn"),
           ActivationSpec(bits=8, mode="static", per_timestep=True)),
    Recipe("w4a8", "INT4 g32 GPTQ weights with two-level scales (a float per row x an integer 1..16 per group, "
           "QServe) and clip search, INT8 dynamic per-token activations: a pure INT8 MMA",
           IntWeights(bits=4, group_size=32, method="gptq", clip_search=True, scales="two-level"),
           ActivationSpec(bits=8, mode="dynamic", group_size=PER_CHANNEL)),
    Recipe("w4a8-g32", "accuracy reference for w4a8: INT4 g32 GPTQ weights with FP32 group scales and clip search, "
           "INT8 dynamic per-token activations (Q-DiT)",
           IntWeights(bits=4, group_size=32, method="gptq", clip_search=True),
           ActivationSpec(bits=8, mode="dynamic", group_size=PER_CHANNEL)),
    Recipe("w4a8-naive", "baseline: INT4 per-channel round-to-nearest weights, INT8 static per-tensor activations",
           IntWeights(bits=4, group_size=PER_CHANNEL, method="rtn"),
           ActivationSpec(bits=8, mode="static", per_timestep=False)),
    Recipe("w4a8-fp4", "FP4 g32 GPTQ weights, format per layer (E2M1/E3M0/E1M2, HQ-DiT), INT8 dynamic per-token "
           "activations", Fp4Weights(group_size=32, method="gptq", clip_search=True),
           ActivationSpec(bits=8, mode="dynamic", group_size=PER_CHANNEL)),
    Recipe("fp4", "W4A4 FP4 as exact E4M3 operands: FP4 g32 GPTQ weights with clip search, format per layer, "
           "scaled by a float per output channel times 2^t per 32 channels; FP4 E2M1 dynamic activations, a float "
           "per token times m 2^t (m 1, 1.25, 1.5) per 32 channels, each group Hadamard-rotated first (the "
           "weights store W H): a pure FP8 MMA",
           Fp4Weights(group_size=32, method="gptq", clip_search=True, scales="pow2-groups"),
           ActivationSpec(bits=4, mode="dynamic", group_size=32, kind="fp4", scales="e4m3-groups"),
           hadamard=True, hadamard_block=FP4_GROUP),
    Recipe("fp4-g32", "accuracy reference for fp4: FP4 g32 GPTQ weights with FP32 group scales, format per layer, "
           "FP4 E2M1 dynamic activations with an FP32 scale per 32 channels, Hadamard-rotated inputs (HQ-DiT)",
           Fp4Weights(group_size=32, method="gptq", clip_search=True),
           ActivationSpec(bits=4, mode="dynamic", group_size=32, kind="fp4"), hadamard=True),
    Recipe("w4a4", "W4A4 (DilateQuant) as INT8 operands: INT4 g32 GPTQ weights with two-level scales and clip "
           "search after weight dilation; asymmetric INT4 static activations per timestep bucket and 32 channels with "
           "clipped two-level scales (a float per bucket x an integer 1..8 per group), distilled block by block "
           "against the FP model: a pure INT8 MMA",
           IntWeights(bits=4, group_size=32, method="gptq", clip_search=True, scales="two-level"),
           ActivationSpec(bits=4, symmetric=False, mode="static", per_timestep=True, group_size=32,
                          clip_search=True, scales="two-level"), dilation=True, kd_iterations=100),
    Recipe("w4a4-g32", "accuracy reference for w4a4 (DilateQuant): INT4 g32 GPTQ weights with FP32 group scales and "
           "clip search after weight dilation, asymmetric INT4 static activations with clipped FP32 scales per "
           "timestep bucket and 32 channels, distilled block by block against the FP model",
           IntWeights(bits=4, group_size=32, method="gptq", clip_search=True),
           ActivationSpec(bits=4, symmetric=False, mode="static", per_timestep=True, group_size=32,
                          clip_search=True), dilation=True, kd_iterations=100),
    Recipe("vq2", "VQ4DiT 2-bit: per-layer codebooks of 256 codewords x 4 weights, calibrated block by block "
           "against the FP model without data; activations FP",
           VqWeights(codewords=256, dim=4), None),
    Recipe("vq3", "VQ4DiT 3-bit: per-layer codebooks of 64 codewords x 2 weights, calibrated block by block "
           "against the FP model without data; activations FP",
           VqWeights(codewords=64, dim=2), None),
    Recipe("vq2-a8", "vq2 weights, INT8 dynamic per-token activations",
           VqWeights(codewords=256, dim=4),
           ActivationSpec(bits=8, mode="dynamic", group_size=PER_CHANNEL)),
    Recipe("vq3-a8", "vq3 weights, INT8 dynamic per-token activations",
           VqWeights(codewords=64, dim=2),
           ActivationSpec(bits=8, mode="dynamic", group_size=PER_CHANNEL)),
]}


# The deployable precision each accuracy reference stands for.
DEPLOY_INSTEAD = {"w4a8-g32": "w4a8", "w4a8-fp4": "w4a8", "fp4-g32": "fp4", "w4a4-g32": "w4a4", "vq2-a8": "vq2",
                  "vq3-a8": "vq3"}


def no_kernel_reason(recipe: Recipe) -> str | None:
    """None when the recipe is deployable; else one line: it is an accuracy reference, and which
    precision to deploy."""
    if recipe.deployable:
        return None
    named = RECIPES.get(recipe.name)
    if named is not None and named.deployable:
        return (f"precision {recipe.name} with these overrides is an accuracy reference with no plugin kernel: deploy "
                f"{recipe.name} without them")
    instead = DEPLOY_INSTEAD.get(recipe.name) or ", ".join(n for n, r in RECIPES.items() if r.deployable)
    return f"precision {recipe.name} is an accuracy reference with no plugin kernel: deploy {instead} instead"


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise UserError(f"unknown precision '{name}'; valid: {', '.join(RECIPES)}")
    return RECIPES[name]


__all__ = ["ActivationSpec", "DEPLOY_INSTEAD", "PER_CHANNEL", "PER_TENSOR", "RECIPES", "Recipe", "get_recipe",
           "no_kernel_reason"]
