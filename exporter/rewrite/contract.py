"""The plugin contract: one definition of every custom TensorRT op the graph rewrite emits.

Each contract names the op (the ONNX node's op_type, which is also the TensorRT plugin name), its
namespace and version (the node attributes ``plugin_namespace`` and ``plugin_version`` that
TensorRT's ONNX parser reads to find the plugin creator), its fields (the other node attributes,
which reach the plugin creator as PluginFields: ints as kINT32, strings as kCHAR) and its inputs
and outputs with their element types and packed layouts. ``header.py`` generates the C++ header
the plugins compile against from these objects; the rewrite (``rewrite.py``) and the reference
functions (``reference.py``) read them too.

Every GEMM plugin computes y = act(x) W^T + b for x [..., K] and W [N, K], where act is the
activation quantizer the fields describe (quantize then dequantize; none leaves x as it is),
applied after the optional Hadamard rotation x H, H block-diagonal with blocks of
``rotation_block`` channels. Packed data travels as INT8 bytes: TensorRT has no 4-bit or
sub-byte tensors outside its own quantize layers.
"""

from __future__ import annotations

from dataclasses import dataclass

NAMESPACE = "dit_export"
DOMAIN = "dit_export"  # ONNX domain of the plugin nodes and of their reference functions
VERSION = "1"

ACT_MODES = ("none", "static", "dynamic")
ACT_FORMATS = ("none", "int8", "fp8e4m3", "fp4e2m1", "int4", "uint4")
FP4_WEIGHT_FORMATS = ("e2m1", "e3m0", "e1m2")
NONZERO = "nonzero"


@dataclass(frozen=True)
class Field:
    """A node attribute / plugin field: an int (kINT32) or one of ``choices`` (kCHAR)."""

    name: str
    doc: str
    choices: tuple[str, ...] = ()
    minimum: int = 0

    @property
    def is_string(self) -> bool:
        return bool(self.choices)

    def check(self, value) -> str | None:
        if self.is_string:
            if value not in self.choices:
                return f"{self.name} must be one of {', '.join(self.choices)}, not {value!r}"
        elif not isinstance(value, int) or isinstance(value, bool) or value < self.minimum:
            return f"{self.name} must be an integer >= {self.minimum}, not {value!r}"
        return None


@dataclass(frozen=True)
class Port:
    """A plugin input or output. ``when`` is the condition under which it is present: (field,
    values), present when the field's value is one of ``values``, or (field, NONZERO); None:
    always present."""

    name: str
    dtype: str  # an ONNX element type name, or "T" (float32 / float16, the same for x and y)
    shape: str
    doc: str
    when: tuple[str, tuple[str, ...] | str] | None = None

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
    version: str = VERSION
    namespace: str = NAMESPACE

    def field(self, name: str) -> Field:
        return next(f for f in self.fields if f.name == name)

    def present_inputs(self, fields: dict) -> list[Port]:
        return [p for p in self.inputs if p.present(fields)]

    def check(self, fields: dict) -> None:
        """ValueError naming the first field that is missing, unknown or out of range."""
        names = {f.name for f in self.fields}
        if set(fields) != names:
            missing, unknown = sorted(names - set(fields)), sorted(set(fields) - names)
            raise ValueError(f"{self.name}: fields missing {missing}, unknown {unknown}")
        for f in self.fields:
            problem = f.check(fields[f.name])
            if problem:
                raise ValueError(f"{self.name}: {problem}")
        if (fields["act_mode"] == "none") != (fields["act_format"] == "none"):
            raise ValueError(f"{self.name}: act_mode and act_format must both be 'none' or neither")
        if fields["act_format"] == "uint4" and fields["act_mode"] != "static":
            raise ValueError(f"{self.name}: uint4 (asymmetric) activations need static zero points")
        group = fields["act_group_size"]
        if group and fields["in_features"] % group:
            raise ValueError(f"{self.name}: act_group_size {group} does not divide in_features "
                             f"{fields['in_features']}")


