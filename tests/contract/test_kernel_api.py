"""The kernels' C API enums are defined once (exporter/contract/kernel_api.py): the committed C
header is what the generator writes, the launcher includes it instead of declaring its own, and the
Python kernels, the FP4 formats and the plugin contract number their values the same way."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from exporter.contract.kernel_api import FP4_FORMAT, HEADER_NAME, KERNEL_ENUMS, QUANT_FORMAT, QUANT_MODES, generate
from exporter.contract.plugin_contract import ENUMS
from exporter.numerics.fp4_groups import EXPONENTS

KERNELS = Path(__file__).resolve().parents[2] / "plugins" / "kernels"


def test_the_committed_header_is_the_generated_one():
    assert (KERNELS / HEADER_NAME).read_text() == generate(), \
        f"run: python -m exporter.contract.kernel_api > plugins/kernels/{HEADER_NAME}"


def test_no_kernel_enum_is_declared_by_hand():
    launcher = (KERNELS / "tritonLauncher.h").read_text()
    assert f'#include "{HEADER_NAME}"' in launcher
    for source in KERNELS.glob("*"):
        if source.name == HEADER_NAME:
            continue
        text = source.read_text()
        for e in KERNEL_ENUMS:
            assert not re.search(rf"}}\s*{e.name}\s*;", text), (source.name, e.name)
            assert not re.search(rf"{e.prefix}\w+\s*=\s*\d", text), (source.name, e.name)


def test_python_numbers_formats_as_the_launcher_does():
    pytest.importorskip("triton", reason="the quantizer is a Triton kernel")
    from exporter.kernels.activation_quant import DYNAMIC_ONLY, FORMATS, STATIC_ONLY
    from exporter.kernels.variants import FP4_KINDS

    assert FORMATS == QUANT_FORMAT.numbers() and list(FORMATS) == list(QUANT_MODES)
    assert STATIC_ONLY == ("int4",) and DYNAMIC_ONLY == ("fp4", "fp4_hadamard")
    assert [v for v, _ in FP4_FORMAT.values] == list(EXPONENTS) == list(FP4_KINDS) == list(ENUMS["weight_format"])


@pytest.mark.skipif(shutil.which("gcc") is None or shutil.which("g++") is None, reason="no C / C++ compiler")
def test_the_header_compiles_as_c_and_cpp_and_numbers_as_python(tmp_path):
    checks = [f"static_assert({e.enumerator(v)} == {e.number(v)}, \"{e.name}\");" for e in KERNEL_ENUMS
              for v, _ in e.values]
    checks += [f"static_assert({e.macro}_COUNT == {len(e.values)}, \"{e.name}\");" for e in KERNEL_ENUMS]
    source = tmp_path / "check.c"
    source.write_text(f"#include <assert.h>\n#include \"{HEADER_NAME}\"\n" + "\n".join(checks) + "\n"
                      "static const char* const names[] = DIT_TRITON_QUANT_NAMES;\n"
                      "static const char* const variants[DIT_TRITON_QUANT_COUNT][2] = DIT_TRITON_QUANT_VARIANTS;\n"
                      "int main(void) { return names[0][0] == 'i' && variants[3][0] == 0 ? 0 : 1; }\n")
    for compiler, flags in (("gcc", ["-std=c11"]), ("g++", ["-x", "c++", "-std=c++17"])):
        binary = tmp_path / compiler
        subprocess.run([compiler, *flags, "-Wall", "-Wextra", "-Werror", f"-I{KERNELS}", str(source), "-o",
                        str(binary)], check=True, capture_output=True, text=True)
        subprocess.run([str(binary)], check=True)
