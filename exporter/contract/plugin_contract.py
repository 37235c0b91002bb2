"""The plugin contract: one definition of every custom TensorRT op the graph rewrite emits.

Each contract names the op (the ONNX node's op_type, which is also the TensorRT plugin name), its
namespace and version (the node attributes ``plugin_namespace`` and ``plugin_version`` that
TensorRT's ONNX parser reads to find the plugin creator), its fields (the other node attributes,
which reach the plugin creator as PluginFields: ints as kINT32, strings as kCHAR), the rules that
tie fields together, and its inputs and outputs with their element types and packed layouts.
``header.py`` generates the C++ header the plugins compile against from these objects; the rewrite
(``rewrite.py``, ``patterns.py``) and the reference functions (``reference.py``) read them too.

Every plugin computes y = act(x) W^T + b for x [..., K] and W [N, K] on the Triton kernels
(exporter/kernels/): act quantizes each token to 8-bit operands with one float32 scale
(activation_quant.quantize_rows), the K loop multiplies 8-bit operands (or FP16 ones where act is
none), and one rescale by the token's and the output channel's scales plus the bias ends it. x and
y are FLOAT16 [..., K] / [..., N]. Packed data travels as INT8 bytes (TensorRT has no sub-byte
tensors outside its own quantize layers), read by the kernels as unsigned bytes; the layouts are
the kernels' own (int8_gemm.py, fp8_gemm.py, vq_gemm.py), built by exporter/kernels/linear.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from exporter.numerics.fp4_groups import EXPONENTS
from exporter.numerics.kernel_layout import ALIGNMENT, FP4_GROUP, INT4_GROUP, K_STEP, SPAN

NAMESPACE = "dit_export"
DOMAIN = "dit_export"  # ONNX domain of the plugin nodes and of their reference functions
VERSION = "2"

# The values of the string fields, in the order of their C++ enums; a contract may allow fewer.
ENUMS = {"act_mode": ("none", "static", "dynamic"),
         "act_format": ("none", "int8", "fp4e2m1", "uint4", "fp4e2m1_hadamard"),
         "weight_format": tuple(EXPONENTS)}
NONZERO = "nonzero"


@dataclass(frozen=True)
class Field:
    """A node attribute / plugin field: an int (kINT32) or one of ``choices`` (kCHAR). An int is
    at least ``minimum``, at most ``maximum`` (0: no bound), one of ``values`` if given, and a
    multiple of ``multiple_of``."""

    name: str
    doc: str
    choices: tuple[str, ...] = ()
    minimum: int = 0
    maximum: int = 0
    values: tuple[int, ...] = ()
    multiple_of: int = 1

    @property
    def is_string(self) -> bool:
        return bool(self.choices)

    def rule(self) -> str:
        """What a valid value is, in words (the error message of both languages)."""
        if self.is_string:
            return f"one of {', '.join(self.choices)}"
        if self.values:
            return f"one of {', '.join(map(str, self.values))}"
        bound = f"an integer >= {self.minimum}" + (f" and <= {self.maximum}" if self.maximum else "")
        return bound + (f", a multiple of {self.multiple_of}" if self.multiple_of > 1 else "")

    def check(self, value) -> str | None:
        if self.is_string:
            ok = value in self.choices
        else:
            ok = (isinstance(value, int) and not isinstance(value, bool) and value >= self.minimum
                  and (not self.maximum or value <= self.maximum) and (not self.values or value in self.values)
                  and value % self.multiple_of == 0)
        return None if ok else f"{self.name} must be {self.rule()}, not {value!r}"


@dataclass(frozen=True)
class Rule:
    """When field ``when`` has one of ``when_values``, field ``then`` must have one of
    ``then_values`` (when given) and be a multiple of ``multiple_of`` (when given)."""

    when: str
    when_values: tuple
    then: str
    why: str
    then_values: tuple = ()
    multiple_of: int = 0

    def broken(self, fields: dict) -> bool:
        if fields[self.when] not in self.when_values:
            return False
        value = fields[self.then]
        return bool((self.then_values and value not in self.then_values)
                    or (self.multiple_of and value % self.multiple_of))


@dataclass(frozen=True)
class Port:
    """A plugin input or output. ``when`` is the condition under which it is present: (field,
    values), present when the field's value is one of ``values``, or (field, NONZERO); None:
    always present."""

    name: str
    dtype: str  # an ONNX element type name
    shape: str
    doc: str
    when: tuple[str, tuple | str] | None = None

    def present(self, fields: dict) -> bool:
        if self.when is None:
            return True
        name, values = self.when
        return fields[name] != 0 if values == NONZERO else fields[name] in values


@dataclass(frozen=True)
class PluginContract:
    name: str
    doc: str
    fields: tuple[Field, ...]
    inputs: tuple[Port, ...]
    outputs: tuple[Port, ...]
    rules: tuple[Rule, ...] = ()
    version: str = VERSION
    namespace: str = NAMESPACE

    def field(self, name: str) -> Field:
        return next(f for f in self.fields if f.name == name)

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    def present_inputs(self, fields: dict) -> list[Port]:
        return [p for p in self.inputs if p.present(fields)]

    def check(self, fields: dict) -> None:
        """ValueError naming the first field that is missing, unknown or out of range, or the first
        rule the fields break."""
        names = {f.name for f in self.fields}
        if set(fields) != names:
            missing, unknown = sorted(names - set(fields)), sorted(set(fields) - names)
            raise ValueError(f"{self.name}: fields missing {missing}, unknown {unknown}")
        for f in self.fields:
            problem = f.check(fields[f.name])
            if problem:
                raise ValueError(f"{self.name}: {problem}")
        for rule in self.rules:
            if rule.broken(fields):
                raise ValueError(f"{self.name}: {rule.why}")


_SHAPE_FIELDS = (
    Field("in_features", "K, input channels (the kernels take multiples of 16)", minimum=ALIGNMENT,
          multiple_of=ALIGNMENT),
    Field("out_features", "N, output channels (the kernels take multiples of 16)", minimum=ALIGNMENT,
          multiple_of=ALIGNMENT),
)
_HAS_BIAS = Field("has_bias", "1 when the bias input is present", values=(0, 1))
_WEIGHT_BITS = Field("weight_bits", f"4: the packed layout (K a multiple of the kernels' K step, {K_STEP}); 8: one "
                     "byte per weight", values=(4, 8))
_FOUR_BIT_K = Rule("weight_bits", (4,), "in_features", f"4-bit weights need in_features a multiple of the kernels' "
                   f"K step, {K_STEP}", multiple_of=K_STEP)
_X = Port("x", "FLOAT16", "[..., K]", "activations")
_Y = (Port("y", "FLOAT16", "[..., N]", "act(x) W^T + b"),)
_CHUNKS = (f"K in chunks of {2 * SPAN}, byte j of chunk c holding channel {2 * SPAN} c + j in its low nibble and "
           f"{2 * SPAN} c + {SPAN} + j in its high one")
_WEIGHT_SCALE = Port("weight_scale", "FLOAT", "[N]", "the row scale s[n] of each output channel")
_BIAS = Port("bias", "FLOAT", "[N]", "bias", ("has_bias", NONZERO))

INT_GEMM = PluginContract(
    "DitIntGemm",
    "INT8 or INT4 weights with a float scale per output channel (INT4: times an integer factor 1..16 per group, "
    "two-level scales), INT8 activations with one scale per token (static per timestep bucket, or dynamic), static "
    f"UINT4 activations on two-level groups of {INT4_GROUP} channels (a scale per timestep bucket times an integer "
    "factor 1..8 per group, a zero point per group: INT8 operands (q - z) f), or FP16 activations: int8_gemm.",
    _SHAPE_FIELDS + (
        _WEIGHT_BITS,
        Field("act_mode", "none: FP16 x as it is; static: the scale of sample b's tokens is "
              "act_scale_table[timestep_bucket[b]]; dynamic: max|x| / 127 per token", ENUMS["act_mode"]),
        Field("act_format", "int8 (symmetric, round to nearest even), uint4 (static, on two-level groups: q = "
              "clamp(round(x / (s f) + z), 0, 15), the operand (q - z) f) or none", ("none", "int8", "uint4")),
        _HAS_BIAS),
    (_X,
     Port("weight", "INT8", "[N, K] or [N, K / 2]", "weight_bits 8: the INT8 operands q f [N, K]; 4: the INT4 codes q "
          f"(two's complement) [N, K / 2], {_CHUNKS}"),
     Port("weight_factor", "INT8", f"[N, K / {SPAN}]", f"weight_bits 4: the factor f (1..16) of each {SPAN} channels; "
          f"W[n, k] = s[n] f[n, k / {SPAN}] q[n, k]", ("weight_bits", (4,))),
     _WEIGHT_SCALE,
     Port("act_scale_table", "FLOAT", "[buckets]", "activation scale of each timestep bucket",
          ("act_mode", ("static",))),
     Port("act_groups", "INT8", f"[buckets, K / {INT4_GROUP}, 2]", f"act_format uint4: the factor f (1..8) and the "
          f"zero point z (0..15) of each group of {INT4_GROUP} channels in each timestep bucket",
          ("act_format", ("uint4",))),
     Port("timestep_bucket", "INT64", "[B]", "bucket of each sample's timestep (its row in act_scale_table)",
          ("act_mode", ("static",))),
     _BIAS),
    _Y,
    (Rule("act_mode", ("none",), "act_format", "act_mode none takes act_format none", ("none",)),
     Rule("act_mode", ("dynamic",), "act_format", "dynamic activations are int8", ("int8",)),
     Rule("act_mode", ("static",), "act_format", "static activations are int8 or uint4", ("int8", "uint4")),
     Rule("act_format", ("uint4",), "in_features", f"uint4 activations need in_features a multiple of their group, "
          f"{INT4_GROUP}", multiple_of=INT4_GROUP),
     _FOUR_BIT_K),
)

FP4_GEMM = PluginContract(
    "DitFp4Gemm",
    "FP4 weights on power-of-two groups: W[n, k] = s[n] 2^t[n, g] v[n, k] with v an FP4 value and g = k / "
    f"{SPAN}, exact E4M3 operands v 2^t; FP4 E2M1 activations on fine groups of {FP4_GROUP} channels, a float per "
    "token times m 2^t, m 1, 1.25 or 1.5, each group optionally rotated by a Hadamard transform of its channels "
    "first (the weights then hold W H) "
    "(dynamic, exact E4M3 operands with one float scale per token: fp8_gemm, FP8 tensor cores, sm_89 or newer) or "
    "FP16 activations (the E4M3 operands converted to FP16 on int8_gemm's FP16 path, sm_89 or newer).",
    _SHAPE_FIELDS + (
        _WEIGHT_BITS,
        Field("weight_format", "the FP4 format of the weights (E2M1, E3M0, E1M2: HQ-DiT's choice per layer), the "
              "table its 4-bit codes are decoded by", ENUMS["weight_format"]),
        Field("act_mode", "none: FP16 x as it is; dynamic: per token, from the token itself", ("none", "dynamic")),
        Field("act_format", f"fp4e2m1 (fine groups of {FP4_GROUP} channels), fp4e2m1_hadamard (the same of x with "
              f"each group times the {FP4_GROUP}-point Hadamard matrix H, Sylvester's order, orthonormal: x H; the "
              "weight holds W H) or none", ("none", "fp4e2m1", "fp4e2m1_hadamard")),
        _HAS_BIAS),
    (_X,
     Port("weight", "INT8", "[N, K] or [N, K / 2]", "weight_bits 8: the E4M3 operands v 2^t [N, K]; 4: the FP4 codes "
          f"(sign << 3 | magnitude index) [N, K / 2], {_CHUNKS}"),
     Port("weight_offset", "INT8", f"[N, K / {SPAN}]", f"weight_bits 4: t - t_min of each {SPAN} channels (t_min of "
          "the weight format: " + ", ".join(f"{k} {t[0]}" for k, t in EXPONENTS.items()) + ")", ("weight_bits", (4,))),
     _WEIGHT_SCALE,
     _BIAS),
    _Y,
    (Rule("act_mode", ("none",), "act_format", "act_mode none takes act_format none", ("none",)),
     Rule("act_mode", ("dynamic",), "act_format", "quantized activations are fp4e2m1 or fp4e2m1_hadamard",
          ("fp4e2m1", "fp4e2m1_hadamard")),
     Rule("act_format", ("fp4e2m1", "fp4e2m1_hadamard"), "in_features", f"FP4 activations need in_features a multiple of their group, "
          f"{FP4_GROUP}", multiple_of=FP4_GROUP),
     _FOUR_BIT_K),
)

VQ_GEMM = PluginContract(
    "DitVqGemm",
    "Codebook weights (VQ4DiT): row n of W is K / D sub-vectors, sub-vector s the codeword indices[n, s] of an FP16 "
    "codebook; FP16 activations: vq_gemm.",
    _SHAPE_FIELDS + (
        Field("codewords", "codebook size (at most 256: one byte per index)", minimum=2, maximum=256),
        Field("codeword_dim", "D, weights per codeword", values=(2, 4)),
        _HAS_BIAS),
    (_X,
     Port("indices", "INT8", "[N, K / D]", "codeword of each sub-vector, one unsigned byte each"),
     Port("codebook", "FLOAT16", "[codewords, D]", "the codewords"),
     _BIAS),
    _Y,
)

CONTRACTS: dict[str, PluginContract] = {c.name: c for c in (INT_GEMM, FP4_GEMM, VQ_GEMM)}
FP8_PLUGINS = (FP4_GEMM.name,)  # their kernels need FP8 tensor cores (or E4M3 conversions): sm_89 or newer
FP8_MIN_ARCH = 89
