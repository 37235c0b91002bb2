"""The plugin kernels: they compile for every supported GPU target (no GPU needed), their number
formats agree with the Python definitions (host check, no GPU needed), and on a GPU each GEMM
matches dequantize-then-matmul in torch at SQNR >= 40 dB over DiT-XL/2's shapes and awkward ones."""

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from exporter.export.fp4_graph import decode_table
from exporter.quant.fp4 import FP4_FORMATS, Fp4Format
from exporter.quant.hadamard import hadamard_matrix
from exporter.quant.packing import pack_int4
from exporter.quant.vq import pack_indices

PLUGINS = Path(__file__).resolve().parents[1] / "plugins"
needs_toolchain = pytest.mark.skipif(shutil.which("nvcc") is None or shutil.which("cmake") is None,
                                     reason="needs nvcc and cmake")


def _build(folder: Path, *options: str) -> subprocess.CompletedProcess:
    configure = subprocess.run(["cmake", "-S", str(PLUGINS), "-B", str(folder), *options], capture_output=True,
                               text=True)
    if configure.returncode:
        return configure
    return subprocess.run(["cmake", "--build", str(folder), "-j", "2", "--verbose"], capture_output=True, text=True)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The kernels and the host check, compiled for every supported target (80, 86, 89, 90a)."""
    folder = tmp_path_factory.mktemp("plugins-build")
    result = _build(folder)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (folder / "build.log").write_text(result.stdout + result.stderr)
    return folder


@needs_toolchain
def test_kernels_compile_for_every_supported_target_without_warnings(built):
    assert (built / "libdit_export_kernels.so").is_file()
    log = (built / "build.log").read_text()
    kernel_commands = [line for line in log.splitlines() if "nvcc" in line and "kernels/" in line and " -c " in line]
    assert len(kernel_commands) == 4
    for command in kernel_commands:
        for arch in ("80", "86", "89", "90a"):
            assert f"-gencode=arch=compute_{arch},code=sm_{arch}" in command
    assert "warning:" not in log.lower() and "-Werror=all-warnings" in kernel_commands[0]


@needs_toolchain
def test_an_unsupported_target_is_refused(tmp_path):
    result = _build(tmp_path, "-DDIT_CUDA_ARCHS=75")
    assert result.returncode != 0 and "GPU target '75' is not supported" in result.stdout + result.stderr


def _check(built: Path, commands: str) -> list[list[str]]:
    out = subprocess.run([str(built / "dit_export_quant_math_check")], input=commands, capture_output=True,
                         text=True, check=True).stdout
    return [line.split() for line in out.splitlines()]


@needs_toolchain
@pytest.mark.parametrize("fmt", FP4_FORMATS, ids=lambda f: f.kind)
def test_fp4_codes_decode_as_in_python_and_as_exact_int8_and_e4m3(built, fmt):
    (line,) = _check(built, f"fp4 {FP4_FORMATS.index(fmt)}\n")
    values, as_int8, as_e4m3 = zip(*(item.split(":") for item in line))
    expected = decode_table(fmt)
    np.testing.assert_array_equal(np.array(values, dtype=np.float32), expected)
    factor = 2 if fmt.kind == "e2m1" else 4
    np.testing.assert_array_equal(np.array(as_int8, dtype=np.int32), (expected * factor).astype(np.int32))
    e4m3 = torch.tensor([int(b) for b in as_e4m3], dtype=torch.uint8).view(torch.float8_e4m3fn).float().numpy()
    np.testing.assert_array_equal(e4m3, expected)


@needs_toolchain
def test_activation_rounding_matches_python(built):
    e2m1 = Fp4Format("e2m1")
    thresholds = e2m1.thresholds().numpy()
    mids = ((e2m1.magnitudes[1:] + e2m1.magnitudes[:-1]) / 2).numpy().astype(np.float32)
    points = np.concatenate([e2m1.magnitudes.numpy(), mids, np.nextafter(mids, np.float32(0)),
                             np.nextafter(mids, np.float32(9)), thresholds, [7.0, 100.0],
                             np.linspace(0, 7, 57)]).astype(np.float32)
    rng = np.random.default_rng(0)
    ints = np.concatenate([np.arange(-130, 131) + 0.5, rng.normal(0, 60, 200)]).astype(np.float32)
    e4m3 = np.concatenate([rng.normal(0, 50, 200), [448.0, -448.0, 0.0]]).astype(np.float32)
    lines = _check(built, "\n".join([
        f"e2m1 {len(points)} " + " ".join(f"{p:.9g}" for p in points),
        f"int8 {len(ints)} " + " ".join(f"{v:.9g}" for v in ints),
        f"e4m3 {len(e4m3)} " + " ".join(f"{v:.9g}" for v in e4m3)]) + "\n")
    np.testing.assert_array_equal(np.array(lines[0], dtype=np.int64), e2m1.index(torch.from_numpy(points)).numpy())
    np.testing.assert_array_equal(np.array(lines[1], dtype=np.int64),
                                  torch.from_numpy(ints).round().clamp(-128, 127).numpy().astype(np.int64))
    torch_e4m3 = torch.from_numpy(e4m3).to(torch.float8_e4m3fn)
    assert [int(item.split(":")[0]) for item in lines[2]] == torch_e4m3.view(torch.uint8).tolist()


@needs_toolchain
@pytest.mark.parametrize("zero", [0, 5, 15])
def test_uint4_activation_codes_match_onnx_quantize_linear(built, zero):
    """UINT4 static activations reach the GEMM as code - zero; the code must be ONNX's (round, then
    add the zero point), which the QDQ graph and the reference functions compute."""
    from onnx import TensorProto, helper

    x = np.concatenate([np.arange(-20, 21) * 0.5, np.random.default_rng(zero).normal(0, 6, 100)]).astype(np.float32)
    (line,) = _check(built, f"uint4 {zero} {len(x)} " + " ".join(f"{v:.9g}" for v in x) + "\n")
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])]
    graph = helper.make_graph(
        nodes, "uint4", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [len(x)])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [len(x)])],
        [helper.make_tensor("s", TensorProto.FLOAT, [], [1.0]), helper.make_tensor("z", TensorProto.UINT4, [], [zero])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = session.run(None, {"x": x})[0]
    np.testing.assert_array_equal(np.array(line, dtype=np.float32), expected)


@needs_toolchain
@pytest.mark.parametrize("bits", [1, 3, 6, 8, 11, 16])
def test_packed_layouts_read_as_the_exporter_writes_them(built, bits):
    gen = torch.Generator().manual_seed(bits)
    codes = torch.randint(-8, 8, (37,), generator=gen, dtype=torch.int8)
    packed = pack_int4(codes).tolist()
    indices = torch.randint(0, 2**bits, (45,), generator=gen)
    stream = pack_indices(indices, bits).tolist()
    lines = _check(built, f"int4 {len(packed)} {' '.join(map(str, packed))}\n"
                          f"stream {bits} {len(indices)} {len(stream)} {' '.join(map(str, stream))}\n")
    assert [int(v) for v in lines[0][:37]] == codes.tolist()
    assert [int(v) for v in lines[1]] == indices.tolist()


# ---- on a GPU ----------------------------------------------------------------------------------

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU (sm_80, sm_86, sm_89 "
                                                                     "or sm_90) and a CUDA build of PyTorch")
# DiT-XL/2's K and N (1152, 3456, 4608), M = tokens x batch from 1 to 8,192, and M off the tile.
SHAPES = [(1, 1152, 1152), (77, 1152, 3456), (256, 3456, 1152), (1000, 1152, 4608), (1024, 4608, 1152),
          (2049, 1152, 1152), (8192, 1152, 1152), (8192, 4608, 1152)]
TINY = torch.finfo(torch.float32).tiny * 2**24


def sqnr_db(reference: torch.Tensor, actual: torch.Tensor) -> float:
    noise = (reference.double() - actual.double()).pow(2).mean()
    return float(10 * torch.log10(reference.double().pow(2).mean() / noise.clamp_min(1e-30)))


def _fake_quant(x: torch.Tensor, fmt: str, group: int, scale: torch.Tensor | None = None,
                zero: torch.Tensor | None = None) -> torch.Tensor:
    """Dynamic scales, or the given ones (and UINT4 zero points) [M, groups]."""
    k = x.shape[1]
    g = group or k
    xs = x.reshape(x.shape[0], k // g, g)
    qmax = {"int8": 127.0, "int4": 7.0, "uint4": 15.0, "fp8e4m3": 448.0, "fp4e2m1": 6.0}[fmt]
    s = (xs.abs().amax(-1, keepdim=True) / qmax).clamp_min(TINY) if scale is None else scale.reshape(*xs.shape[:2], 1)
    y = xs / s
    if fmt == "uint4":
        z = zero.float().reshape(*xs.shape[:2], 1)
        q = (y.round() + z).clamp(0, 15) - z  # ONNX QuantizeLinear: round, then the zero point
    elif fmt in ("int8", "int4"):
        q = y.round().clamp(-qmax - 1, qmax)
    elif fmt == "fp8e4m3":
        q = y.clamp(-448, 448).to(torch.float8_e4m3fn).float()
    else:
        q = Fp4Format("e2m1").round(y)
    return (q * s).reshape(x.shape)


@pytest.fixture(scope="module")
def gpu_kernels(tmp_path_factory):
    from exporter.gpu_kernels import KernelLibrary

    major, minor = torch.cuda.get_device_capability()
    arch = {(8, 0): "80", (8, 6): "86", (8, 9): "89", (9, 0): "90a"}.get((major, minor))
    if arch is None:
        pytest.skip(f"compute capability {major}.{minor} is not a supported target")
    folder = tmp_path_factory.mktemp("plugins-gpu")
    result = _build(folder, f"-DDIT_CUDA_ARCHS={arch}")
    assert result.returncode == 0, result.stderr[-3000:]
    lib = KernelLibrary(folder / "libdit_export_kernels.so")
    lib.check_device()
    return lib


SCALAR_CASES = {  # weights, activation mode, activation format, activation group, Hadamard
    "w4a8": ("int4", "dynamic", "int8", 0, False),
    "w8a8-static": ("int8", "static", "int8", 0, False),
    "w4a4-static": ("int4", "static", "int4", 0, False),
    "w4a4-static-uint4-g32": ("int4", "static", "uint4", 32, False),
    "w4-weight-only": ("int4", "none", "none", 0, False),
    "w4a8-fp4": ("fp4e2m1", "dynamic", "int8", 0, False),
    "fp4-e3m0-a8": ("fp4e3m0", "dynamic", "int8", 0, False),
    "fp4": ("fp4e2m1", "dynamic", "fp4e2m1", 32, True),
    "fp4-e1m2-fp8": ("fp4e1m2", "dynamic", "fp8e4m3", 0, False),
    "w8-fp8": ("int8", "dynamic", "fp8e4m3", 0, False),
}


@needs_gpu
@pytest.mark.parametrize("case", list(SCALAR_CASES))
@pytest.mark.parametrize("m,k,n", SHAPES)
def test_scalar_gemm_matches_dequantize_then_matmul(gpu_kernels, case, m, k, n):
    from exporter.gpu_kernels import Activation

    weight_format, mode, act_format, act_group, rotate = SCALAR_CASES[case]
    gen = torch.Generator(device="cuda").manual_seed(m + k + n)
    dev = "cuda"
    group = 32
    x = torch.randn(m, k, device=dev, generator=gen)
    x[:, :7] *= 20  # outliers
    if weight_format == "int8":
        codes_t = torch.randint(-128, 128, (k, n), device=dev, generator=gen, dtype=torch.int8)
        values, packed = codes_t.float(), codes_t
    else:
        low = -8 if weight_format == "int4" else 0
        codes_t = torch.randint(low, low + 16, (k, n), device=dev, generator=gen, dtype=torch.int8)
        packed = pack_int4(codes_t.cpu().reshape(-1)).view(torch.int8).reshape(k, n // 2).to(dev)
        values = codes_t.float() if weight_format == "int4" else torch.from_numpy(
            decode_table(Fp4Format(weight_format[3:]))).to(dev)[codes_t.long()]
    scale = torch.rand(-(-k // group), n, device=dev, generator=gen) * 0.02 + 0.001
    bias = torch.randn(n, device=dev, generator=gen)
    w_t = values * scale.repeat_interleave(group, 0)[:k]
    hadamard = hadamard_matrix(128).float().to(dev) if rotate else None
    xr = (x.reshape(m, k // 128, 128) @ hadamard).reshape(m, k) if rotate else x
    act = Activation(mode, act_format, act_group)
    if mode == "static":
        buckets = torch.arange(m, device=dev) % 3
        groups = k // act_group if act_group else 1
        spread = 1 + torch.rand(3, groups, device=dev, generator=gen)
        table = torch.tensor([[0.02], [0.05], [0.08]], device=dev) * spread
        zeros = torch.randint(4, 12, (3, groups), device=dev, generator=gen).to(torch.int8)
        shape = (3, groups) if act_group else (3,)
        table, zeros = table.reshape(shape).contiguous(), zeros.reshape(shape).contiguous()
        act = Activation(mode, act_format, act_group, table, zeros if act_format == "uint4" else None, buckets)
        xq = _fake_quant(xr, act_format, act_group, table[buckets], zeros[buckets])
    elif mode == "dynamic":
        xq = _fake_quant(xr, act_format, act_group)
    else:
        xq = xr
    reference = xq.double() @ w_t.double() + bias.double()
    y = gpu_kernels.scalar_gemm(x, packed, scale, group, weight_format, bias=bias, hadamard=hadamard, act=act)
    assert sqnr_db(reference, y) >= 40, (case, m, k, n)


@needs_gpu
@pytest.mark.parametrize("codewords,dim,act_format", [(256, 4, "none"), (64, 2, "none"), (256, 4, "int8")])
@pytest.mark.parametrize("m,k,n", SHAPES)
def test_vq_gemm_matches_dequantize_then_matmul(gpu_kernels, codewords, dim, act_format, m, k, n):
    from exporter.gpu_kernels import Activation

    dev = "cuda"
    gen = torch.Generator().manual_seed(m + k + n + dim)
    codebook = (torch.randn(codewords, dim, generator=gen) * 0.05).half()
    per_row = -(-k // dim)
    assignments = torch.randint(codewords, (n, per_row), generator=gen)
    bits = codewords.bit_length() - 1
    stream = pack_indices(assignments, bits)
    w = codebook.float()[assignments].reshape(n, per_row * dim)[:, :k]
    x = torch.randn(m, k, generator=gen)
    act = Activation("dynamic", "int8") if act_format == "int8" else Activation()
    xq = _fake_quant(x, "int8", 0) if act_format == "int8" else x
    reference = xq.double() @ w.double().T
    y = gpu_kernels.vq_gemm(x.to(dev), codebook.to(dev), stream.to(dev), n, bits, act=act)
    assert sqnr_db(reference, y.cpu()) >= 40, (codewords, dim, m, k, n)


@needs_toolchain
@pytest.mark.skipif(not os.environ.get("TENSORRT_ROOT"), reason="set TENSORRT_ROOT to TensorRT's include/ (and "
                    "lib/) to compile the plugin library; TensorRT's headers are not part of this repository")
def test_plugin_library_compiles_against_tensorrt(tmp_path):
    env = {**os.environ, "DIT_CUDA_ARCHS": "80"}
    result = subprocess.run(["bash", str(PLUGINS.parent / "tools" / "build_plugins.sh"), str(tmp_path)],
                            capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    library = tmp_path / "libdit_export_plugins.so"
    exported = subprocess.run(["nm", "-D", "--defined-only", str(library)], capture_output=True, text=True).stdout
    assert " getCreators" in exported and " setLoggerFinder" in exported
    assert "warning:" not in (result.stdout + result.stderr).lower()
