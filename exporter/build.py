"""`dit-export build`: every stage that exists, in order, each writing its artifact to out/."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exporter.atomic import atomic_write_text
from exporter.digits import IMAGE_SIZE
from exporter.evaluate import evaluate
from exporter.model_loading import load_dit
from exporter.sampling import SamplerConfig

# Stages later versions add after the reference evaluation, in pipeline order.
PENDING_STAGES = ("calibrate", "export", "rewrite", "engine", "validate")


@dataclass
class BuildReport:
    model: str
    precision: str
    stages: list[dict[str, Any]] = field(default_factory=list)

    def record(self, name: str, status: str, seconds: float, **details: Any) -> None:
        self.stages.append({"stage": name, "status": status, "seconds": round(seconds, 2), **details})
        extra = "; ".join(f"{k}={v}" for k, v in details.items() if not isinstance(v, (dict, list)))
        print(f"[{name}] {status} ({seconds:.1f}s){': ' + extra if extra else ''}", flush=True)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "precision": self.precision, "stages": self.stages}


def digits_shaped(transformer) -> bool:
    cfg = transformer.config
    return cfg.in_channels == 1 and cfg.sample_size == IMAGE_SIZE


def run_build(model: str | None, precision: str, out_dir: Path, sampler: SamplerConfig | None,
              eval_samples: int, seed: int) -> BuildReport:
    out_dir.mkdir(parents=True, exist_ok=True)
    report = BuildReport(model=model or "embedded", precision=precision)

    started = time.monotonic()
    loaded = load_dit(model)
    cfg = loaded.transformer.config
    report.record("load", "done", time.monotonic() - started,
                  parameters=sum(p.numel() for p in loaded.transformer.parameters()),
                  blocks=cfg.num_layers, hidden=cfg.num_attention_heads * cfg.attention_head_dim)

    sampler = sampler or default_sampler(loaded)
    started = time.monotonic()
    if eval_samples <= 0:
        report.record("reference-eval", "skipped", 0.0, reason="--eval-samples 0")
    elif not digits_shaped(loaded.transformer):
        report.record("reference-eval", "skipped", 0.0,
                      reason="the digits benchmark needs a 1x16x16 model; use dit-export eval --metrics inception")
    else:
        result = evaluate(loaded, out_dir, eval_samples, seed, sampler, noise_floor=False)
        report.record("reference-eval", "done", time.monotonic() - started,
                      frechet_distance=round(result["frechet_distance"], 3),
                      accuracy=round(result["accuracy"], 4), grid=result["grid"])

    for stage in PENDING_STAGES:
        report.record(stage, "not-available", 0.0,
                      reason=f"this version of dit-export has no '{stage}' stage yet for precision {precision}")
    atomic_write_text(out_dir / "build_report.json", json.dumps(report.to_dict(), indent=2) + "\n")
    print(f"build report: {out_dir / 'build_report.json'}", flush=True)
    return report


def default_sampler(loaded) -> SamplerConfig:
    from exporter.embedded import EMBEDDED_SAMPLER

    return EMBEDDED_SAMPLER if loaded.is_embedded else SamplerConfig()
