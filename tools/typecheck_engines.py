"""Type-checks engines/ with mypy against TensorRT's stubs (the `tensorrt-stubs` package).

    pip install --no-deps tensorrt-stubs && python tools/typecheck_engines.py

The stubs (10.13) ship without a py.typed marker and with lines that are not valid Python
(parameters named `in`, a parameter without default after defaulted ones, `...` for types the
stub generator could not name), which stop mypy. This copies them to a temporary folder,
repairs those lines, and runs mypy with that folder on MYPYPATH; mypy's settings are in
pyproject.toml.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("tensorrt", "tensorrt_bindings")


def repaired_stubs(folder: Path) -> Path:
    try:
        dist = importlib.metadata.distribution("tensorrt-stubs")
    except importlib.metadata.PackageNotFoundError:
        sys.exit("tensorrt-stubs is not installed: pip install --no-deps tensorrt-stubs")
    for package in PACKAGES:
        shutil.copytree(Path(dist.locate_file(package)), folder / package)
    for stub in folder.rglob("*.pyi"):
        text = stub.read_text()
        text = re.sub(r"\bin: ", "in_: ", text)  # `in` is a keyword
        text = re.sub(r"(def \w+\([^)]*?= None), (\w+: [\w\[\], .|]+)\)", r"\1, *, \2)", text)
        text = re.sub(r"(\w+): \.\.\.(?=[,)])", r"\1: typing.Any", text)  # types the generator could not name
        text = re.sub(r"-> \.\.\.:", "-> typing.Any:", text)
        stub.write_text(text)
    return folder


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        stubs = repaired_stubs(Path(tmp))
        env = {**os.environ, "MYPYPATH": str(stubs)}
        return subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
