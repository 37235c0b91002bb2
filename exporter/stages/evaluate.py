"""`dit-export eval`: N class-conditional samples from fixed seeds, scored and drawn as a grid."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

from exporter.atomic import atomic_write_bytes, atomic_write_text
from exporter.errors import UserError
from exporter.evaluation.plots import save_sample_grid
from exporter.models.loading import LoadedDiT
from exporter.models.placement import CPU, Placement, placed
from exporter.models.sampling import SamplerConfig, balanced_labels, sample, sample_seeds, to_images

METRICS = ("digits", "inception")


def evaluate(loaded: LoadedDiT, out_dir: Path, n: int, seed: int, sampler: SamplerConfig,
             metrics: str = "digits", noise_floor: bool = True, reference_images: Path | None = None,
             forward: Callable | None = None, label: str = "fp", progress: bool = True,
             reference_samples: Path | None = None, placement: Placement = CPU) -> dict[str, Any]:
    """Writes ``{label}_eval.json``, ``{label}_samples.png`` and the samples themselves
    (``{label}_samples.safetensors``) in out_dir and returns the report. With
    ``reference_samples`` (another run's samples file, same N and seed), also reports how far
    these samples are from those, sample by sample. The model samples on ``placement``."""
    if metrics not in METRICS:
        raise UserError(f"unknown metrics '{metrics}'; valid: {', '.join(METRICS)}")
    if n < 2:
        raise UserError(f"eval needs at least 2 samples, got {n}")
    if metrics == "inception" and reference_images is None:
        raise UserError("--metrics inception needs --reference-images DIR (real images to compare with)")
    judge = None
    reference = _load_reference(reference_samples, n, seed) if reference_samples is not None else None
    if metrics == "inception":
        from exporter.evaluation.inception_metrics import require_torch_fidelity

        require_torch_fidelity()
        if not reference_images.is_dir():
            raise UserError(f"reference images folder '{reference_images}' does not exist")
    else:
        from exporter.evaluation.fidelity import DigitsJudge

        judge = DigitsJudge()
    num_classes = int(loaded.transformer.config.num_embeds_ada_norm)
    labels = balanced_labels(n, num_classes)
    started = time.monotonic()

    transformer = placed(loaded.transformer, placement)

    def draw(run_seed: int) -> torch.Tensor:
        return sample(transformer, loaded.scheduler_config, labels, sample_seeds(run_seed, n),
                      sampler, forward=forward, progress=progress)

    samples = draw(seed)
    images = to_images(samples, loaded.vae_folder)
    report: dict[str, Any] = {
        "model": loaded.source, "label": label, "n": n, "seed": seed, "sampler": sampler.to_dict(),
        "metrics": metrics, "placement": placement.name,
    }
    if judge is not None:
        report.update(judge.score(samples, labels))
        if reference is not None:
            report.update(judge.compare_paired(samples, reference))
        if noise_floor:
            other = draw(seed + 1)
            other_scores = judge.score(other, labels)
            report["noise_floor"] = {
                "seed": seed + 1,
                "frechet_distance": other_scores["frechet_distance"],
                "accuracy": other_scores["accuracy"],
                "distance_between_seeds": judge.distance_between(samples, other),
                "distance_ratio": other_scores["frechet_distance"] / report["frechet_distance"],
            }
    else:
        from exporter.evaluation.inception_metrics import inception_metrics

        report.update(inception_metrics(images, reference_images))
    report["seconds"] = round(time.monotonic() - started, 1)
    grid = save_sample_grid(images, labels, out_dir / f"{label}_samples.png")
    report["grid"] = grid.name
    report["samples_file"] = atomic_write_bytes(
        out_dir / f"{label}_samples.safetensors",
        save({"samples": samples.contiguous()}, metadata={"n": str(n), "seed": str(seed)})).name
    atomic_write_text(out_dir / f"{label}_eval.json", json.dumps(report, indent=2) + "\n")
    return report


def _load_reference(path: Path, n: int, seed: int) -> torch.Tensor:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        samples = load_file(str(path))["samples"]
    except (OSError, SafetensorError, KeyError) as e:
        raise UserError(f"cannot read reference samples {path}: {e}") from None
    if meta.get("n") != str(n) or meta.get("seed") != str(seed):
        raise UserError(f"reference samples {path} are n={meta.get('n')} seed={meta.get('seed')}, "
                        f"this run is n={n} seed={seed}")
    return samples
