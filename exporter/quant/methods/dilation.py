"""DilateQuant's weight dilation for DiT blocks: an exactly equivalent rescaling of input channels
that shrinks activation outliers without widening any weight quantization range.

For a Linear y = x W^T with W [N, K], scaling input channel k by s_k (x_k / s_k, W[:, k] s_k)
leaves y unchanged. The layer's weight range stays as it was as long as no column grows past
the largest weight of the layer: input channels whose weights do not reach it ("unsaturated")
have room, s_k <= max |W| / max_n |W[n, k]|. (Bounding by every row's range in k's group
instead leaves no room at all in a DiT: with hundreds of rows, nearly every column holds some
row's group maximum.) Within that bound, s_k brings channel k's activation maximum down towards
the median channel's:

    s_k = clamp(a_k / median(a), 1, headroom_k)        a_k = max |x_k| over the calibration set

In a diffusers DiT block (BasicTransformerBlock, adaLN-Zero) the division x / s is absorbed, so
the block computes exactly what it did:

    to_q / to_k / to_v input   norm1(x) (1 + scale_msa) + shift_msa: the rows of norm1.linear that
                               produce scale_msa and shift_msa (one s for the three layers)
    to_out input               the attention output, linear in V: the rows of to_v (and its bias)
    ff.net[0].proj input       norm3(x) (1 + scale_mlp) + shift_mlp: norm1.linear's mlp rows
    ff.net[2] input            after GELU: nothing to absorb into, left as it is

Dividing (1 + scale) by s is scale' = (scale + 1) / s - 1, and shift' = shift / s: both affine in
norm1.linear's output, so its rows and biases take it.
"""

from __future__ import annotations

import torch
from torch import nn

# Order of adaLN-Zero's chunks of norm1.linear's output (diffusers AdaLayerNormZero).
SHIFT_MSA, SCALE_MSA, GATE_MSA, SHIFT_MLP, SCALE_MLP, GATE_MLP = range(6)


def headroom(weights: list[torch.Tensor]) -> torch.Tensor:
    """Largest s_k per input channel that keeps each layer's weight range, over the layers that
    share the input ([N_i, K] each)."""
    room = None
    for w in weights:
        a = w.detach().abs().float()
        layer = a.max() / a.amax(0).clamp_min(torch.finfo(torch.float32).tiny)
        room = layer if room is None else torch.minimum(room, layer)
    return room


def dilation_factors(act_max: torch.Tensor, weights: list[torch.Tensor]) -> torch.Tensor:
    """s [K] >= 1 for channels whose activation maximum exceeds the median channel's."""
    target = act_max.median().clamp_min(torch.finfo(torch.float32).tiny)
    wanted = (act_max / target).clamp_min(1.0)
    return torch.minimum(wanted, headroom(weights).clamp_min(1.0))


def _scale_columns(linear: nn.Linear, s: torch.Tensor) -> None:
    linear.weight.data.mul_(s.to(linear.weight.dtype)[None, :])


def _divide_rows(linear: nn.Linear, rows: slice, s: torch.Tensor, add_one: bool = False) -> None:
    """Output rows of ``linear`` divided by s; with add_one, (out + 1) / s - 1 instead."""
    s = s.to(linear.weight.dtype)
    linear.weight.data[rows] /= s[:, None]
    if linear.bias is not None:
        bias = linear.bias.data[rows]
        linear.bias.data[rows] = (bias + 1) / s - 1 if add_one else bias / s


def dilate_block(block: nn.Module, act_max: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Dilates a BasicTransformerBlock in place. ``act_max`` holds the per-channel activation
    maxima of the inputs of "attn1.to_q", "attn1.to_out.0" and "ff.net.0.proj"; returns the
    factors applied per input."""
    d = block.norm1.linear.out_features // 6
    chunk = lambda i: slice(i * d, (i + 1) * d)  # noqa: E731
    attn = block.attn1
    qkv = [attn.to_q, attn.to_k, attn.to_v]
    s_qkv = dilation_factors(act_max["attn1.to_q"], [m.weight for m in qkv])
    for m in qkv:
        _scale_columns(m, s_qkv)
    _divide_rows(block.norm1.linear, chunk(SHIFT_MSA), s_qkv)
    _divide_rows(block.norm1.linear, chunk(SCALE_MSA), s_qkv, add_one=True)

    out = attn.to_out[0]
    s_out = dilation_factors(act_max["attn1.to_out.0"], [out.weight])
    _scale_columns(out, s_out)
    _divide_rows(attn.to_v, slice(0, attn.to_v.out_features), s_out)

    fc1 = block.ff.net[0].proj
    s_fc1 = dilation_factors(act_max["ff.net.0.proj"], [fc1.weight])
    _scale_columns(fc1, s_fc1)
    _divide_rows(block.norm1.linear, chunk(SHIFT_MLP), s_fc1)
    _divide_rows(block.norm1.linear, chunk(SCALE_MLP), s_fc1, add_one=True)
    return {"attn1.to_q": s_qkv, "attn1.to_out.0": s_out, "ff.net.0.proj": s_fc1}


DILATED_INPUTS = ("attn1.to_q", "attn1.to_out.0", "ff.net.0.proj")


@torch.no_grad()
def channel_maxima(block: nn.Module, run) -> dict[str, torch.Tensor]:
    """max |x_k| of the dilated layers' inputs while ``run()`` drives the block."""
    maxima: dict[str, torch.Tensor] = {}

    def record(name):
        def hook(_m, inputs, _out):
            x = inputs[0].detach().abs().float().reshape(-1, inputs[0].shape[-1]).amax(0)
            maxima[name] = x if name not in maxima else torch.maximum(maxima[name], x)
        return hook

    handles = [block.get_submodule(name).register_forward_hook(record(name)) for name in DILATED_INPUTS]
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return maxima
