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

ROOT = Path(__file__).resolve().parents[1]


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
        expected = {89, 90} if families[name] == "fp8" or name.startswith(("quantize.fp8", "quantize.fp4")) else {80, 89, 90}
        assert archs == expected, name
        assert f".target sm_{min(expected)}" in (built / f"{name}.ptx").read_text()
    assert {"int8", "fp8", "fp16", "quantize"} == set(families.values())
