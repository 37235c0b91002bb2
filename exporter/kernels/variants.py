"""Every kernel variant built ahead of time: its kernel, argument types, compile-time constants,
launch shape and GPU targets. The plugin build (aot.py), the static report
(tools/kernel_report.py) and the tests all take the variants from here.

Pointers and the N and K arguments are compiled as multiples of 16 (16-byte aligned rows, as
DiT widths are), which lets loads and copies use 16-byte vectors; a launcher checks this before
it picks a variant.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from exporter.contract.kernel_api import QUANT_MODES, quantizer_variant
from exporter.kernels.activation_quant import INTEGER_CODES, quantize_rows_kernel
from exporter.kernels.activation_quant import constants as quantize_constants
from exporter.kernels.fp8_gemm import fp4_ptx, fp8_gemm_kernel
from exporter.kernels.int8_gemm import int8_gemm_kernel
from exporter.kernels.linear import PackedLayouts
from exporter.kernels.tiles import LARGE_TILES_ABOVE, Tiles, gemm_tiles
from exporter.kernels.vq_gemm import VQ_BLOCK_K, vq_gemm_kernel
from exporter.numerics.fp4_groups import EXPONENTS, e4m3_byte_table
from exporter.numerics.kernel_layout import ALIGNMENT, FP4_GROUP, INT4_GROUP, K_STEP

ALL_ARCHS = (80, 89, 90)
FP8_ARCHS = (89, 90)  # FP8 tensor cores: Ada and Hopper
ALIGNED = ("N", "K")  # integer arguments compiled as multiples of ALIGNMENT
FP4_KINDS = tuple(EXPONENTS)  # an FP8 variant per FP4 weight format: the decode table is compiled in

GEMM_POINTERS = {"a_ptr": "*i8", "a_scale_ptr": "*fp32", "w_ptr": "*u8", "factor_ptr": "*u8", "w_scale_ptr": "*fp32",
                 "bias_ptr": "*fp32", "y_ptr": "*fp16"}
GEMM_SIZES = {"M": "i32", "N": "i32", "K": "i32"}


@dataclass(frozen=True)
class KernelVariant:
    name: str
    family: str  # "int8" | "fp8" | "fp16" | "quantize"
    kernel: Any
    signature: dict[str, str]  # runtime arguments in order, Triton type strings
    constants: dict[str, Any]
    num_warps: int = 4
    num_stages: int = 3
    archs: tuple[int, ...] = ALL_ARCHS
    aligned: tuple[str, ...] = field(default=ALIGNED)

    def source(self) -> ASTSource:
        signature = dict(self.signature) | {k: "constexpr" for k in self.constants}
        attrs = {(i,): [["tt.divisibility", ALIGNMENT]] for i, (name, kind) in enumerate(self.signature.items())
                 if kind.startswith("*") or name in self.aligned}
        return ASTSource(fn=self.kernel, signature=signature, constexprs=self.constants, attrs=attrs)

    def compile(self, arch: int):
        """Triton's compiled kernel for sm_<arch> (sm_90a for 90): .asm["cubin"], ["ptx"], .metadata."""
        if arch not in self.archs:
            raise ValueError(f"{self.name} is not built for sm_{arch}; its targets: {self.archs}")
        os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
        return triton.compile(self.source(), target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": self.num_warps, "num_stages": self.num_stages})


def _gemm(name: str, family: str, kernel, pointers: dict[str, str], constants: dict[str, Any], tiles: Tiles,
          archs: tuple[int, ...]) -> KernelVariant:
    return KernelVariant(name, family, kernel, pointers | GEMM_SIZES,
                         constants | {"HAS_BIAS": True, "BM": tiles.bm, "BN": tiles.bn, "BK": tiles.bk,
                                      "GROUP_M": tiles.group_m},
                         num_warps=tiles.num_warps, num_stages=tiles.num_stages, archs=archs)


# The variants' tiles: "large" for more rows than LARGE_TILES_ABOVE, "small" for fewer; K step K_STEP
# (DiT widths are multiples of 128; 4-bit weights need the step to divide K).
TILES = {"large": gemm_tiles(LARGE_TILES_ABOVE + 1, K_STEP), "small": gemm_tiles(1, K_STEP)}
AOT_LAYOUTS = PackedLayouts(K_STEP, FP4_KINDS)  # the 4-bit layouts the plugins' kernels take


def _variants() -> list[KernelVariant]:
    out = []
    fp8_pointers = {"a_ptr": "*fp8e4nv", "a_scale_ptr": "*fp32", "w_ptr": "*u8", "offset_ptr": "*u8",
                    "w_scale_ptr": "*fp32", "bias_ptr": "*fp32", "y_ptr": "*fp16"}
    vq_pointers = {"a_ptr": "*fp16", "a_scale_ptr": "*fp32", "index_ptr": "*u8", "codebook_ptr": "*fp16",
                   "bias_ptr": "*fp32", "y_ptr": "*fp16"}
    for size, tiles in TILES.items():
        for bits in (8, 4):
            weights = GEMM_POINTERS | ({"w_ptr": "*i8"} if bits == 8 else {})
            out.append(_gemm(f"int8_gemm.w{bits}.{size}", "int8", int8_gemm_kernel, weights,
                             {"W4": bits == 4, "A_FP16": False}, tiles, ALL_ARCHS))
            if size == "small":  # FP activations (adaLN's modulation): M is the batch
                out.append(_gemm(f"int8_gemm.w{bits}.a16.{size}", "fp16", int8_gemm_kernel,
                                 weights | {"a_ptr": "*fp16"}, {"W4": bits == 4, "A_FP16": True}, tiles, ALL_ARCHS))
            for kind in FP4_KINDS if bits == 4 else FP4_KINDS[:1]:  # E4M3 weights: the table is unused
                name = f"fp8_gemm.fp4.{kind}.{size}" if bits == 4 else f"fp8_gemm.w8.{size}"
                out.append(_gemm(name, "fp8", fp8_gemm_kernel, fp8_pointers | ({"w_ptr": "*fp8e4nv"} if bits == 8 else {}),
                                 {"W4": bits == 4, "TABLE": e4m3_byte_table(kind), "FP4_PTX": fp4_ptx(kind)},
                                 tiles, FP8_ARCHS))
            if size == "small" and bits == 8:  # E4M3 weights (FP4's operands) with FP activations: FP16 MMA, sm_89+
                out.append(_gemm("fp8_gemm.w8.a16.small", "fp16", int8_gemm_kernel,
                                 GEMM_POINTERS | {"a_ptr": "*fp16", "w_ptr": "*fp8e4nv"}, {"W4": False, "A_FP16": True},
                                 tiles, FP8_ARCHS))
        for d in (4, 2):
            vq_tiles = gemm_tiles(LARGE_TILES_ABOVE + 1 if size == "large" else 1, VQ_BLOCK_K)
            out.append(_gemm(f"vq_gemm.d{d}.{size}", "fp16", vq_gemm_kernel, vq_pointers,
                             {"D": d, "INT8_A": False}, vq_tiles, ALL_ARCHS))
    for fmt, modes in QUANT_MODES.items():
        integer = fmt in INTEGER_CODES
        for mode in modes:
            static = mode == "static"
            out.append(KernelVariant(
                quantizer_variant(fmt, mode), "quantize", quantize_rows_kernel,
                {"x_ptr": "*fp16", "codes_ptr": "*i8" if integer else "*fp8e4nv", "scale_ptr": "*fp32",
                 "table_ptr": "*fp32", "bucket_ptr": "*i64", "groups_ptr": "*u8", "K": "i32",
                 "rows_per_sample": "i32", "table_row": "i32"},
                quantize_constants(fmt, static, INT4_GROUP if fmt == "int4" else FP4_GROUP),
                archs=ALL_ARCHS if integer else FP8_ARCHS, aligned=("K",)))
    return out


VARIANTS: list[KernelVariant] = _variants()
