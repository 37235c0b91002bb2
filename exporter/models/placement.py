"""Where the FP model runs and in which dtype (--device, --dtype).

The FP model's forward passes (sampling, calibration, evaluation) run on the chosen device in the
dtype a user would sample it in there: float16 on a GPU, float32 on a CPU, unless --dtype says
otherwise. What quantization accumulates (ranges, Hessians, GPTQ, scale searches) stays float32 or
float64 whatever the model's dtype: the quantizers cast each input to float32 before they look at it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from exporter.errors import UserError

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
DEVICE_HELP = "auto (a CUDA GPU when PyTorch sees one, else the CPU), cpu, cuda or cuda:N"
DTYPE_HELP = "the FP model's dtype: float32, float16 or bfloat16 (default: float16 on a GPU, float32 on the CPU)"


@dataclass(frozen=True)
class Placement:
    device: torch.device
    dtype: torch.dtype

    @property
    def name(self) -> str:
        return f"{self.device} {str(self.dtype).removeprefix('torch.')}"


CPU = Placement(torch.device("cpu"), torch.float32)


def resolve_placement(device: str = "auto", dtype: str | None = None) -> Placement:
    """The placement --device and --dtype ask for; UserError (one line) for one this machine lacks."""
    if dtype is not None and dtype not in DTYPES:
        raise UserError(f"unknown dtype '{dtype}'; valid: {', '.join(DTYPES)}")
    if device == "auto":
        chosen = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            chosen = torch.device(device)
        except (RuntimeError, ValueError):
            raise UserError(f"unknown device '{device}'; valid: {DEVICE_HELP}") from None
        if chosen.type not in ("cpu", "cuda"):
            raise UserError(f"unknown device '{device}'; valid: {DEVICE_HELP}")
    if chosen.type == "cuda":
        if not torch.cuda.is_available():
            build = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise UserError(f"--device {device}: PyTorch sees no CUDA GPU here (torch {torch.__version__}, {build})")
        if chosen.index is not None and chosen.index >= torch.cuda.device_count():
            raise UserError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    default = torch.float16 if chosen.type == "cuda" else torch.float32
    return Placement(chosen, DTYPES[dtype] if dtype is not None else default)


def placed(module: torch.nn.Module, placement: Placement) -> torch.nn.Module:
    """``module`` on the placement's device and in its dtype: the module itself when it is there
    already, else a copy, so that the caller's model (the FP32 master that checkpoints are checked
    against and exported from) stays as it is."""
    if model_device(module) == placement.device and model_dtype(module) == placement.dtype:
        return module
    # nn.Module's to(): diffusers' override warns about float32-only modules even when a DiT has none.
    return torch.nn.Module.to(copy.deepcopy(module), placement.device, placement.dtype)


def model_dtype(module: torch.nn.Module) -> torch.dtype:
    return next(module.parameters()).dtype


def model_device(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


__all__ = ["CPU", "DEVICE_HELP", "DTYPES", "DTYPE_HELP", "Placement", "model_device", "model_dtype", "placed",
           "resolve_placement"]
