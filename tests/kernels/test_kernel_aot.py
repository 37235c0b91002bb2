"""Every kernel variant compiles ahead of time, without a GPU, for each of its targets (sm_80,
sm_89, sm_90a), with the sm_80 PTX for newer GPUs and a manifest for the plugins' launcher."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton", reason="the kernels are Triton kernels")

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("aot") / "kernels"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    subprocess.run([sys.executable, "-m", "exporter.kernels.aot", "--out", str(out)], cwd=ROOT, env=env,
                   check=True, capture_output=True, text=True)
    return out


def test_every_variant_is_built_for_each_target(built):
    manifest = json.loads((built / "kernels.json").read_text())
    by_variant: dict[str, set[int]] = {}
    for entry in manifest["kernels"]:
        cubin = (built / entry["cubin"]).read_bytes()
        assert cubin[:4] == b"\x7fELF" and entry["symbol"].encode() in cubin
        by_variant.setdefault(entry["variant"], set()).add(entry["arch"])
    families = {e["variant"]: e["family"] for e in manifest["kernels"]}
    for name, archs in by_variant.items():
        fp8 = families[name] == "fp8" or name.startswith(("fp8_gemm.", "quantize.fp8", "quantize.fp4"))
        expected = {89, 90} if fp8 else {80, 89, 90}
        assert archs == expected, name
        assert f".target sm_{min(expected)}" in (built / f"{name}.ptx").read_text()
    assert {"int8", "fp8", "fp16", "quantize"} == set(families.values())


def test_kernel_report_finds_pure_8bit_loops_and_no_spills(tmp_path):
    """The static targets: on sm_90a every INT8 / FP8 variant's K loop issues warpgroup MMA on 8-bit
    types with no float conversion or float multiply in it, and nothing spills (exit code 0)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    report = tmp_path / "report.md"
    run = subprocess.run([sys.executable, "tools/kernel_report.py", "--arch", "90", "--out", str(report)], cwd=ROOT,
                         env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    rows = [line.split("|")[1:-1] for line in report.read_text().splitlines() if line.startswith("| ")][1:]
    eight_bit = [r for r in rows if r[0].strip().startswith(("int8_gemm.w", "fp8_gemm.")) and ".a16." not in r[0]]
    from exporter.kernels.variants import VARIANTS

    assert len(eight_bit) == sum(v.family in ("int8", "fp8") for v in VARIANTS) == 12  # FP4: one per format
    for row in eight_bit:
        assert row[-1].strip() == "pure 8-bit MMA" and ("IGMMA" in row[5] or "QGMMA" in row[5]), row[0]


def test_gpu_check_says_so_without_a_gpu():
    if torch_cuda_available():
        pytest.skip("a GPU is present: tools/gpu_check.py runs for real there")
    run = subprocess.run([sys.executable, "tools/gpu_check.py"], cwd=ROOT, capture_output=True, text=True,
                         env={k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"})
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1


def torch_cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()
