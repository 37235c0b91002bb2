"""Q-DiT's automatic granularity search: per-layer group sizes for weights and activations,
chosen by an evolutionary search under a budget, seeded with the uniform setting.

A configuration gives every quantized layer that quantizes its input a (weight group, activation
group) pair from the sizes in ``CANDIDATES`` that divide its input width. The budget is the
mean group size over all genes (Q-DiT: >= 128, a stand-in for bit operations): larger groups
store fewer scales and compute fewer rescalings. With two-level weight scales (w4a8) only the
weight groups are searched and activations stay per token, which keeps the kernel a pure INT8
MMA; the budget then counts the weight genes.

Q-DiT scores a candidate by the FID of 800 generated images against real ones (GPU-hours per
search). Here a candidate samples a few dozen images from fixed seeds and is scored by the
Fréchet distance of their features to the FP model's samples from the same seeds. Paired seeds
cancel most of the sampling noise that makes FID need hundreds of images: on the embedded model,
64 paired samples rank configurations like 1,000 do (RESULTS.md). An error in epsilon on
calibration inputs, the cheaper objective tried first, did not (Spearman 0.05 at 1,000 samples):
the distance follows a systematic drift of the samples that a mean squared error hardly sees.

Choosing the best of many candidates on the same seeds favours the ones those seeds flatter, so
the finalists (the best of the last generation and the uniform seed) are scored again on fresh
seeds and the winner is the lowest over both sets. None of these seeds is an evaluation seed.
Weights are quantized once per layer and group size with the recipe's method (GPTQ with
Hessians from the FP model's own inputs) and cached; a candidate then costs one sampling run.
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from exporter.evaluation.fidelity import FeatureStats, frechet_distance
from exporter.evaluation.sample_features import Features, sample_features
from exporter.models.loading import LoadedDiT
from exporter.models.sampling import SamplerConfig, balanced_labels, sample, sample_seeds
from exporter.numerics.primitives import PER_CHANNEL, dequantize
from exporter.progress import Progress
from exporter.quant.calibration import CalibrationSet
from exporter.quant.methods.gptq import HessianAccumulator, SharedProducts
from exporter.quant.policy import linear_roles
from exporter.quant.qlinear import DynamicActivationQuant
from exporter.quant.quantize import quantize_weight
from exporter.quant.recipes import Recipe

CANDIDATES = (32, 64, 128, 192, 288)
Config = dict[str, tuple[int, int]]  # layer -> (weight group, activation group)
SEARCH_PURPOSE = "the group-size search on this model"  # who needs the sample features, in errors
SEED_RUN = 1000  # the search samples from seed runs 1000 + options.seed; evaluations use low runs


@dataclass(frozen=True)
class SearchOptions:
    budget: float = 64.0  # mean group size over all genes, at least
    epochs: int = 6
    population: int = 12
    parents: int = 4
    mutation_probability: float = 0.1
    samples: int = 64  # paired samples per seed set (the selection set and the finalists' fresh set)
    finalists: int = 3  # best of the last generation scored again on fresh seeds, with the uniform seed
    inputs: int = 256  # calibration inputs for the GPTQ Hessians
    seed: int = 0


@dataclass
class SearchResult:
    config: Config
    objective: float  # over both seed sets
    seed_objective: float  # the uniform seed's, over both seed sets
    uniform: dict[int, float]  # selection objective of each uniform setting that fits the budget
    history: list[float] = field(default_factory=list)  # best selection objective after each epoch
    evaluations: int = 0  # sampling runs

    def to_dict(self) -> dict:
        return {"config": {k: list(v) for k, v in self.config.items()}, "objective": self.objective,
                "seed_objective": self.seed_objective, "uniform": {str(k): v for k, v in self.uniform.items()},
                "history": self.history, "evaluations": self.evaluations}


def choices(width: int) -> list[int]:
    """Candidate group sizes that divide a layer's input width (the whole width when none does)."""
    return [g for g in CANDIDATES if width % g == 0 and g <= width] or [width]


def mean_group(config: Config) -> float:
    """Mean over the searched genes: activation genes held per token (PER_CHANNEL) do not count."""
    genes = [g for pair in config.values() for g in pair if g != PER_CHANNEL]
    return sum(genes) / len(genes)


