"""VQ4DiT calibration: codebook weights fitted block by block against the FP model, without data.

Per quantized Linear: a codebook from k-means over its weight sub-vectors (VQ4DiT clamps the
codeword count to a quarter of the sub-vectors), and for every sub-vector a candidate set of its
``candidates`` nearest codewords with softmax ratios, initialised from log(d_farthest / d_i).
The sub-vector is rebuilt as the ratio-weighted sum of its candidates.

Per transformer block: the block with its Linears in that soft form (the student) is trained to
reproduce the FP block's output (the teacher), both fed the FP model's own block inputs, on
L = Ld + ratio_weight * Lr with Ld the MSE relative to the teacher output's mean square and
Lr = n * mean(r (1 - r)) over the ratios still free, which pushes them to 0 or 1. RMSprop, one
learning rate for the ratio logits and one for codebooks and biases (VQ4DiT: 5e-2 and 1e-4). A
sub-vector's assignment freezes when its top ratio passes ``freeze_at``; a layer's codebook starts
training once ``codebook_after`` of its sub-vectors are frozen. At the end every sub-vector takes
its top candidate, and codebooks are rounded to FP16, the precision they are stored in.

Zero data: the block inputs come from the calibration set, which is the FP model's own sampler
trajectories from Gaussian noise and random class labels (exporter/quant/calibration.py); VQ4DiT
draws new trajectories every iteration, here minibatches are drawn from those 32 trajectories x
every sampler step. Linears outside the blocks (only when a policy asks for them) get k-means
codebooks with nearest-codeword assignments.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from exporter.numerics.vq import VqFormat, from_subvectors, kmeans, nearest, subvectors
from exporter.progress import Progress
from exporter.quant.module_tree import replace_module
from exporter.quant.policy import linear_roles
from exporter.quant.qlinear import TimestepContext, dynamic_activation
from exporter.quant.quantized_model import QuantizedDiT
from exporter.quant.vq_linear import VqLinear


@dataclass(frozen=True)
class Vq4DitOptions:
    candidates: int = 2
    iterations: int = 300  # per block; 0 keeps k-means with nearest assignments
    batch: int = 32
    kmeans_iterations: int = 100
    lr_ratios: float = 5e-2
    lr_codebook: float = 1e-4
    ratio_weight: float = 0.1
    freeze_at: float = 0.99
    codebook_after: float = 0.99
    seed: int = 0


class SoftVqLinear(nn.Module):
    """A Linear whose weight is rebuilt from its codebook through candidate ratios (trainable)."""

    def __init__(self, linear: nn.Linear, fmt: VqFormat, options: Vq4DitOptions) -> None:
        super().__init__()
        w = linear.weight.detach().float()
        self.out_features, self.in_features = w.shape
        vectors = subvectors(w, fmt.dim)
        self.subvector_shape = vectors.shape
        points = vectors.reshape(-1, fmt.dim)
        fmt = fmt.for_layer(len(points))
        codebook = kmeans(points, fmt.codewords, options.kmeans_iterations, options.seed)
        n = min(options.candidates, fmt.codewords)
        candidates, d2 = nearest(points, codebook, n)
        distance = d2.sqrt().clamp_min(1e-12)
        self.codebook = nn.Parameter(codebook, requires_grad=False)
        self.logits = nn.Parameter(torch.log(distance[:, -1:] / distance))
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().float().clone())
        self.register_buffer("candidates", candidates)
        self.register_buffer("frozen", torch.zeros(len(points), dtype=torch.bool))

    def ratios(self) -> torch.Tensor:
        soft = self.logits.softmax(1)
        hard = F.one_hot(self.logits.argmax(1), soft.shape[1]).to(soft.dtype)
        return torch.where(self.frozen[:, None], hard, soft)

    def weight(self) -> torch.Tensor:
        vectors = (self.ratios()[..., None] * self.codebook[self.candidates]).sum(1)
        return from_subvectors(vectors.reshape(self.subvector_shape), self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight(), self.bias)

    def regularizer(self) -> torch.Tensor:
        free = self.logits[~self.frozen].softmax(1)
        return free.shape[1] * (free * (1 - free)).mean() if len(free) else self.logits.new_zeros(())

    @torch.no_grad()
    def update_frozen(self, options: Vq4DitOptions) -> None:
        self.frozen |= self.logits.softmax(1).amax(1) > options.freeze_at
        if self.frozen.float().mean() >= options.codebook_after:
            self.codebook.requires_grad_(True)

    @torch.no_grad()
    def hard(self) -> VqLinear:
        chosen = self.candidates.gather(1, self.logits.argmax(1, keepdim=True))[:, 0]
        codebook = self.codebook.detach().half().float()
        return VqLinear(codebook, chosen.reshape(self.subvector_shape[:2]), self.in_features, self.bias)


def nearest_vq(linear: nn.Linear, fmt: VqFormat, options: Vq4DitOptions) -> VqLinear:
    """Plain k-means VQ: every sub-vector takes its nearest codeword (the VQ4DiT paper's baseline)."""
    return SoftVqLinear(linear, fmt, Vq4DitOptions(candidates=1, kmeans_iterations=options.kmeans_iterations,
                                                   seed=options.seed)).hard()


def calibrate_block(teacher: nn.Module, targets: dict[str, nn.Linear], fmt: VqFormat,
                    inputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor], options: Vq4DitOptions,
                    bar: Progress | None = None) -> tuple[dict[str, VqLinear], list[float]]:
    """VQ4DiT on one block: ``targets`` are the block's Linears by their name inside it; inputs
    (hidden [P, tokens, C], timestep [P], class_labels [P]) are what the FP block receives.
    Returns the hard VqLinears and the loss at every iteration."""
    hidden, t, y = inputs
    with torch.no_grad():
        target = torch.cat([teacher(h, timestep=tt, class_labels=yy)
                            for h, tt, yy in zip(hidden.split(256), t.split(256), y.split(256))])
    student = copy.deepcopy(teacher)
    soft = {name: SoftVqLinear(linear, fmt, options) for name, linear in targets.items()}
    for name, module in soft.items():
        replace_module(student, name, module)
    student.requires_grad_(False)
    for module in soft.values():
        module.logits.requires_grad_(True)
        if module.bias is not None:
            module.bias.requires_grad_(True)
    optimizer = torch.optim.RMSprop([
        {"params": [m.logits for m in soft.values()], "lr": options.lr_ratios},
        {"params": [m.codebook for m in soft.values()] + [m.bias for m in soft.values() if m.bias is not None],
         "lr": options.lr_codebook},
    ])
    gen = torch.Generator(device="cpu").manual_seed(options.seed)
    losses = []
    for _ in range(options.iterations):
        pick = torch.randint(len(hidden), (min(options.batch, len(hidden)),), generator=gen, device="cpu")
        out = student(hidden[pick], timestep=t[pick], class_labels=y[pick])
        reference = target[pick]
        distillation = (out - reference).pow(2).mean() / reference.pow(2).mean().clamp_min(1e-12)
        regularizer = torch.stack([m.regularizer() for m in soft.values()]).mean()
        loss = distillation + options.ratio_weight * regularizer
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        for module in soft.values():
            module.update_frozen(options)
        losses.append(float(distillation.detach()))
        if bar is not None:
            bar.advance()
    return {name: module.hard() for name, module in soft.items()}, losses


