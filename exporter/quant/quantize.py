"""Quantizing a DiT: ``quantize_model`` hands the recipe to the block driver of its kind of
weights (``QUANTIZERS``; codebooks: exporter/quant/methods/vq4dit.py).

Integer and FP4 weights, block by block over the calibration set, GPTQ-style: for each
transformer block, in order, run the calibration inputs (as produced by the blocks already
quantized) through it, recording for every targeted Linear its input range per timestep bucket
and, for GPTQ, its input Hessian; quantize those Linears' weights; set up their activation
quantizers; then run the quantized block to produce the next block's inputs. Linears outside the
blocks (final layer) are handled the same way in a last pass over the whole model.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from exporter.models.placement import CPU, Placement, placed
from exporter.numerics import two_level_activations
from exporter.numerics.fp4_groups import pow2_scales
from exporter.numerics.hadamard import block_size_for, rotate, rotate_linear_weight
from exporter.numerics.primitives import (
    PER_CHANNEL,
    QuantFormat,
    activation_group,
    choose_qparams,
    qparams_from_range,
    quantize,
    search_clip_ratio,
)
from exporter.numerics.two_level import two_level_scales
from exporter.progress import Progress
from exporter.quant.activation_store import BatchStore, MemoryBudget
from exporter.quant.block_run import BlockRun
from exporter.quant.calibration import CalibrationSet
from exporter.quant.journal import BlockJournal
from exporter.quant.methods.dilatequant import train_activation_scales
from exporter.quant.methods.dilation import channel_maxima, dilate_block
from exporter.quant.methods.gptq import HessianAccumulator, SharedProducts, gptq_quantize
from exporter.quant.methods.static_clipping import ClipSearch
from exporter.quant.methods.vq4dit import vq_quantize_model
from exporter.quant.module_tree import replace_module
from exporter.quant.policy import linear_roles
from exporter.quant.qlinear import QuantLinear, StaticActivationQuant, TimestepContext, dynamic_activation
from exporter.quant.quantized_model import QuantizedDiT, TimestepBuckets
from exporter.quant.recipes import Recipe
from exporter.quant.weight_configs import Fp4Weights, IntWeights, ScalarWeights, VqWeights

BATCH = 256


@dataclass
class LayerStats:
    """Per-bucket and per-channel input range of one Linear ([buckets, K] each), and its Hessian
    when GPTQ needs it."""

    lo: torch.Tensor
    hi: torch.Tensor
    hessian: HessianAccumulator | None = None

    @classmethod
    def empty(cls, buckets: int, channels: int, hessian: SharedProducts | None) -> "LayerStats":
        """No ranges yet; a Hessian accumulator sharing ``hessian``'s products, when given."""
        return cls(torch.full((buckets, channels), float("inf")), torch.full((buckets, channels), -float("inf")),
                   HessianAccumulator(channels, hessian) if hessian is not None else None)

    def add(self, x: torch.Tensor, buckets: torch.Tensor) -> None:
        flat = x.detach().float().reshape(x.shape[0], -1, x.shape[-1])
        index = buckets[:, None].expand(-1, x.shape[-1])
        self.lo.scatter_reduce_(0, index, flat.amin(1), "amin")
        self.hi.scatter_reduce_(0, index, flat.amax(1), "amax")
        if self.hessian is not None:
            self.hessian.add(x)

    def ranges(self, group_size: int, per_timestep: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Range of each bucket ([buckets]: whole tokens, group_size PER_CHANNEL) or of each
        bucket's groups of ``group_size`` channels ([buckets, K / group_size]); the same for every
        bucket unless ``per_timestep``."""
        buckets, k = self.lo.shape
        g = activation_group(group_size, k)
        lo, hi = self.lo.reshape(buckets, k // g, g).amin(2), self.hi.reshape(buckets, k // g, g).amax(2)
        if not per_timestep:
            lo, hi = lo.amin(0, keepdim=True).expand(buckets, -1), hi.amax(0, keepdim=True).expand(buckets, -1)
        return (lo[:, 0], hi[:, 0]) if g == k else (lo, hi)


def quantize_weight(w: torch.Tensor, spec: ScalarWeights, group: int,
                    hessian: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, QuantFormat]:
    """Codes [N, K], scales and zero-points [N, groups] and the format of an integer or FP4 weight
    [N, K] in groups of ``group``: GPTQ with ``hessian`` when the spec says gptq, else
    round-to-nearest; float group scales, two-level ones (exporter/numerics/two_level.py) or FP4
    power-of-two groups (exporter/numerics/fp4_groups.py)."""
    fmt = spec.format_for(w)
    two_level, pow2 = spec.scales == "two-level", spec.scales == "pow2-groups"
    if spec.method == "gptq":
        codes, scale, zero = gptq_quantize(w, hessian, fmt, group, clip_search=spec.clip_search, two_level=two_level,
                                           pow2_groups=pow2)
        return codes, scale, zero, fmt
    if two_level or pow2:
        scale = two_level_scales(w, group, spec.clip_search) if two_level else pow2_scales(w, group, fmt.kind,
                                                                                             spec.clip_search)
        zero = torch.zeros_like(scale)
    else:
        ratio = search_clip_ratio(w, fmt, group) if spec.clip_search else 1.0
        scale, zero = choose_qparams(w, fmt, group, clip_ratio=ratio)
    return quantize(w, scale, zero, fmt, group), scale, zero, fmt


def quantize_linear(linear: nn.Linear, recipe: Recipe, stats: LayerStats, quantize_input: bool, block: int,
                    buckets: TimestepBuckets, context: TimestepContext, name: str = "",
                    act_range: tuple[torch.Tensor, torch.Tensor] | None = None) -> QuantLinear:
    """``block``: the Hadamard block of the input's rotation (rotation_block; 0: none), which the
    statistics were observed with. ``act_range``: for static activations, the range of each
    timestep bucket (and channel group) when it is not the calibrated min/max (clip search)."""
    spec = recipe.weight
    group, act_group = recipe.groups_of(name)
    w = rotate_linear_weight(linear.weight.detach().float(), block) if block else linear.weight.detach().float()
    codes, scale, zero, fmt = quantize_weight(w, spec, group, stats.hessian.h if spec.method == "gptq" else None)
    act = None
    a = recipe.activation
    if quantize_input and a is not None:
        if a.mode == "dynamic":
            act = dynamic_activation(a, act_group)
        else:
            lo, hi = act_range if act_range is not None else stats.ranges(act_group, a.per_timestep)
            a_scale, a_zero = qparams_from_range(lo, hi, a.format)
            two_level = a.scales == "two-level"
            if two_level and a_scale.dim() == 1:  # one group spans the layer: tables [buckets, 1]
                a_scale, a_zero = a_scale[:, None], a_zero[:, None]
            act = StaticActivationQuant(a.format, two_level_activations.project(a_scale) if two_level else a_scale,
                                        a_zero, buckets.bucket_of_t, context, two_level=two_level)
    return QuantLinear(codes, scale, zero, fmt, group, linear.bias, act, rotation_block=block)


def _distil(block: nn.Module, teacher: nn.Module, hidden: BatchStore, batches: list, context: TimestepContext,
            iterations: int, advance, targets: BatchStore) -> list[float]:
    """DilateQuant's temporal parallel quantizer on one block (exporter/quant/methods/dilatequant.py):
    ``targets`` (empty) receives the teacher's outputs."""
    for h, (_, t, y) in zip(hidden, batches):
        targets.append(teacher(h, timestep=t, class_labels=y))

    def forward(i: int) -> torch.Tensor:
        _, t, y = batches[i]
        context.timestep = t
        return block(hidden[i], timestep=t, class_labels=y)

    try:
        return train_activation_scales(block, targets, forward, iterations, advance=advance)
    finally:
        targets.close()


def rotation_block(recipe: Recipe, in_features: int, quantized_input: bool) -> int:
    """The Hadamard block of a layer's input rotation under ``recipe`` (0: none). A recipe with a
    fixed block rotates the activation quantizer's groups: only layers whose input it quantizes."""
    if not recipe.hadamard or (recipe.hadamard_block and not quantized_input):
        return 0
    block = min(recipe.hadamard_block or in_features, block_size_for(in_features))
    return block if block > 1 else 0


def _observe(targets: dict[str, nn.Linear], observers: dict, blocks: dict[str, int], run, current_buckets) -> None:
    """Runs ``run()`` with each target's input, as the quantized layer will see it (rotated by
    Hadamard blocks of ``blocks[name]`` channels when not 0), fed to ``observers[name].add(x, buckets)``."""
    handles = [targets[name].register_forward_hook(
        lambda _m, inp, _out, o=observer, b=blocks[name]: o.add(rotate(inp[0], b) if b else inp[0],
                                                                current_buckets()))
        for name, observer in observers.items()]
    try:
        run()
    finally:
        for h in handles:
            h.remove()


def _collect(targets: dict[str, nn.Linear], recipe: Recipe, blocks: dict[str, int], n_buckets: int, run,
             current_buckets) -> dict[str, LayerStats]:
    shared = SharedProducts() if recipe.weight.method == "gptq" else None
    stats = {name: LayerStats.empty(n_buckets, m.in_features, shared) for name, m in targets.items()}
    try:
        _observe(targets, stats, blocks, run, current_buckets)
    finally:
        if shared is not None:
            shared.forget()
    return stats


def _clipped_ranges(prefix: str, targets: dict[str, nn.Linear], stats: dict[str, LayerStats], recipe: Recipe,
                    blocks: dict[str, int], run, current_buckets) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Static activation ranges clipped where that lowers the calibration data's quantization
    error (static_clipping.py): a second pass over the data."""
    a = recipe.activation
    searches = {name: ClipSearch(*stats[name].ranges(recipe.groups_of(prefix + name)[1], a.per_timestep), a.format)
                for name in targets}
    _observe(targets, searches, blocks, run, current_buckets)
    return {name: search.clipped() for name, search in searches.items()}


@torch.no_grad()
def quantize_scalar_model(fp_transformer: nn.Module, recipe: Recipe, calib: CalibrationSet, buckets: TimestepBuckets,
                          run: BlockRun = BlockRun()) -> QuantizedDiT:
    """The QuantizedDiT of a recipe with integer or FP4 weights (ScalarWeights): GPTQ-style, block
    by block over the calibration set, as the module docstring says. With a journal, the blocks it
    holds are rebuilt from it and each block finished here is written to it."""
    journal = run.journal
    model = copy.deepcopy(fp_transformer).eval()
    context = TimestepContext()
    context.attach(model)
    roles = {n: r for n, r in linear_roles(model).items() if r in recipe.policy.weights}
    quantized_roles: dict[str, str] = {}
    ranges: dict[str, tuple[list[float], list[float]]] = {}
    batches = list(calib.batches(BATCH))

    def current_buckets() -> torch.Tensor:
        return buckets.bucket_of_t[context.timestep]

    def quantize_targets(prefix: str, targets: dict[str, nn.Module], run) -> None:
        quantized_input = {n: roles[prefix + n] in recipe.policy.activations for n in targets}
        blocks = {n: rotation_block(recipe, m.in_features, quantized_input[n]) for n, m in targets.items()}
        stats = _collect(targets, recipe, blocks, buckets.count, run, current_buckets)
        a = recipe.activation
        clipped = {}
        if a is not None and a.mode == "static" and a.clip_search:
            static = {n: m for n, m in targets.items() if quantized_input[n]}
            clipped = _clipped_ranges(prefix, static, stats, recipe, blocks, run, current_buckets)
        for name, linear in targets.items():
            full = prefix + name
            replace_module(model, full, quantize_linear(linear, recipe, stats[name], quantized_input[name],
                                                     blocks[name], buckets, context, full, clipped.get(name)))
            quantized_roles[full] = roles[full]
            ranges[full] = tuple(r.tolist() for r in stats[name].ranges(PER_CHANNEL, per_timestep=True))

    blocks = model.transformer_blocks
    bar = Progress("calibrating blocks", len(blocks) + 1, enabled=run.progress)
    device = calib.x.device
    hidden = run.store(device)
    for x, _, _ in batches:
        hidden.append(model.pos_embed(x))

    def run_block(block: nn.Module, keep: bool) -> BatchStore | None:
        """The block over every input; with ``keep``, its outputs, which replace the inputs."""
        out = run.store(device) if keep else None
        for h, (_, t, y) in zip(hidden, batches):
            context.timestep = t  # a block alone: the transformer's pre-hook does not see it
            result = block(h, timestep=t, class_labels=y)
            if keep:
                out.append(result)
        if keep:
            hidden.close()
        return out

    losses: dict[str, list[float]] = {}
    distil_bar = Progress("distilling activation scales (iterations)", len(blocks) * recipe.kd_iterations,
                          enabled=run.progress and recipe.kd_iterations > 0)
    resumed = run.finished_blocks()
    for b, block in enumerate(blocks):
        prefix = f"transformer_blocks.{b}."
        if b < resumed:
            block_ranges, block_losses = journal.restore(b, prefix, model, buckets.bucket_of_t, context)
            ranges.update(block_ranges)
            quantized_roles.update({n: r for n, r in roles.items() if n.startswith(prefix)})
            if block_losses is not None:
                losses[f"block {b}"] = block_losses
            distil_bar.advance(recipe.kd_iterations)
            hidden = run_block(block, True)
            bar.advance()
            continue
        if recipe.dilation:
            dilate_block(block, channel_maxima(block, lambda: run_block(block, False)))
        teacher = copy.deepcopy(block) if recipe.kd_iterations else None
        targets = {n[len(prefix):]: model.get_submodule(n) for n in roles if n.startswith(prefix)}
        if targets:
            quantize_targets(prefix, targets, lambda: run_block(block, False))
        if teacher is not None and targets:
            losses[f"block {b}"] = _distil(block, teacher, hidden, batches, context, recipe.kd_iterations,
                                           distil_bar.advance, run.store(device))
        if journal is not None:
            journal.record(b, prefix, model, recipe.weight, ranges, losses.get(f"block {b}"))
        hidden = run_block(block, True)
        bar.advance()

    hidden.close()
    outer = {n: model.get_submodule(n) for n in roles if not n.startswith("transformer_blocks.")}
    if outer:
        def run_model() -> None:
            for x, t, y in batches:
                model(x, t, y)  # the context records t
        quantize_targets("", outer, run_model)
    bar.advance()
    return QuantizedDiT(model, context, recipe, buckets, quantized_roles, ranges, losses)


# The block driver of each kind of weight config: quantizes the model for a recipe with those weights, on
# the device its FP model and calibration data are on, making any tensor there.
QUANTIZERS = {IntWeights: quantize_scalar_model, Fp4Weights: quantize_scalar_model, VqWeights: vq_quantize_model}


def quantize_model(fp_transformer: nn.Module, recipe: Recipe, calib: CalibrationSet,
                   num_train_timesteps: int, n_buckets: int | None = None, progress: bool = True,
                   device: torch.device = CPU.device, journal: BlockJournal | None = None,
                   memory: MemoryBudget | None = None) -> QuantizedDiT:
    """The quantized model, computed on ``device`` in float32 (float64 where GPTQ needs it) and left
    there; ``fp_transformer`` is not changed (a copy runs on the device when it is elsewhere). With
    a ``journal`` (journal.py), finished blocks are written to it and the ones it holds reused;
    ``memory`` bounds the block inputs kept in memory (activation_store.py)."""
    with torch.device(device):
        buckets = TimestepBuckets.build(calib.timesteps, n_buckets, num_train_timesteps)
        fp = placed(fp_transformer, Placement(torch.device(device), torch.float32))
        return QUANTIZERS[type(recipe.weight)](fp, recipe, calib.to(device), buckets,
                                               BlockRun(progress, journal, memory))