class _Searchable(nn.Module):
    """A Linear with cached quantized weights per group size and dynamic activation groups."""

    def __init__(self, linear: nn.Linear, weights: dict[int, torch.Tensor], act_format) -> None:
        super().__init__()
        self.weights, self.bias = weights, linear.bias
        self.act = {g: DynamicActivationQuant(act_format, g) for g in (*weights, PER_CHANNEL)}
        self.weight_group = self.act_group = next(iter(weights))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.act[self.act_group](x), self.weights[self.weight_group], self.bias)


def check_searchable(recipe: Recipe) -> None:
    if recipe.activation is None or recipe.activation.mode != "dynamic" or recipe.weight.kind != "int":
        raise ValueError("the group-size search takes integer weights with dynamic activations (e.g. w4a8)")


class GroupSearch:
    """The objective over configurations of one model and recipe (dynamic activations). With
    two-level weight scales only the weight groups are searched: activations stay per token
    (PER_CHANNEL genes, outside the budget), so the result keeps the recipe deployable."""

    def __init__(self, loaded: LoadedDiT, recipe: Recipe, calib: CalibrationSet, sampler: SamplerConfig,
                 options: SearchOptions, features: Features | None = None, progress: bool = True) -> None:
        check_searchable(recipe)
        self.weights_only = recipe.weight.scales == "two-level"
        if options.samples < 2:
            raise ValueError(f"the search compares at least 2 samples per seed set, got {options.samples}")
        self.options, self.sampler, self.scheduler_config = options, sampler, loaded.scheduler_config
        self.features = features or sample_features(loaded, SEARCH_PURPOSE)
        seeds = sample_seeds(SEED_RUN + options.seed, 2 * options.samples)
        self.seed_sets = (seeds[: options.samples], seeds[options.samples:])
        self.labels = balanced_labels(options.samples, int(loaded.transformer.config.num_embeds_ada_norm))
        idx = torch.linspace(0, len(calib) - 1, min(options.inputs, len(calib))).round().long()
        self.x, self.t, self.y = calib.x[idx], calib.t[idx], calib.y[idx]
        self.model = copy.deepcopy(loaded.transformer).eval()
        roles = linear_roles(self.model)
        names = [n for n, r in roles.items() if r in recipe.policy.weights and r in recipe.policy.activations]
        hessians = self._hessians(names) if recipe.weight.method == "gptq" else {}
        bar = Progress("group search: quantizing layers per group size", len(names), enabled=progress)
        self.layers: dict[str, _Searchable] = {}
        self.widths: dict[str, int] = {}
        for name in names:
            linear = self.model.get_submodule(name)
            weights = {g: self._quantized(linear.weight.detach().float(), recipe, g, hessians.get(name))
                       for g in choices(linear.in_features)}
            self.layers[name] = _Searchable(linear, weights, recipe.activation.format)
            self.widths[name] = linear.in_features
            parent, _, child = name.rpartition(".")
            setattr(self.model.get_submodule(parent) if parent else self.model, child, self.layers[name])
            bar.advance()
        self.reference = [self._sample_features(loaded.transformer, seeds) for seeds in self.seed_sets]
        self._seen: dict[tuple, list[np.ndarray | None]] = {}
        self.evaluations = 0

    def _hessians(self, names: list[str]) -> dict[str, torch.Tensor]:
        shared = SharedProducts()
        acc = {n: HessianAccumulator(self.model.get_submodule(n).in_features, shared) for n in names}
        hooks = [self.model.get_submodule(n).register_forward_hook(lambda _m, i, _o, a=acc[n]: a.add(i[0]))
                 for n in names]
        try:
            with torch.no_grad():
                self._outputs()
        finally:
            for h in hooks:
                h.remove()
        shared.forget()
        return {n: a.h for n, a in acc.items()}

    @staticmethod
    def _quantized(w: torch.Tensor, recipe: Recipe, group: int, hessian: torch.Tensor | None) -> torch.Tensor:
        codes, scale, zero, fmt = quantize_weight(w, recipe.weight, group, hessian)
        return dequantize(codes, scale, zero, fmt, group)

    def _outputs(self) -> torch.Tensor:
        return torch.cat([self.model(x, t, y).sample for x, t, y in zip(self.x.split(64), self.t.split(64),
                                                                       self.y.split(64))])

    def _sample_features(self, model: nn.Module, seeds: list[int]) -> np.ndarray:
        return self.features(sample(model, self.scheduler_config, self.labels, seeds, self.sampler, progress=False))

    def _candidate_features(self, config: Config, seed_set: int) -> np.ndarray:
        seen = self._seen.setdefault(tuple(sorted(config.items())), [None, None])
        if seen[seed_set] is None:
            for name, (wg, ag) in config.items():
                self.layers[name].weight_group, self.layers[name].act_group = wg, ag
            with torch.no_grad():
                seen[seed_set] = self._sample_features(self.model, self.seed_sets[seed_set])
            self.evaluations += 1
        return seen[seed_set]

    def objective(self, config: Config) -> float:
        """Fréchet distance of the candidate's samples to FP's, on the selection seeds."""
        return frechet_distance(FeatureStats.of(self._candidate_features(config, 0)),
                                FeatureStats.of(self.reference[0]))

    def final_objective(self, config: Config) -> float:
        """The same distance over both seed sets (twice the samples, half of them fresh)."""
        ours = np.concatenate([self._candidate_features(config, i) for i in (0, 1)])
        return frechet_distance(FeatureStats.of(ours), FeatureStats.of(np.concatenate(self.reference)))

    def uniform(self, group: int) -> Config:
        """Every gene at ``group``, or at the largest size below it that the layer can take."""
        def fit(width: int) -> int:
            return max((g for g in choices(width) if g <= group), default=min(choices(width)))
        return {name: (fit(w), PER_CHANNEL if self.weights_only else fit(w)) for name, w in self.widths.items()}

    def feasible(self, config: Config) -> bool:
        return mean_group(config) >= self.options.budget


