"""The plugins' own launcher of the ahead-of-time Triton kernels (plugins/kernels/tritonLauncher.*):
embed.py's C++ source is deterministic and holds every image of the AOT folder byte for byte; the
launcher and the images compile without warnings and export the C API; every PTX and cubin takes
the parameters the launcher passes (the kernel's arguments, then two scratch pointers); the
launcher's logic (image per compute capability, argument checks) and its driver side (against a
stand-in libcuda.so.1) pass their host checks; on a GPU its launches match the Python wrappers'."""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton", reason="the kernels are Triton kernels")

ROOT = Path(__file__).resolve().parents[2]
PLUGINS = ROOT / "plugins"
ENV = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # AOT compiles need the real compiler
TARGETS = ("dit_export_triton", "dit_export_triton_launcher_check", "dit_export_triton_driver_check")
C_API = ("ditTritonInt8Gemm", "ditTritonFp8Gemm", "ditTritonVqGemm", "ditTritonQuantizeRows", "ditTritonPreload",
         "ditTritonKernelsVersion", "ditTritonLastError")

pytestmark = pytest.mark.skipif(shutil.which("cmake") is None or shutil.which("nvcc") is None
                                or shutil.which("c++") is None, reason="needs cmake, nvcc and a C++ compiler")


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """The AOT kernels, their embedded source, the launcher library and both host checks: one CMake
    build of the launcher's targets (the plugin library needs TensorRT's headers: test_plugins.py)."""
    folder = tmp_path_factory.mktemp("triton-launcher")
    log = []
    for command in (["cmake", "-S", str(PLUGINS), "-B", str(folder), f"-DPython3_EXECUTABLE={sys.executable}"],
                    ["cmake", "--build", str(folder), "-j", "2", "--verbose", "--target", *TARGETS]):
        run = subprocess.run(command, check=False, capture_output=True, text=True, env=ENV)
        log.append(run.stdout + run.stderr)
        assert run.returncode == 0, (run.stdout[-3000:] + run.stderr[-3000:])
    (folder / "build.log").write_text("\n".join(log))
    return folder


def _manifest(built: Path) -> dict:
    return json.loads((built / "triton_kernels" / "kernels.json").read_text())


