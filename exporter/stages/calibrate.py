"""`dit-export calibrate`: calibration data, quantization by recipe, reports, quantized checkpoint."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from exporter.artifacts import CALIBRATION_FILE, CALIBRATION_JOURNAL, CHECKPOINT_DIR
from exporter.atomic import atomic_write_text
from exporter.errors import UserError
from exporter.evaluation.sample_features import Features, sample_features
from exporter.models.loading import LoadedDiT
from exporter.models.placement import CPU, Placement, placed
from exporter.models.sampling import SamplerConfig
from exporter.quant.activation_store import MemoryBudget
from exporter.quant.calibration import CalibrationSet, calibration_summary, collect_calibration_set
from exporter.quant.checkpoint import model_fingerprint, read_manifest, save_checkpoint, weight_storage
from exporter.quant.journal import BlockJournal, calibration_digest, searched_recipe_of
from exporter.quant.methods.qdit_group_search import SearchOptions
from exporter.quant.quantize import quantize_model
from exporter.quant.quantized_model import QuantizedDiT
from exporter.quant.recipes import Recipe
from exporter.quant.report import measure, write_reports
from exporter.results import plain


@dataclass(frozen=True)
class CalibrationOptions:
    trajectories: int = 32
    seed: int = 0
    buckets: int | None = None  # None: one bucket per sampler timestep
    data: Path | None = None  # reuse saved calibration data instead of sampling
    group_search: SearchOptions | None = None  # Q-DiT's per-layer group-size search before quantizing
    placement: Placement = CPU  # where the FP model samples the calibration data and quantization runs
    resume: bool = False  # continue the interrupted calibration in OUT (its data, search and finished blocks)
    max_memory: str | None = None  # block inputs kept in memory (e.g. "8GiB"); None: half of what is free


@dataclass(frozen=True)
class CalibrationSummary:
    checkpoint: Path
    layers: int
    buckets: int
    calibration_inputs: int
    output_sqnr_db_min: float | None
    output_sqnr_db_mean: float | None
    seconds_sampling: float
    seconds_quantizing: float
    quantized_weight_bytes: int
    fp16_weight_bytes: int
    weight_storage_vs_fp16: float | None
    group_search: dict[str, Any] | None = None  # objective, uniform seed's, mean group, evaluations, seconds
    block_loss_first_last: dict[str, list[float]] = field(default_factory=dict)  # block -> [first, last 20 mean]

    def to_dict(self) -> dict[str, Any]:
        """For printing and reports; the group search and block losses only where there are some."""
        return {k: v for k, v in plain(self).items() if v or k not in ("group_search", "block_loss_first_last")}


def calibration_data(loaded: LoadedDiT, sampler: SamplerConfig, options: CalibrationOptions, out_dir: Path,
                     progress: bool = True) -> CalibrationSet:
    if options.resume and options.data is None and (out_dir / CALIBRATION_FILE).is_file():
        options = replace(options, data=out_dir / CALIBRATION_FILE)  # what the interrupted run calibrated on
    if options.data is not None:
        if not options.data.is_file():
            raise UserError(f"calibration data '{options.data}' does not exist")
        calib = CalibrationSet.load(options.data)
        shape = tuple(calib.x.shape[1:])
        cfg = loaded.transformer.config
        if shape != (cfg.in_channels, cfg.sample_size, cfg.sample_size):
            raise UserError(f"calibration data {options.data} has inputs {shape}, the model takes "
                            f"{(cfg.in_channels, cfg.sample_size, cfg.sample_size)}")
        return calib
    calib = collect_calibration_set(loaded, sampler, options.trajectories, options.seed, progress, options.placement)
    calib.save(out_dir / CALIBRATION_FILE)
    return calib


def run_calibrate(loaded: LoadedDiT, recipe: Recipe, sampler: SamplerConfig, options: CalibrationOptions,
                  out_dir: Path, progress: bool = True) -> tuple[QuantizedDiT, CalibrationSummary]:
    """Quantizes, writes out/quantized/ (checkpoint), the reports and plots; returns the model and a summary."""
    if options.resume:
        BlockJournal.require(out_dir / CALIBRATION_JOURNAL)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    features = search_features(loaded, recipe) if options.group_search is not None else None
    calib = calibration_data(loaded, sampler, options, out_dir, progress)
    collected = time.monotonic()
    search = None
    fingerprint = model_fingerprint(loaded.transformer)
    identity = {"model": fingerprint, "recipe": recipe.to_dict(), "calibration_set": calibration_digest(calib),
                "timestep_buckets": options.buckets}
    journal_dir = out_dir / CALIBRATION_JOURNAL
    if options.resume:
        BlockJournal.resume(journal_dir, identity)  # another model, recipe or data: refused before any search
    if options.group_search is not None:
        searched = searched_recipe_of(journal_dir, identity) if options.resume else None
        if searched is not None:
            recipe = searched
        else:
            recipe, search = searched_recipe(loaded, recipe, sampler, calib, options.group_search, features, out_dir,
                                             progress)
        identity["searched_recipe"] = recipe.to_dict()
        collected = time.monotonic()
    journal = (BlockJournal.resume if options.resume else BlockJournal.start)(journal_dir, identity)
    device = options.placement.device
    qdit = quantize_model(loaded.transformer, recipe, calib,
                          int(loaded.scheduler_config.get("num_train_timesteps", 1000)), options.buckets, progress,
                          device, journal, MemoryBudget.for_device(device, options.max_memory))
    quantized = time.monotonic()
    report = measure(placed(loaded.transformer, replace(options.placement, dtype=torch.float32)), qdit,
                     calib.to(device))
    qdit.to(torch.device("cpu"))
    write_reports(report, out_dir, recipe.name)
    folder = save_checkpoint(qdit, out_dir / CHECKPOINT_DIR, {
        "model_source": loaded.source,
        "model_fingerprint": fingerprint,
        "scheduler_config": loaded.scheduler_config,
        "sampler": sampler.to_dict(),
        "calibration": calibration_summary(calib),
        "vae_folder": str(loaded.vae_folder) if loaded.vae_folder else None,
    })
    journal.close()
    valid = [v for v in report["output_sqnr_db"] if v is not None]
    return qdit, CalibrationSummary(
        checkpoint=folder, layers=len(qdit.roles), buckets=qdit.buckets.count, calibration_inputs=len(calib),
        output_sqnr_db_min=min(valid) if valid else None,
        output_sqnr_db_mean=round(sum(valid) / len(valid), 2) if valid else None,
        seconds_sampling=round(collected - started, 1), seconds_quantizing=round(quantized - collected, 1),
        **weight_storage(read_manifest(folder)), group_search=search,
        block_loss_first_last={block: [round(losses[0], 5), round(sum(losses[-20:]) / len(losses[-20:]), 5)]
                               for block, losses in qdit.calibration_losses.items()})


def search_features(loaded: LoadedDiT, recipe: Recipe) -> Features:
    """What the group-size search compares samples in; checked before any calibration work."""
    from exporter.quant.methods.qdit_group_search import SEARCH_PURPOSE, check_searchable

    try:
        check_searchable(recipe)
    except ValueError as e:
        raise UserError(f"group-size search: {e}") from None
    return sample_features(loaded, SEARCH_PURPOSE)


def searched_recipe(loaded: LoadedDiT, recipe: Recipe, sampler: SamplerConfig, calib: CalibrationSet,
                    options: SearchOptions, features: Features, out_dir: Path,
                    progress: bool = True) -> tuple[Recipe, dict[str, Any]]:
    """The recipe with the group sizes Q-DiT's search picks; writes group_search.json / .png."""
    from exporter.quant.methods.qdit_group_search import GroupSearch, evolve, mean_group
    from exporter.quant.report import plot_group_search

    started = time.monotonic()
    try:
        search = GroupSearch(loaded, recipe, calib, sampler, options, features, progress)
        result = evolve(search, progress)
    except ValueError as e:
        raise UserError(f"group-size search: {e}") from None
    details = {**result.to_dict(), "budget": options.budget, "epochs": options.epochs,
               "population": options.population, "seconds": round(time.monotonic() - started, 1)}
    atomic_write_text(out_dir / "group_search.json", json.dumps(details, indent=2) + "\n")
    plot_group_search(details, out_dir / "group_search.png", recipe.name)
    groups = tuple((name, w, a) for name, (w, a) in result.config.items())
    summary = {"objective": result.objective, "uniform_seed": result.seed_objective,
               "mean_group": mean_group(result.config),
               "evaluations": result.evaluations, "seconds": details["seconds"]}
    return replace(recipe, layer_groups=groups), summary
