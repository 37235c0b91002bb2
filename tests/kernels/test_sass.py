"""exporter/kernels/sass.py against the real machine code of small Triton GEMMs, compiled ahead of
time for sm_90 and sm_80/89 (no GPU), and tools/kernel_report.py's rows and exit code on them."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import pytest

from exporter.kernels.sass import Instruction, access_bits, category, find_loops, pure_8bit_problems, summarize

triton = pytest.importorskip("triton", reason="triton compiles the kernels whose machine code is parsed")
tl = pytest.importorskip("triton.language")

from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@triton.jit
def dot_loop(a_ptr, b_ptr, c_ptr, M, N, K, stride_a, stride_b, stride_c,
             BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, ACC: tl.constexpr, IMPRECISE_ACC: tl.constexpr):
    """C = A @ B over a K loop; A [M, K] and B [K, N] row-major, ACC the accumulator dtype."""
    rm = tl.program_id(0) * BM + tl.arange(0, BM)
    rn = tl.program_id(1) * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    a = a_ptr + rm[:, None] * stride_a + rk[None, :]
    b = b_ptr + rk[:, None] * stride_b + rn[None, :]
    acc = tl.zeros((BM, BN), dtype=ACC)
    for _ in range(0, K, BK):
        acc += tl.dot(tl.load(a), tl.load(b), out_dtype=ACC, max_num_imprecise_acc=IMPRECISE_ACC)
        a += BK
        b += BK * stride_b
    tl.store(c_ptr + rm[:, None] * stride_c + rn[None, :], acc)


@triton.jit
def rescaled_int8_loop(a_ptr, b_ptr, scale_ptr, c_ptr, M, N, K, stride_a, stride_b, stride_c,
                       BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """Like dot_loop on int8, but each K block's int32 product is converted, scaled by
    scale [K / BK, N] and accumulated in float32: the loop a pure 8-bit kernel must not have."""
    rm = tl.program_id(0) * BM + tl.arange(0, BM)
    rn = tl.program_id(1) * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    a = a_ptr + rm[:, None] * stride_a + rk[None, :]
    b = b_ptr + rk[:, None] * stride_b + rn[None, :]
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k in range(0, K, BK):
        block = tl.dot(tl.load(a), tl.load(b), out_dtype=tl.int32)
        acc += block.to(tl.float32) * tl.load(scale_ptr + k // BK * N + rn)[None, :]
        a += BK
        b += BK * stride_b
    tl.store(c_ptr + rm[:, None] * stride_c + rn[None, :], acc)


@triton.jit
def persistent_tma_int8(a_ptr, b_ptr, c_ptr, M, N, K, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                        PROGRAMS: tl.constexpr):
    """A tile loop around a K loop fed by TMA: A [M, K], B [N, K] (K-major), C int32 [M, N]."""
    a_desc = tl.make_tensor_descriptor(a_ptr, shape=[M, K], strides=[K, 1], block_shape=[BM, BK])
    b_desc = tl.make_tensor_descriptor(b_ptr, shape=[N, K], strides=[K, 1], block_shape=[BN, BK])
    tiles_n = tl.cdiv(N, BN)
    for tile in range(tl.program_id(0), tl.cdiv(M, BM) * tiles_n, PROGRAMS):
        tile_m, tile_n = tile // tiles_n, tile % tiles_n
        acc = tl.zeros((BM, BN), dtype=tl.int32)
        for k in range(0, K, BK):
            acc = tl.dot(a_desc.load([tile_m * BM, k]), b_desc.load([tile_n * BN, k]).T, acc)
        rm = tile_m * BM + tl.arange(0, BM)
        rn = tile_n * BN + tl.arange(0, BN)
        tl.store(c_ptr + rm[:, None] * N + rn[None, :], acc)


TILE = {"BM": 128, "BN": 128, "BK": 64}
# name: (kernel, A/B dtype, max_num_imprecise_acc, archs)
TOYS = {
    "int8": (dot_loop, "i8", None, (80, 90)),
    "fp8": (dot_loop, "fp8e4nv", None, (89, 90)),  # FP8 tl.dot needs sm_89+
    "fp16": (dot_loop, "fp16", None, (80, 90)),
    "int8_rescaled": (rescaled_int8_loop, "i8", None, (80, 90)),
    "fp8_imprecise_acc0": (dot_loop, "fp8e4nv", 0, (90,)),
    "int8_tma": (persistent_tma_int8, "i8", None, (90,)),
}


def compile_toy(name: str, arch: int):
    """A toy compiled for sm_<arch>; pointers and integers declared 16-divisible so loads vectorize."""
    kernel, dtype, imprecise_acc, _ = TOYS[name]
    out = "*i32" if dtype == "i8" and kernel is not rescaled_int8_loop else "*fp32"
    pointers = {"a_ptr": f"*{dtype}", "b_ptr": f"*{dtype}", "c_ptr": out, "scale_ptr": "*fp32"}
    constexprs = {**TILE, "ACC": tl.int32 if out == "*i32" else tl.float32, "IMPRECISE_ACC": imprecise_acc,
                  "PROGRAMS": 132}
    names = kernel.arg_names
    signature = {n: pointers.get(n, "constexpr" if n in constexprs else "i32") for n in names}
    divisible = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names) if signature[n] != "constexpr"}
    source = ASTSource(fn=kernel, signature=signature, attrs=divisible,
                       constexprs={n: v for n, v in constexprs.items() if n in names})
    return triton.compile(source, target=GPUTarget("cuda", arch, 32), options={"num_warps": 8, "num_stages": 3})


def build_toys(out: Path) -> None:
    """Every toy for each of its archs: out/<name>.sm<arch>.cubin, and their metadata in out/toys.json."""
    metadata = {}
    for name, (*_, archs) in TOYS.items():
        for arch in archs:
            compiled = compile_toy(name, arch)
            (out / f"{name}.sm{arch}.cubin").write_bytes(compiled.asm["cubin"])
            metadata[f"{name}.sm{arch}"] = {"name": compiled.metadata.name, "shared": compiled.metadata.shared}
    (out / "toys.json").write_text(json.dumps(metadata))


@pytest.fixture(scope="module")
def toys(tmp_path_factory) -> dict[str, SimpleNamespace]:
    """The toys compiled in a subprocess: tests/conftest.py puts Triton in interpreter mode without a GPU."""
    out = tmp_path_factory.mktemp("toys")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"} | {"TRITON_DEFAULT_FP_FUSION": "1"}
    result = subprocess.run([sys.executable, __file__, str(out)], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    metadata = json.loads((out / "toys.json").read_text())
    return {key: SimpleNamespace(asm={"cubin": (out / f"{key}.cubin").read_bytes()},
                                 metadata=SimpleNamespace(**meta)) for key, meta in metadata.items()}


@pytest.fixture(scope="module")
def summaries(toys) -> dict[bytes, dict]:
    """summarize() of each toy's cubin, keyed by the cubin; in parallel, as nvdisasm takes ~0.3 s to start."""
    cubins = [toy.asm["cubin"] for toy in toys.values()]
    with ThreadPoolExecutor() as pool:
        return dict(zip(cubins, pool.map(summarize, cubins)))


