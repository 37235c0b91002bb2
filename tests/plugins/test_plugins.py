"""The TensorRT plugin library: built against TensorRT's headers (TENSORRT_ROOT) with the embedded
Triton kernels and no warnings; on the host (no TensorRT library, no GPU) its plugins take and
give FLOAT16, size their workspace, and fail with the launcher's or the device's reason logged.
The kernels' numerics are tested through their Python wrappers (test_triton_kernels.py,
test_kernel_linear.py) and their launcher (test_triton_launcher.py)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton", reason="the plugins' kernels are Triton kernels, compiled at build time")

ROOT = Path(__file__).resolve().parents[2]
PLUGINS = ROOT / "plugins"
ENV = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # AOT compiles need the real compiler
needs_toolchain = pytest.mark.skipif(shutil.which("nvcc") is None or shutil.which("cmake") is None,
                                     reason="needs nvcc (the CUDA toolkit's headers) and cmake")
needs_tensorrt_headers = pytest.mark.skipif(
    not os.environ.get("TENSORRT_ROOT"), reason="set TENSORRT_ROOT to a folder with TensorRT's include/ (e.g. the "
    "public NVIDIA/TensorRT repository's) to compile the plugins; TensorRT's headers are not part of this repository")


@needs_toolchain
def test_an_unsupported_target_is_refused(tmp_path):
    result = subprocess.run(["cmake", "-S", str(PLUGINS), "-B", str(tmp_path), "-DDIT_CUDA_ARCHS=75",
                             f"-DPython3_EXECUTABLE={sys.executable}"], capture_output=True, text=True, env=ENV)
    assert result.returncode != 0 and "GPU target '75' is not supported" in result.stdout + result.stderr


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """tools/build_plugins.sh for one target (sm_90a), then the host check."""
    folder = tmp_path_factory.mktemp("plugins")
    env = {**ENV, "DIT_CUDA_ARCHS": "90a"}
    result = subprocess.run(["bash", str(ROOT / "tools" / "build_plugins.sh"), str(folder)], capture_output=True,
                            text=True, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    check = subprocess.run(["cmake", "--build", str(folder), "--target", "dit_export_plugin_host_check"],
                           capture_output=True, text=True, env=env)
    assert check.returncode == 0, check.stdout[-3000:] + check.stderr[-3000:]
    (folder / "build.log").write_text(result.stdout + result.stderr + check.stdout + check.stderr)
    return folder


@needs_toolchain
@needs_tensorrt_headers
def test_plugin_library_compiles_against_tensorrt_without_warnings(built):
    log = (built / "build.log").read_text()
    assert "warning" not in log.lower()
    library = built / "libdit_export_plugins.so"
    defined = subprocess.run(["nm", "-D", "--defined-only", str(library)], capture_output=True, text=True,
                             check=True).stdout
    exported = {parts[2] for parts in map(str.split, defined.splitlines()) if len(parts) == 3 and parts[1] == "T"}
    assert {"getCreators", "setLoggerFinder", "ditTritonInt8Gemm", "ditTritonPreload"} <= exported
    assert any(name.startswith("_ZN10dit_export6triton15embeddedKernels") for name in exported) or \
        "ditTritonKernelsVersion" in exported
    undefined = subprocess.run(["nm", "-D", "--undefined-only", str(library)], capture_output=True, text=True,
                               check=True).stdout.split()
    assert not [s for s in undefined if s.startswith("cu") and not s.startswith("cuda")], "the driver is dlopen'ed"


@needs_toolchain
@needs_tensorrt_headers
def test_plugins_on_the_host_take_fp16_and_report_failures(built):
    lines = subprocess.run([str(built / "dit_export_plugin_host_check")], capture_output=True, text=True,
                           check=True).stdout.splitlines()
    rows = {line.split("|")[0]: line.split("|")[1:] for line in lines}
    half = "out=1"  # nvinfer1::DataType::kHALF
    for name in ("int w4 dynamic", "int w4 static uint4", "int w8 fp16", "fp4 w4 dynamic", "fp4 w4 dynamic hadamard",
                 "vq"):
        out, formats, fp32x, configure, workspace, enqueue = rows[name]
        assert out == half and set(formats.removeprefix("formats=")) == {"1"} and fp32x == "fp32x=0", name
        # No GPU here: the launcher's error becomes the enqueue's status, its message logged.
        assert enqueue.startswith("enqueue=-1 error: Dit") and "libcuda.so.1" in enqueue, name
    # Quantized activations: codes [M, K] and scales [M] (256-byte aligned), then the zero bias [N].
    m, k = 600, 256
    assert rows["int w4 dynamic"][4] == f"workspace={m * k + 2560 + 256}"
    assert rows["int w8 fp16"][4] == "workspace=256" and rows["vq"][4] == "workspace=256"
    assert rows["int w4 dynamic"][3] == "configure=0 " and rows["int w4 static uint4"][3] == "configure=0 "
    assert rows["int w4 static uint4"][4] == f"workspace={m * k + 2560 + 256}"
    # act_groups must have act_scale_table's buckets
    assert "act_groups must be [buckets, in_features / 32, 2]" in rows["int w4 static uint4 bad groups"][3]
    # The FP8 plugin checks the device before it builds: here there is none to read.
    for name in ("fp4 w4 dynamic", "fp4 w4 dynamic hadamard"):
        assert rows[name][3].startswith("configure=-1 error: DitFp4Gemm: cannot read the device's compute"), name
    assert rows["refused"] == ["1", "error: layer: DitIntGemm: 4-bit weights need in_features a multiple of the "
                                    "kernels' K step, 128"]
