#!/usr/bin/env bash
# Builds the TensorRT plugin library (libdit_export_plugins.so: every plugin, the Triton kernels
# compiled ahead of time and embedded, and their launcher) against the TensorRT at $TENSORRT_ROOT
# (include/, and lib/ if present: with headers only, the library compiles and links, leaving
# TensorRT's symbols to the loading process). Needs a Python with Triton ($PYTHON, default python3).
#
#   TENSORRT_ROOT=/opt/tensorrt tools/build_plugins.sh [BUILD_DIR]      (default plugins/build)
#   DIT_CUDA_ARCHS=90a ...                                              (one target: a faster build)
set -euo pipefail
: "${TENSORRT_ROOT:?set TENSORRT_ROOT to a TensorRT installation (include/ and lib/)}"
cd "$(dirname "$0")/.."
build="${1:-plugins/build}"
cmake -S plugins -B "$build" -DTENSORRT_ROOT="$TENSORRT_ROOT" -DPython3_EXECUTABLE="${PYTHON:-$(command -v python3)}" \
  ${DIT_CUDA_ARCHS:+-DDIT_CUDA_ARCHS="$DIT_CUDA_ARCHS"}
cmake --build "$build" -j "$(nproc)"
echo "plugin library: $build/libdit_export_plugins.so"