@pytest.fixture(scope="module")
def summary(toys, summaries):
    def summary_of(name: str, arch: int):
        (kernel,) = summaries[toys[f"{name}.sm{arch}"].asm["cubin"]].values()
        return kernel

    return summary_of


def mma_kinds(kernel) -> set[str]:
    return {op.split(".")[0] for op in kernel.mma_loop.counts.keys("mma")}


@pytest.mark.parametrize("toy, arch, kind, types", [
    ("int8", 90, "IGMMA", "S8.S8"), ("fp8", 90, "QGMMA", "E4M3.E4M3"),
    ("int8", 80, "IMMA", "S8.S8"), ("fp8", 89, "QMMA", "E4M3.E4M3"),
])
def test_8bit_gemm_loop_is_pure_8bit_mma(summary, toy, arch, kind, types):
    kernel = summary(toy, arch)
    assert kernel.arch == arch and kernel.mma_loop is not None
    assert mma_kinds(kernel) == {kind}
    assert all(types in op for op in kernel.mma_loop.counts.keys("mma"))
    assert pure_8bit_problems(kernel) == []
    assert not kernel.spills and kernel.stack_bytes == 0 and 0 < kernel.registers <= 255
    assert kernel.mma_loop.counts.count("float_convert") == 0
    assert kernel.mma_loop.ints_per_mma is not None