def _fnv1a(data: bytes) -> str:
    h = 1469598103934665603
    for b in data:
        h = ((h ^ b) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def _run(built: Path, program: str, *args: str) -> str:
    run = subprocess.run([str(built / program), *args], check=False, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return run.stdout


def test_embedded_source_is_deterministic_and_holds_every_image(built, tmp_path):
    from exporter.kernels.embed import read_images, render

    kernels = built / "triton_kernels"
    generated = (built / "tritonKernelImages.cpp").read_bytes()
    again = tmp_path / "again.cpp"
    subprocess.run([sys.executable, "-m", "exporter.kernels.embed", "--kernels", str(kernels), "--out", str(again)],
                   cwd=ROOT, env=ENV, check=True, capture_output=True)
    assert again.read_bytes() == generated
    manifest = _manifest(built)
    assert render(read_images(kernels), manifest["triton"], manifest["large_tiles_above"]).encode() == generated
    text = generated.decode()
    assert "static const unsigned char kImage0[] = {" in text and max(map(len, text.splitlines())) < 400

    lines = _run(built, "dit_export_triton_launcher_check", "table").splitlines()
    assert lines[0] == f"triton {manifest['triton']}"
    rows = {}
    for line in lines[1:]:
        variant, family, arch, specific, ptx, symbol, warps, shared, bm, bn, bk, arguments, size, digest = line.split()
        rows[(variant, int(arch), ptx == "1")] = (family, specific == "1", symbol, int(warps), int(shared),
                                                  (int(bm), int(bn), int(bk)), arguments, int(size), digest)
    expected = {}
    by_variant: dict[str, dict[int, dict]] = {}
    for e in manifest["kernels"]:
        by_variant.setdefault(e["variant"], {})[e["arch"]] = e
        data = (kernels / e["cubin"]).read_bytes()
        c = e["constants"]
        expected[(e["variant"], e["arch"], False)] = (
            e["family"], e["arch"] >= 90, e["symbol"], e["num_warps"], e["shared_bytes"],
            (c.get("BM", 0), c.get("BN", 0), c.get("BK", 0)), ",".join(e["arguments"]), len(data), _fnv1a(data))
    for variant, entries in by_variant.items():
        ptx = kernels / f"{variant}.ptx"
        if ptx.is_file():
            data = ptx.read_bytes() + b"\0"
            arch = int(re.search(rb"\.target sm_(\d+)", data).group(1))
            e, c = entries[arch], entries[arch]["constants"]
            expected[(variant, arch, True)] = (
                e["family"], False, e["symbol"], e["num_warps"], e["shared_bytes"],
                (c.get("BM", 0), c.get("BN", 0), c.get("BK", 0)), ",".join(e["arguments"]), len(data), _fnv1a(data))
    assert len(rows) == len(lines) - 1 == len(manifest["kernels"]) + len(by_variant)
    assert rows == expected


def test_the_launcher_names_a_variant_that_exists_for_every_quantizer_format_and_mode():
    from exporter.contract.kernel_api import QUANT_MODES, quantizer_variant
    from exporter.kernels.variants import VARIANTS

    names = {v.name for v in VARIANTS}
    assert {quantizer_variant(fmt, mode) for fmt, modes in QUANT_MODES.items() for mode in modes} <= names
    assert {n for n in names if n.startswith("quantize.")} == {
        quantizer_variant(fmt, mode) for fmt, modes in QUANT_MODES.items() for mode in modes}


def test_embed_refuses_a_folder_without_a_manifest(tmp_path):
    from exporter.kernels.embed import embed

    out = tmp_path / "out.cpp"
    with pytest.raises(FileNotFoundError, match="exporter.kernels.aot"):
        embed(tmp_path, out)
    assert not out.exists()


def test_launcher_compiles_without_warnings_and_exports_the_c_api(built):
    log = (built / "build.log").read_text()
    for source in ("kernels/tritonLauncher.cpp", "kernels/tritonLauncherLogic.cpp", "tritonKernelImages.cpp"):
        (command,) = [line for line in log.splitlines() if f"-c {built / source}" in line
                      or f"-c {PLUGINS / source}" in line]
        assert all(flag in command.split() for flag in ("-Wall", "-Wextra", "-Werror")), command
    assert "warning:" not in log.lower()
    library = built / "libdit_export_triton.so"
    defined = subprocess.run(["nm", "-D", "--defined-only", str(library)], capture_output=True, text=True,
                             check=True).stdout
    exported = {parts[2] for parts in map(str.split, defined.splitlines()) if len(parts) == 3 and parts[1] == "T"}
    assert set(C_API) <= exported
    # The driver is found at run time (dlopen), so the library loads where there is none.
    undefined = subprocess.run(["nm", "-D", "--undefined-only", str(library)], capture_output=True, text=True,
                               check=True).stdout
    assert not [s for s in undefined.split() if s.startswith("cu")]


def test_headers_compile_in_cuda_sources_without_warnings(tmp_path):
    """The plugins' .cu files can include the C API and the launcher's logic."""
    source = tmp_path / "includes.cu"
    source.write_text('#include "tritonLauncher.h"\n#include "tritonLauncherLogic.h"\n#include <cuda_runtime_api.h>\n'
                      "int32_t quantize(cudaStream_t s)\n{\n    return ditTritonQuantizeRows(nullptr, nullptr, nullptr, "
                      "nullptr, nullptr, nullptr, 0, 16, 1, DIT_TRITON_QUANT_INT8, s);\n}\n")
    run = subprocess.run(["nvcc", "-std=c++17", f"-I{PLUGINS / 'kernels'}", "-Xcompiler=-Wall,-Wextra",
                          "-Werror=all-warnings", "-c", str(source), "-o", str(tmp_path / "includes.o")],
                         check=False, capture_output=True, text=True)
    assert run.returncode == 0 and "warning" not in run.stderr.lower(), run.stderr[-3000:]


def _ptx_params(ptx: str) -> tuple[str, list[str], int]:
    entry = re.search(r"\.visible \.entry (\w+)\((.*?)\)\s*\.reqntid (\d+)", ptx, re.DOTALL)
    params = re.findall(r"\.param \.(u64|u32)", entry.group(2))
    return entry.group(1), params, int(entry.group(3))


def _cubin_params(cuobjdump: Path, cubin: Path) -> tuple[str, list[int]]:
    elf = subprocess.run([str(cuobjdump), "-elf", str(cubin)], capture_output=True, text=True, check=True).stdout
    target = re.search(r"sm=(\w+)", elf).group(1)
    params = sorted((int(o, 16), int(s, 16)) for o, s in
                    re.findall(r"Ordinal\s*:\s*(0x[0-9a-f]+)\s+Offset\s*:\s*0x[0-9a-f]+\s+Size\s*:\s*(0x[0-9a-f]+)", elf))
    return target, [size for _, size in params]


def test_every_image_takes_its_arguments_then_two_scratch_pointers(built):
    """The ABI the launcher encodes (tritonLauncher.h): pointers 8 bytes, i32 4 bytes, in signature
    order, then global_scratch and profile_scratch; block 32 x num_warps; no scratch memory needed."""
    import triton

    code = ("import json\nfrom exporter.kernels.variants import VARIANTS\nout = {}\nfor v in VARIANTS:\n"
            "    for a in v.archs:\n        m = v.compile(a).metadata\n"
            "        out[f'{v.name}.sm{a}'] = [m.global_scratch_size, m.profile_scratch_size, m.num_ctas,\n"
            "            bool(m.launch_pdl), bool(m.launch_cooperative_grid), list(v.signature.values())]\n"
            "print(json.dumps(out))")
    run = subprocess.run([sys.executable, "-c", code], check=False, cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    metadata = json.loads(run.stdout.splitlines()[-1])
    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    kernels = built / "triton_kernels"
    for e in _manifest(built)["kernels"]:
        stem = f"{e['variant']}.sm{e['arch']}"
        global_scratch, profile_scratch, ctas, pdl, cooperative, types = metadata[stem]
        assert (global_scratch, profile_scratch, ctas, pdl, cooperative) == (0, 0, 1, False, False), stem
        sizes = [8 if t.startswith("*") else 4 for t in types] + [8, 8]
        assert len(types) == len(e["arguments"])
        ptx = kernels / f"{e['variant']}.ptx"
        if ptx.is_file() and f".target sm_{e['arch']}" in ptx.read_text():
            symbol, params, threads = _ptx_params(ptx.read_text())
            assert (symbol, [8 if p == "u64" else 4 for p in params], threads) == (e["symbol"], sizes,
                                                                                   32 * e["num_warps"]), stem
        if cuobjdump.is_file():
            target, params = _cubin_params(cuobjdump, kernels / e["cubin"])
            assert (target, params) == (f"{e['arch']}{'a' if e['arch'] >= 90 else ''}", sizes), stem


def test_launcher_logic_host_check(built):
    assert re.fullmatch(r"ok \d+\n", _run(built, "dit_export_triton_launcher_check"))


# Each variant's image by compute capability: exact cubins, sm_86/87 on sm_80's, sm_90 on sm_90a's,
# newer GPUs on the PTX of the lowest target.
ALL_TARGETS = {(7, 5): "none", (8, 0): "sm_80", (8, 6): "sm_80", (8, 7): "sm_80", (8, 9): "sm_89",
               (9, 0): "sm_90a", (10, 0): "PTX sm_80", (12, 0): "PTX sm_80"}
FP8_TARGETS = {(7, 5): "none", (8, 0): "none", (8, 6): "none", (8, 7): "none", (8, 9): "sm_89", (9, 0): "sm_90a",
               (10, 0): "PTX sm_89", (12, 0): "PTX sm_89"}


def test_each_device_gets_the_image_built_for_it(built):
    archs: dict[str, set[int]] = {}
    for e in _manifest(built)["kernels"]:
        archs.setdefault(e["variant"], set()).add(e["arch"])
    for (major, minor) in ALL_TARGETS:
        lines = _run(built, "dit_export_triton_launcher_check", "select", str(major), str(minor)).splitlines()
        chosen = dict(line.split(" ", 1) for line in lines)
        assert set(chosen) == set(archs)
        for variant, built_for in archs.items():
            table = ALL_TARGETS if 80 in built_for else FP8_TARGETS
            assert chosen[variant] == table[(major, minor)], (variant, major, minor)


def test_driver_side_against_a_stand_in_driver(built):
    """Loads once per context and variant, JIT for newer GPUs, the shared-memory opt-in, the exact
    parameter buffer, threads, errors (plugins/tests/tritonDriverCheck.cpp)."""
    assert re.fullmatch(r"ok \d+\n", _run(built, "dit_export_triton_driver_check"))


def _library(built: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(built / "libdit_export_triton.so"))
    p, i32 = ctypes.c_void_p, ctypes.c_int32
    lib.ditTritonInt8Gemm.argtypes = [p, p, p, p, p, p, p, i32, i32, i32, i32, i32, p]
    lib.ditTritonFp8Gemm.argtypes = [p, p, p, p, p, p, p, i32, i32, i32, i32, i32, p]
    lib.ditTritonVqGemm.argtypes = [p, p, p, p, p, i32, i32, i32, i32, p]
    lib.ditTritonQuantizeRows.argtypes = [p, p, p, p, p, p, i32, i32, i32, i32, p]
    for name in ("ditTritonInt8Gemm", "ditTritonFp8Gemm", "ditTritonVqGemm", "ditTritonQuantizeRows",
                 "ditTritonPreload"):
        getattr(lib, name).restype = i32
    lib.ditTritonLastError.restype = ctypes.c_char_p
    lib.ditTritonKernelsVersion.restype = ctypes.c_char_p
    return lib


def test_c_api_without_a_driver_fails_with_a_message(built):
    if ctypes.util.find_library("cuda"):
        pytest.skip("a CUDA driver is installed: the GPU test calls the C API for real")
    import triton

    lib = _library(built)
    assert lib.ditTritonKernelsVersion().decode() == triton.__version__
    assert lib.ditTritonInt8Gemm(None, None, None, None, None, None, None, 0, 64, 64, 8, 0, None) == 0
    assert lib.ditTritonInt8Gemm(16, 32, 48, None, 64, 80, 96, 16, 64, 100, 8, 0, None) == 1
    assert b"K = 100 must be a positive multiple of 16" in lib.ditTritonLastError()
    assert lib.ditTritonInt8Gemm(16, 32, 48, None, 64, 80, 96, 16, 64, 64, 8, 0, None) == 3
    assert b"libcuda.so.1" in lib.ditTritonLastError()


def _gpu():
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    return torch


def test_launches_match_the_python_wrappers_on_a_gpu(built):
    torch = _gpu()
    from exporter.kernels.activation_quant import FORMATS, quantize_rows
    from exporter.kernels.fp8_gemm import Fp8Weights, fp8_gemm
    from exporter.kernels.int8_gemm import Int8Weights, int8_gemm
    from exporter.kernels.vq_gemm import VqWeights, vq_gemm

    lib = _library(built)
    assert lib.ditTritonPreload() == 0, lib.ditTritonLastError()
    stream = torch.cuda.current_stream().cuda_stream
    g = torch.Generator(device="cuda").manual_seed(0)

    def ptr(t):
        return None if t is None else t.data_ptr()

    def same(y, expected, what):
        torch.cuda.synchronize()
        torch.testing.assert_close(y.float(), expected.float(), rtol=1e-3, atol=1e-3, msg=what)

    n, k = 1152, 1152
    for m in (300, 77):
        x = torch.randn(m, k, device="cuda", generator=g).half()
        codes, scale = quantize_rows(x, "int8")
        out_codes = torch.empty_like(codes)
        out_scale = torch.empty_like(scale)
        assert lib.ditTritonQuantizeRows(ptr(x), ptr(out_codes), ptr(out_scale), None, None, None, m, k, 1, 0, stream) == 0
        torch.cuda.synchronize()
        assert torch.equal(out_codes, codes) and torch.equal(out_scale, scale)

        w = torch.randint(-127, 128, (n, k), dtype=torch.int8, device="cuda", generator=g)
        w_scale = torch.rand(n, device="cuda", generator=g) / 100
        bias = torch.randn(n, device="cuda", generator=g)
        y = torch.empty(m, n, dtype=torch.float16, device="cuda")
        assert lib.ditTritonInt8Gemm(ptr(codes), ptr(scale), ptr(w), None, ptr(w_scale), ptr(bias), ptr(y), m, n, k,
                                     8, 0, stream) == 0, lib.ditTritonLastError()
        same(y, int8_gemm(codes, scale, Int8Weights(w, w_scale), bias), f"int8 w8 M={m}")

        q = torch.randint(-8, 8, (n, k), dtype=torch.int8, device="cuda", generator=g)
        factor = torch.randint(1, 17, (n, k // 64), dtype=torch.uint8, device="cuda", generator=g)
        w4 = Int8Weights.four_bit_from_codes(q, factor, w_scale, 64)
        assert lib.ditTritonInt8Gemm(ptr(codes), ptr(scale), ptr(w4.codes), ptr(w4.factor), ptr(w_scale), ptr(bias),
                                     ptr(y), m, n, k, 4, 0, stream) == 0, lib.ditTritonLastError()
        same(y, int8_gemm(codes, scale, w4, bias), f"int8 w4 M={m}")

        codebook = torch.randn(256, 4, device="cuda", generator=g).half()
        indices = torch.randint(0, 256, (n, k // 4), dtype=torch.uint8, device="cuda", generator=g)
        assert lib.ditTritonVqGemm(ptr(x), ptr(indices), ptr(codebook), ptr(bias), ptr(y), m, n, k, 4, stream) == 0
        same(y, vq_gemm(x, VqWeights(codebook, indices), bias=bias), f"vq d4 M={m}")

        if torch.cuda.get_device_capability() >= (8, 9):
            a, a_scale = quantize_rows(x, "fp8")
            w8 = (torch.randn(n, k, device="cuda", generator=g) * 50).to(torch.float8_e4m3fn)
            assert lib.ditTritonFp8Gemm(ptr(a), ptr(a_scale), ptr(w8), None, ptr(w_scale), ptr(bias), ptr(y), m, n, k,
                                        8, 0, stream) == 0, lib.ditTritonLastError()
            same(y, fp8_gemm(a, a_scale, Fp8Weights(w8, w_scale), bias), f"fp8 M={m}")
            for fmt in ("fp4", "fp4_hadamard"):
                codes, scale = quantize_rows(x, fmt)
                out_codes, out_scale = torch.empty_like(codes), torch.empty_like(scale)
                assert lib.ditTritonQuantizeRows(ptr(x), ptr(out_codes), ptr(out_scale), None, None, None, m, k, 1,
                                                 FORMATS[fmt], stream) == 0, lib.ditTritonLastError()
                torch.cuda.synchronize()
                assert torch.equal(out_codes.view(torch.uint8), codes.view(torch.uint8)), fmt
                assert torch.equal(out_scale, scale), fmt
