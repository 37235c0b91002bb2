"""TensorRT is optional: every engine stage asks here first, and says in one line when it is missing."""

from __future__ import annotations

import ctypes
from pathlib import Path

from exporter.errors import UserError

PLUGIN_LIBRARY = Path(__file__).resolve().parents[1] / "plugins" / "build" / "libdit_export_plugins.so"
BUILD_PLUGINS = "TENSORRT_ROOT=/path/to/TensorRT tools/build_plugins.sh"


def tensorrt_missing() -> str | None:
    """Why TensorRT cannot be used here, or None when it can."""
    try:
        import tensorrt
    except (ImportError, OSError) as e:
        return f"TensorRT is not installed (import tensorrt: {str(e).splitlines()[0]})"
    if not hasattr(tensorrt, "Builder"):  # e.g. only tensorrt-stubs: an empty namespace package
        return "TensorRT is not installed (import tensorrt finds no TensorRT, only its type stubs)"
    return None


def require_tensorrt() -> None:
    """UserError saying that TensorRT is missing; callers then `import tensorrt` themselves, so
    that mypy checks their calls against TensorRT's stubs."""
    missing = tensorrt_missing()
    if missing:
        raise UserError(missing)


def check_plugin_library(path: Path) -> Path:
    """The plugin library's path, or UserError saying how to build it."""
    if not Path(path).is_file():
        raise UserError(f"plugin library {path} does not exist: build it with `{BUILD_PLUGINS}`")
    return Path(path)


def load_plugin_library(path: Path) -> None:
    """Loads the library into this process: its creators register themselves with TensorRT."""
    try:
        ctypes.CDLL(str(check_plugin_library(path)), mode=ctypes.RTLD_GLOBAL)
    except OSError as e:
        raise UserError(f"cannot load plugin library {path}: {str(e).splitlines()[0]}") from None