@pytest.mark.parametrize("arch, kind", [(90, "HGMMA"), (80, "HMMA")])
def test_fp16_gemm_loop_is_fp16_mma(summary, arch, kind):
    kernel = summary("fp16", arch)
    assert mma_kinds(kernel) == {kind}
    assert all(".F32" in op for op in kernel.mma_loop.counts.keys("mma"))
    assert pure_8bit_problems(kernel) == [f"no 8-bit MMA in the loop, only {n}×{op}"
                                          for op, n in kernel.mma_loop.counts.keys("mma").items()]
    assert not kernel.spills


@pytest.mark.parametrize("arch, kind", [(90, "IGMMA"), (80, "IMMA")])
def test_float_rescale_in_the_loop_is_not_pure(summary, arch, kind):
    kernel = summary("int8_rescaled", arch)
    loop = kernel.mma_loop
    assert mma_kinds(kernel) == {kind}
    assert loop.counts.count("float_convert") > 0 and loop.counts.keys("float_math")["FFMA"] > 0
    assert loop.counts.count("global_load") > 0  # the scales
    problems = pure_8bit_problems(kernel)
    assert any(p.startswith("float conversions") for p in problems)
    assert any(p.startswith("float multiplies") and "FFMA" in p for p in problems)
    assert not kernel.spills


def test_fp8_without_imprecise_accumulation_is_emulated_with_hmma_on_sm90(summary):
    kernel = summary("fp8_imprecise_acc0", 90)
    assert "HMMA" in mma_kinds(kernel)
    problems = pure_8bit_problems(kernel)
    assert problems and "HMMA" in problems[0]


def test_persistent_tma_kernel_picks_the_inner_k_loop(summary):
    kernel = summary("int8_tma", 90)
    loop = kernel.mma_loop
    assert any(outer.contains(loop) for outer in kernel.loops)  # the tile loop around it
    # The wait stub's jump back into the middle of the K loop makes no loop: loops nest or lie apart.
    for first in kernel.loops:
        for second in kernel.loops:
            apart = first.end < second.start or second.end < first.start
            assert first is second or first.contains(second) or second.contains(first) or apart
    assert mma_kinds(kernel) == {"IGMMA"}
    assert {op.split(".")[0] for op in loop.counts.keys("async_copy")} == {"UTMALDG"}
    assert pure_8bit_problems(kernel) == []


def test_a_back_edge_into_a_loop_from_an_out_of_line_stub_is_no_loop():
    code = [Instruction("MOV", "R0,RZ"),
            Instruction("IMMA.16832.S8.S8", "R4,R8,R12,R4"),  # 0x10: loop header
            Instruction("BRA", "0x60", "@!P0"),  # to the stub
            Instruction("IADD3", "R0,R0,0x1,RZ"),  # 0x30: where the stub comes back to
            Instruction("BRA", "0x10", "@P1"),  # 0x40: the back edge
            Instruction("EXIT"),
            Instruction("SYNCS.PHASECHK.TRANS64.TRYWAIT", "P0,[UR4],R2"),  # 0x60: the stub
            Instruction("BRA", "0x30")]
    (loop,) = find_loops(code)
    assert (loop.start, loop.end, loop.mma_count) == (0x10, 0x40, 1)