def _mutate(config: Config, search: GroupSearch, rng: random.Random, p: float) -> Config:
    out = {}
    for name, (wg, ag) in config.items():
        options = choices(search.widths[name])
        wg = rng.choice(options) if rng.random() < p else wg
        if not search.weights_only:  # two-level: activations stay per token
            ag = rng.choice(options) if rng.random() < p else ag
        out[name] = (wg, ag)
    return out


def _crossover(a: Config, b: Config, rng: random.Random) -> Config:
    return {name: a[name] if rng.random() < 0.5 else b[name] for name in a}


def evolve(search: GroupSearch, progress: bool = True) -> SearchResult:
    """Evolutionary search: keep the best ``parents`` of each generation, refill the population
    with half crossovers and half mutations of them (infeasible children are redrawn), seeded
    with the best uniform setting within the budget; then the finalists and the seed are scored
    on both seed sets and the lowest wins. Reproducible for a given seed."""
    o = search.options
    rng = random.Random(o.seed)
    distinct = {}
    for g in CANDIDATES:  # sizes a model's widths map to the same setting are scored once
        config = search.uniform(g)
        if search.feasible(config) and config not in distinct.values():
            distinct[g] = config
    uniform = {g: search.objective(c) for g, c in distinct.items()}
    if not uniform:
        raise ValueError(f"no uniform group size meets the budget of {o.budget}")
    seed_config = distinct[min(uniform, key=uniform.get)]
    scored = [(min(uniform.values()), seed_config)]
    bar = Progress("group search (epochs)", o.epochs, enabled=progress)
    history = []
    for _ in range(o.epochs):
        parents = [c for _, c in scored[: o.parents]]
        children = []
        attempts = 0
        while len(children) < o.population and attempts < 100 * o.population:
            attempts += 1
            if len(children) % 2 and len(parents) > 1:
                child = _crossover(*rng.sample(parents, 2), rng)
                child = _mutate(child, search, rng, o.mutation_probability / 2)
            else:
                child = _mutate(rng.choice(parents), search, rng, o.mutation_probability)
            if search.feasible(child) and child not in children and all(child != c for _, c in scored):
                children.append(child)
        scored = sorted(scored + [(search.objective(c), c) for c in children], key=lambda s: s[0])[: o.population]
        history.append(scored[0][0])
        bar.advance()
    finalists = [c for _, c in scored[: o.finalists]]
    if seed_config not in finalists:
        finalists.append(seed_config)
    final = [(search.final_objective(c), c) for c in finalists]
    best, config = min(final, key=lambda s: s[0])
    seed_final = next(value for value, c in final if c == seed_config)
    return SearchResult(config, best, seed_final, uniform, history, search.evaluations)