_SHAPE_FIELDS = (
    Field("in_features", "K, input channels", minimum=1),
    Field("out_features", "N, output channels", minimum=1),
)
_ACTIVATION_FIELDS = (
    Field("act_mode", "none: x as it is; static: the scales of sample b are row timestep_bucket[b] of "
          "act_scale_table; dynamic: scale = max|x| / qmax per token, or per act_group_size channels of each "
          "token", ACT_MODES),
    Field("act_format", "number format of the quantized activations (int8 / int4 symmetric, FP8 E4M3, FP4 E2M1; "
          "uint4: asymmetric static, code = clamp(round(x / s) + z, 0, 15), value (code - z) s)", ACT_FORMATS),
    Field("act_group_size", "channels per activation scale within a token (0: the whole token)"),
    Field("rotation_block", "Hadamard block of the input rotation x H before quantization (0: none)"),
    Field("has_bias", "1 when the bias input is present"),
)
_GROUP_SIZE = Field("group_size", "input channels per weight scale (K: one scale per output channel)", minimum=1)
_X = Port("x", "T", "[..., K]", "activations, float32 or float16")
_ACTIVATION_INPUTS = (
    Port("hadamard", "FLOAT", "[rotation_block, rotation_block]", "the orthonormal Hadamard block",
         ("rotation_block", NONZERO)),
    Port("act_scale_table", "FLOAT", "[buckets] or [buckets, K / act_group_size]",
         "activation scales of each timestep bucket (per channel group when act_group_size is set)",
         ("act_mode", ("static",))),
    Port("act_zero_table", "INT8", "the shape of act_scale_table", "zero points (0 to 15) of each timestep "
         "bucket and channel group", ("act_format", ("uint4",))),
    Port("timestep_bucket", "INT64", "[B]", "bucket of each sample's timestep (its row in act_scale_table)",
         ("act_mode", ("static",))),
    Port("bias", "FLOAT", "[N]", "bias", ("has_bias", NONZERO)),
)
_Y = (Port("y", "T", "[..., N]", "act(x) W^T + b, in x's type"),)

INT_GEMM = PluginContract(
    "DitIntGemm",
    "Integer weights (4 or 8 bits, symmetric) with one scale per group of input channels and output channel.",
    _SHAPE_FIELDS + (Field("weight_bits", "bits per weight code: 4 or 8", minimum=4), _GROUP_SIZE) + _ACTIVATION_FIELDS,
    (_X,
     Port("weight", "INT8", "[K, N * weight_bits / 8]", "codes of W^T [K, N], row-major; 4-bit codes two per "
          "byte, element 2i in the low nibble, two's complement"),
     Port("weight_scale", "FLOAT", "[ceil(K / group_size), N]", "W^T[k, n] = code[k, n] * "
          "weight_scale[k / group_size, n]"),
     ) + _ACTIVATION_INPUTS,
    _Y,
)

FP4_GEMM = PluginContract(
    "DitFp4Gemm",
    "FP4 weights (E2M1, E3M0 or E1M2) with one scale per group of input channels and output channel.",
    _SHAPE_FIELDS + (Field("weight_format", "FP4 format of the weight codes", FP4_WEIGHT_FORMATS), _GROUP_SIZE)
    + _ACTIVATION_FIELDS,
    (_X,
     Port("weight", "INT8", "[K, N / 2]", "codes of W^T [K, N], row-major, two per byte, element 2i in the "
          "low nibble; a code is sign << 3 | index of the magnitude in the format's ascending list"),
     Port("weight_scale", "FLOAT", "[ceil(K / group_size), N]", "W^T[k, n] = value(code[k, n]) * "
          "weight_scale[k / group_size, n]"),
     ) + _ACTIVATION_INPUTS,
    _Y,
)

VQ_GEMM = PluginContract(
    "DitVqGemm",
    "Codebook weights (VQ4DiT): W [N, K] cut row by row into S = ceil(K / codeword_dim) sub-vectors, each "
    "the codeword its index names; the last sub-vector of a row is cut to the K - (S - 1) d it covers.",
    _SHAPE_FIELDS + (
        Field("codewords", "codebook size, 2^index_bits", minimum=2),
        Field("codeword_dim", "d, weights per codeword", minimum=1),
        Field("index_bits", "bits per index", minimum=1),
    ) + _ACTIVATION_FIELDS,
    (_X,
     Port("codebook", "FLOAT16", "[codewords, codeword_dim]", "the codewords"),
     Port("assignments", "INT8", "[ceil(N S / 8) * index_bits]", "index of sub-vector (n, s) at position "
          "i = n S + s of a little-endian bit stream: bits [i b, (i + 1) b), b = index_bits; zero padding"),
     ) + _ACTIVATION_INPUTS,
    _Y,
)

CONTRACTS: dict[str, PluginContract] = {c.name: c for c in (INT_GEMM, FP4_GEMM, VQ_GEMM)}