def test_instruction_categories_and_widths():
    assert category(Instruction("HFMA2.MMA", "R3,-RZ,RZ,1.875,0")) == "other"  # ptxas's constant move
    assert category(Instruction("HFMA2", "R3,R4,R5,R6")) == "float_math"
    assert category(Instruction("HADD2.F32", "R0,-RZ,R2.H0_H0")) == "float_convert"
    assert category(Instruction("I2F.U32.RP", "R0,R5")) == "int_alu"  # integer division's reciprocal
    assert category(Instruction("I2FP.F32.S32", "R0,R5")) == "float_convert"
    assert category(Instruction("UIADD3", "UR4,UR4,0x1,URZ")) == "uniform"
    assert category(Instruction("UTMALDG.2D", "[UR8],[UR4]")) == "async_copy"
    assert access_bits(Instruction("LDGSTS.E.BYPASS.LTC128B.64")) == 64
    assert access_bits(Instruction("LDG.E.U8")) == 8
    assert access_bits(Instruction("LDG.E")) == 32
    assert access_bits(Instruction("LDSM.16.MT88.4")) == 128


@dataclass
class ToyVariant:
    """The interface of exporter.kernels.variants.KernelVariant that tools/kernel_report.py uses."""

    name: str
    family: str
    archs: tuple[int, ...]
    compile: Callable[[int], object]


REPORTED_TOYS = {"int8": "int8", "fp8": "fp8", "fp16": "fp16", "int8_rescaled": "int8"}  # toy: declared family


def load_kernel_report(monkeypatch):
    spec = importlib.util.spec_from_file_location("kernel_report", ROOT / "tools" / "kernel_report.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "kernel_report", module)
    spec.loader.exec_module(module)
    return module


def table_rows(markdown: str) -> list[list[str]]:
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in markdown.splitlines()[2:]]


def test_kernel_report_fails_the_rescaled_variant_only(toys, summaries, monkeypatch, tmp_path, capsys):
    kernel_report = load_kernel_report(monkeypatch)
    variants = [ToyVariant(f"toy.{name}", family, TOYS[name][-1], lambda arch, name=name: toys[f"{name}.sm{arch}"])
                for name, family in REPORTED_TOYS.items()]
    monkeypatch.setattr(kernel_report, "load_variants", lambda: variants)
    monkeypatch.setattr(kernel_report, "summarize", summaries.__getitem__)
    assert kernel_report.main(["--arch", "90", "80", "--out", str(tmp_path / "report.md")]) == 1
    out, err = capsys.readouterr()
    rows = {(cells[0], cells[1]): cells for cells in table_rows(out)}
    assert set(rows) == {("toy.int8", "80"), ("toy.int8", "90"), ("toy.fp8", "90"), ("toy.fp16", "80"),
                         ("toy.fp16", "90"), ("toy.int8_rescaled", "80"), ("toy.int8_rescaled", "90")}
    assert rows["toy.int8", "90"][-1] == "pure 8-bit MMA" and rows["toy.fp16", "80"][-1] == "FP16 MMA"
    assert rows["toy.int8_rescaled", "90"][-1].startswith("not pure: float conversions")
    assert err.count("FAIL") == 2 and "toy.int8_rescaled sm_90: not pure 8-bit" in err
    assert (tmp_path / "report.md").read_text().count("| toy.") == 7


def test_kernel_report_says_so_when_the_variants_are_missing(monkeypatch, capsys):
    kernel_report = load_kernel_report(monkeypatch)
    monkeypatch.setitem(sys.modules, "exporter.kernels.variants", None)
    assert kernel_report.main([]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "exporter/kernels/variants.py" in err


if __name__ == "__main__":
    build_toys(Path(sys.argv[1]))
