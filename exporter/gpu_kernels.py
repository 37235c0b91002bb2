"""Python binding (ctypes) of the plugin kernels' C API, plugins/kernels/ditKernels.h: calls the
GEMM kernels on CUDA tensors without TensorRT, for tests and benchmarks.

    lib = KernelLibrary(path)            # libdit_export_kernels.so (cmake -S plugins -B plugins/build)
    y = lib.scalar_gemm(x, codes, scale, group_size, "int4", act=Activation("dynamic", "int8"))

Tensors follow the contract's layouts (exporter/rewrite/contract.py): x [M, K] float32/float16,
codes int8 [K, N / 2] (4-bit, low nibble first) or [K, N], scale float32 [ceil(K / g), N],
codebook float16 [codewords, dim], assignments uint8 bit stream.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from exporter.errors import UserError
from exporter.rewrite.contract import ACT_FORMATS, ACT_MODES

DEFAULT_LIBRARY = Path(__file__).resolve().parents[1] / "plugins" / "build" / "libdit_export_kernels.so"
WEIGHT_FORMATS = ("int4", "int8", "fp4e2m1", "fp4e3m0", "fp4e1m2")  # DitWeightFormat's order


class _GemmIO(ctypes.Structure):
    _fields_ = [("m", ctypes.c_int64), ("k", ctypes.c_int32), ("n", ctypes.c_int32), ("io_type", ctypes.c_int32),
                ("x", ctypes.c_void_p), ("y", ctypes.c_void_p), ("bias", ctypes.c_void_p),
                ("hadamard", ctypes.c_void_p), ("rotation_block", ctypes.c_int32),
                ("act_mode", ctypes.c_int32), ("act_format", ctypes.c_int32), ("act_group_size", ctypes.c_int32),
                ("act_scale_table", ctypes.c_void_p), ("act_zero_table", ctypes.c_void_p),
                ("timestep_bucket", ctypes.c_void_p),
                ("rows_per_sample", ctypes.c_int64), ("workspace", ctypes.c_void_p)]


class _ScalarWeights(ctypes.Structure):
    _fields_ = [("codes", ctypes.c_void_p), ("scale", ctypes.c_void_p), ("group_size", ctypes.c_int32),
                ("format", ctypes.c_int32)]


class _VqWeights(ctypes.Structure):
    _fields_ = [("codebook", ctypes.c_void_p), ("assignments", ctypes.c_void_p), ("codewords", ctypes.c_int32),
                ("dim", ctypes.c_int32), ("index_bits", ctypes.c_int32)]


@dataclass(frozen=True)
class Activation:
    """The contract's activation fields; static ones need the scale table and each sample's bucket."""

    mode: str = "none"
    format: str = "none"
    group_size: int = 0
    scale_table: torch.Tensor | None = None  # [buckets] or [buckets, K / group_size]
    zero_table: torch.Tensor | None = None  # int8, uint4 activations only
    timestep_bucket: torch.Tensor | None = None


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


class KernelLibrary:
    def __init__(self, path: str | Path | None = None) -> None:
        path = Path(path or os.environ.get("DIT_EXPORT_KERNELS", DEFAULT_LIBRARY))
        if not path.is_file():
            raise UserError(f"kernel library {path} does not exist: build it with "
                            "`cmake -S plugins -B plugins/build && cmake --build plugins/build`")
        self.lib = ctypes.CDLL(str(path))
        self.lib.ditLastError.restype = ctypes.c_char_p
        self.lib.ditGemmWorkspaceSize.restype = ctypes.c_size_t
        for name in ("ditScalarGemm", "ditVqGemm", "ditQuantizeActivations", "ditCheckDevice"):
            getattr(self.lib, name).restype = ctypes.c_int32

    def _check(self, status: int) -> None:
        if status:
            raise RuntimeError(self.lib.ditLastError().decode())

    def check_device(self) -> None:
        self._check(self.lib.ditCheckDevice())

    def _io(self, x: torch.Tensor, n: int, bias, hadamard, act: Activation):
        if not x.is_cuda or x.dim() != 2 or x.dtype not in (torch.float32, torch.float16):
            raise ValueError("x must be a 2-D float32 or float16 CUDA tensor")
        m, k = x.shape
        y = torch.empty(m, n, dtype=x.dtype, device=x.device)
        keep = [x.contiguous(), y]
        bucket = act.timestep_bucket
        io = _GemmIO(m=m, k=k, n=n, io_type=0 if x.dtype == torch.float32 else 1, x=_ptr(keep[0]), y=_ptr(y),
                     bias=_ptr(bias), hadamard=_ptr(hadamard),
                     rotation_block=0 if hadamard is None else hadamard.shape[0],
                     act_mode=ACT_MODES.index(act.mode), act_format=ACT_FORMATS.index(act.format),
                     act_group_size=act.group_size, act_scale_table=_ptr(act.scale_table),
                     act_zero_table=_ptr(act.zero_table),
                     timestep_bucket=_ptr(bucket), rows_per_sample=m // len(bucket) if bucket is not None else 1)
        workspace = torch.empty(max(1, self.lib.ditGemmWorkspaceSize(ctypes.byref(io))), dtype=torch.uint8,
                                device=x.device)
        io.workspace = workspace.data_ptr()
        return io, y, keep + [workspace]

    def scalar_gemm(self, x: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor, group_size: int, fmt: str,
                    bias: torch.Tensor | None = None, hadamard: torch.Tensor | None = None,
                    act: Activation = Activation()) -> torch.Tensor:
        io, y, _keep = self._io(x, scale.shape[1], bias, hadamard, act)
        weights = _ScalarWeights(codes=_ptr(codes), scale=_ptr(scale), group_size=group_size,
                                 format=WEIGHT_FORMATS.index(fmt))
        self._check(self.lib.ditScalarGemm(ctypes.byref(io), ctypes.byref(weights),
                                           ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)))
        return y

    def vq_gemm(self, x: torch.Tensor, codebook: torch.Tensor, assignments: torch.Tensor, n: int, index_bits: int,
                bias: torch.Tensor | None = None, act: Activation = Activation()) -> torch.Tensor:
        io, y, _keep = self._io(x, n, bias, None, act)
        weights = _VqWeights(codebook=_ptr(codebook), assignments=_ptr(assignments), codewords=codebook.shape[0],
                             dim=codebook.shape[1], index_bits=index_bits)
        self._check(self.lib.ditVqGemm(ctypes.byref(io), ctypes.byref(weights),
                                       ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)))
        return y
