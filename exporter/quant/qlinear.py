"""Quantized Linear layers (simulated quantization over real integer codes) and the activation
quantizers that feed them.

A QuantLinear keeps the integer weight codes, their scales and zero-points (what the checkpoint
stores, packed) and computes with the dequantized weight. Its input is quantized either

- statically: one scale per timestep bucket, the bucket picked from the timestep of the forward
  pass in progress (``TimestepContext``), per sample; or
- dynamically: scale and zero-point computed from the activation itself per token (and per group
  of channels), as Q-DiT does; or, for FP4 on fine groups, a float per token times m 2**t per
  group of channels (exporter/numerics/fp4_fine_groups.py), the operands of an FP8 MMA.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from exporter.numerics import fp4_fine_groups, two_level_activations
from exporter.numerics.hadamard import rotate
from exporter.numerics.primitives import QuantFormat, activation_group, choose_qparams, dequantize, fake_quantize

if TYPE_CHECKING:
    from exporter.quant.recipes import ActivationSpec


class TimestepContext:
    """The timestep [B] of the transformer forward in progress, recorded by a pre-hook."""

    def __init__(self) -> None:
        self.timestep: torch.Tensor | None = None

    def attach(self, transformer: nn.Module) -> None:
        transformer.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, _module, args, kwargs):
        t = kwargs["timestep"] if "timestep" in kwargs else args[1]
        self.timestep = torch.as_tensor(t).reshape(-1).long()

    def current(self, batch: int) -> torch.Tensor:
        if self.timestep is None:
            raise RuntimeError("per-timestep activation scales need the transformer's timestep")
        return self.timestep.expand(batch) if self.timestep.numel() == 1 else self.timestep


class StaticActivationQuant(nn.Module):
    """Scale and zero-point per timestep bucket, for the whole token (tables [n_buckets]) or per
    group of channels (tables [n_buckets, groups], groups dividing the channels evenly).
    ``two_level``: the group scales are on the two-level grid s[b] f[b, g]
    (exporter/numerics/two_level_activations.py), trained through it."""

    def __init__(self, fmt: QuantFormat, scale: torch.Tensor, zero: torch.Tensor, bucket_of_t: torch.Tensor,
                 context: TimestepContext, two_level: bool = False) -> None:
        super().__init__()
        if scale.shape != zero.shape or scale.dim() not in (1, 2):
            raise ValueError(f"static activation tables must be [buckets] or [buckets, groups], got "
                             f"{tuple(scale.shape)} and {tuple(zero.shape)}")
        if two_level and scale.dim() != 2:
            raise ValueError("two-level activation scales need channel groups: tables [buckets, groups]")
        self.fmt, self.context, self.two_level = fmt, context, two_level
        self.register_buffer("scale", scale.float())
        self.register_buffer("zero", zero.float())
        self.register_buffer("bucket_of_t", bucket_of_t.long())
        self.learned_log_scale: nn.Parameter | None = None  # set while the scales are trained (dilatequant.py)

    @property
    def groups(self) -> int:
        """Channel groups per token with their own scale (1: the whole token)."""
        return 1 if self.scale.dim() == 1 else self.scale.shape[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bucket = self.bucket_of_t[self.context.current(x.shape[0])]
        grouped = x.reshape(*x.shape[:-1], self.groups, -1)  # [B, ..., G, K / G]
        shape = (x.shape[0],) + (1,) * (x.dim() - 2) + (self.groups, 1)
        z = self.zero[bucket].reshape(shape)
        if self.learned_log_scale is not None:
            # Straight-through rounding, gradients to the scale as in LSQ (clamped values: the bound).
            table = self.learned_log_scale.exp()
            s = (two_level_activations.straight_through(table) if self.two_level else table)[bucket].reshape(shape)
            y = grouped / s + z
            q = torch.clamp(y + (torch.round(y) - y).detach(), self.fmt.qmin, self.fmt.qmax)
        else:
            s = self.scale[bucket].reshape(shape)
            q = self.fmt.round(grouped / s + z)
        return ((q - z) * s).reshape(x.shape).to(x.dtype)


class DynamicActivationQuant(nn.Module):
    """Scale and zero-point from each token's own range, per group of ``group_size`` channels."""

    def __init__(self, fmt: QuantFormat, group_size: int) -> None:
        super().__init__()
        self.fmt, self.group_size = fmt, group_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale, zero = choose_qparams(x, self.fmt, self.group_size)
        return fake_quantize(x, scale, zero, self.fmt, self.group_size)


class FineGroupActivationQuant(nn.Module):
    """FP4 E2M1 on fine group scales, from each token itself: s = max|x| / (6 * 2**t_max) per
    token, a multiplier m 2**t per group of ``group_size`` channels (the smallest at which the
    group does not saturate), exactly fp4_fine_groups.quantize then dequantize; what
    activation_quant.quantize_rows gives the FP8 GEMM as E4M3 operands."""

    def __init__(self, group_size: int) -> None:
        super().__init__()
        if group_size <= 0:
            raise ValueError(f"fine activation groups need a group size > 0, not {group_size}")
        self.fmt, self.group_size = fp4_fine_groups.FORMAT, group_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = x.shape[-1]
        rows = x.reshape(-1, k).float()
        codes, level, s = fp4_fine_groups.quantize(rows, activation_group(self.group_size, k))
        return fp4_fine_groups.dequantize(codes, level, s).reshape(x.shape).to(x.dtype)


class DecodedLinear(nn.Module):
    """y = act(prepare(x)) W^T + b: a Linear whose weight W [N, K] is decoded once from its
    quantized form into the buffer ``weight``, which each kind of layer sets from its own."""

    rotation_block = 0  # the Hadamard block of the input rotation (0: none)

    def __init__(self, in_features: int, out_features: int, bias: torch.Tensor | None,
                 act: nn.Module | None) -> None:
        super().__init__()
        self.in_features, self.out_features, self.act = in_features, out_features, act
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """The input as the layer's quantizer sees it (as it is, unless a kind of layer transforms it)."""
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prepare(x)
        if self.act is not None:
            x = self.act(x)
        return F.linear(x, self.weight.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))


class QuantLinear(DecodedLinear):
    """y = act(x R) (W R)^T + b, where the codes hold W R quantized and R is a block-diagonal
    Hadamard rotation with blocks of ``rotation_block`` channels (0: no rotation, R = I)."""

    def __init__(self, codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, fmt: QuantFormat,
                 group_size: int, bias: torch.Tensor | None, act: nn.Module | None = None,
                 rotation_block: int = 0) -> None:
        super().__init__(codes.shape[1], codes.shape[0], bias, act)
        self.fmt, self.group_size = fmt, group_size
        self.rotation_block = rotation_block
        self.register_buffer("codes", codes)
        self.register_buffer("w_scale", scale.float())
        self.register_buffer("w_zero", zero.float())
        self.register_buffer("weight", dequantize(codes, self.w_scale, self.w_zero, fmt, group_size), persistent=False)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return rotate(x, self.rotation_block) if self.rotation_block else x

    def extra_repr(self) -> str:
        rotation = f", hadamard={self.rotation_block}" if self.rotation_block else ""
        return f"{self.in_features}->{self.out_features}, {self.fmt.name}, group={self.group_size}{rotation}"


def dynamic_activation(spec: ActivationSpec, group: int) -> nn.Module:
    """The dynamic quantizer of a layer's input, per group of ``group`` channels."""
    if spec.scales == "e4m3-groups":
        return FineGroupActivationQuant(group)
    return DynamicActivationQuant(spec.format, group)