@torch.no_grad()
def vq_quantize_model(fp_transformer: nn.Module, recipe, calib, buckets, run):
    """The QuantizedDiT of a VQ recipe: each block's targeted Linears calibrated against the FP
    block on the FP model's own block inputs (VQ4DiT) or, with method kmeans, nearest codewords.
    ``run`` (exporter/quant/block_run.py): with a journal, the blocks it holds are rebuilt from it
    and each block finished here is written to it. The block inputs stay in one tensor on the
    device (VQ4DiT's batches draw from all of them); the run's memory budget does not apply."""
    journal = run.journal
    spec = recipe.weight
    fmt = spec.codebook_format
    iterations = spec.iterations if spec.method == "vq4dit" else 0
    options = Vq4DitOptions(candidates=spec.candidates, iterations=iterations)
    model = copy.deepcopy(fp_transformer).eval()
    context = TimestepContext()
    context.attach(model)
    roles = {n: r for n, r in linear_roles(model).items() if r in recipe.policy.weights}
    blocks = fp_transformer.transformer_blocks
    bar = Progress("calibrating VQ blocks (iterations)", len(blocks) * max(1, iterations), enabled=run.progress)
    hidden = torch.cat([fp_transformer.pos_embed(x) for x in calib.x.split(256)])
    losses: dict[str, list[float]] = {}
    resumed = run.finished_blocks()
    for b, teacher in enumerate(blocks):
        prefix = f"transformer_blocks.{b}."
        targets = {n[len(prefix):]: teacher.get_submodule(n[len(prefix):]) for n in roles if n.startswith(prefix)}
        if b < resumed:
            _, block_losses = journal.restore(b, prefix, model, buckets.bucket_of_t, context)
            if block_losses is not None:
                losses[f"block {b}"] = block_losses
            bar.advance(max(1, iterations))
            hard = {}  # rebuilt: only the FP block's outputs are still needed
        elif targets and iterations:
            with torch.enable_grad():
                hard, losses[f"block {b}"] = calibrate_block(teacher, targets, fmt, (hidden, calib.t, calib.y),
                                                             options, bar)
        else:
            hard = {name: nearest_vq(linear, fmt, options) for name, linear in targets.items()}
            bar.advance(max(1, iterations))
        for name, module in hard.items():
            replace_module(model, prefix + name, module)
        if journal is not None and b >= resumed:
            journal.record(b, prefix, model, recipe.weight, {}, losses.get(f"block {b}"))
        hidden = torch.cat([teacher(h, timestep=t, class_labels=y)
                            for h, t, y in zip(hidden.split(256), calib.t.split(256), calib.y.split(256))])
    for name in roles:
        if not name.startswith("transformer_blocks."):
            replace_module(model, name, nearest_vq(fp_transformer.get_submodule(name), fmt, options))
    if recipe.activation is not None:
        # Added after the weights are calibrated: per-token INT8 rounding error is small next to
        # the codebooks', and dynamic scales need no calibration.
        for name, role in roles.items():
            if role in recipe.policy.activations:
                model.get_submodule(name).act = dynamic_activation(recipe.activation, recipe.activation.group_size)
    return QuantizedDiT(model, context, recipe, buckets, roles, calibration_losses=losses)
