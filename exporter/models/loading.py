"""Loading a DiT: the embedded default, a local diffusers folder, or a Hugging Face Hub id.

A folder may be a model folder (``config.json`` + safetensors weights) or a pipeline folder in
the layout of facebook/DiT-XL-2-256 (``transformer/``, ``scheduler/``, optionally ``vae/``).
Weights are read from safetensors only; pickled ``.bin`` checkpoints are refused.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exporter.errors import UserError
from exporter.models.embedded import EMBEDDED_DIT_DIR, EMBEDDED_SAMPLER, SCHEDULER_CONFIG
from exporter.models.sampling import SamplerConfig

SUPPORTED_ARCHITECTURES = ("DiTTransformer2DModel",)
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
HUB_FILES = ["model_index.json", "config.json", "*/config.json", "*/scheduler_config.json",
             "scheduler_config.json", "*.safetensors", "*/*.safetensors"]


@dataclass
class LoadedDiT:
    transformer: Any  # diffusers.DiTTransformer2DModel, in eval mode, float32
    scheduler_config: dict[str, Any]  # the noise schedule the model was trained with
    source: str  # "embedded", a folder, or a hub id
    folder: Path  # where the files were read from
    vae_folder: Path | None  # a diffusers AutoencoderKL folder for latent models, if shipped

    @property
    def is_embedded(self) -> bool:
        return self.source == "embedded"


def load_dit(model: str | None = None) -> LoadedDiT:
    """The DiT named by ``model`` (None: the embedded default). Raises UserError on bad input."""
    if model is None:
        return _load_folder(EMBEDDED_DIT_DIR, source="embedded")
    path = Path(model).expanduser()
    if path.exists():
        return _load_folder(path, source=str(path))
    if HUB_ID.match(model) and not model.startswith((".", "/", "~")):
        return _load_folder(_download_from_hub(model), source=model)
    raise UserError(f"model '{model}' does not exist (expected a diffusers folder or a Hub id like org/name)")


def _download_from_hub(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_FILES))
    except Exception as e:  # the hub client raises many types: network, auth, missing repo
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(
            f"cannot fetch '{repo_id}' from the Hugging Face Hub ({reason}); "
            "pass a local diffusers folder with --model"
        ) from None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"corrupt config {path}: {e}") from None
    if not isinstance(data, dict):
        raise UserError(f"corrupt config {path}: expected a JSON object")
    return data


def _transformer_folder(folder: Path) -> Path:
    if not folder.is_dir():
        raise UserError(f"model '{folder}' is not a folder (expected a diffusers model or pipeline folder)")
    for candidate in (folder, folder / "transformer"):
        if (candidate / "config.json").is_file():
            return candidate
    if (folder / "model_index.json").is_file():
        index = _read_json(folder / "model_index.json")
        raise UserError(
            f"unsupported architecture in {folder}: pipeline {index.get('_class_name', '?')} has no "
            f"transformer/ folder; supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    raise UserError(f"no config.json in {folder} or {folder / 'transformer'}: not a diffusers model folder")


def _load_folder(folder: Path, source: str) -> LoadedDiT:
    from diffusers import DiTTransformer2DModel

    transformer_dir = _transformer_folder(folder)
    config = _read_json(transformer_dir / "config.json")
    architecture = config.get("_class_name")
    if architecture not in SUPPORTED_ARCHITECTURES:
        raise UserError(
            f"unsupported architecture '{architecture}' in {transformer_dir}; "
            f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    weights = sorted(transformer_dir.glob("*.safetensors"))
    if not weights:
        pickled = sorted(p.name for p in transformer_dir.glob("*.bin"))
        hint = f" ({', '.join(pickled)} refused: pickled weights are never loaded)" if pickled else ""
        raise UserError(f"no safetensors weights in {transformer_dir}{hint}")
    try:
        transformer = DiTTransformer2DModel.from_pretrained(
            transformer_dir, use_safetensors=True, local_files_only=True, low_cpu_mem_usage=False
        )
    except Exception as e:  # corrupt headers, truncated tensors, shape mismatches
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"corrupt model weights in {transformer_dir}: {reason}") from None
    transformer = transformer.float().eval().requires_grad_(False)

    scheduler_file = folder / "scheduler" / "scheduler_config.json"
    scheduler_config = _read_json(scheduler_file) if scheduler_file.is_file() else dict(SCHEDULER_CONFIG)
    vae_folder = folder / "vae" if (folder / "vae" / "config.json").is_file() else None
    return LoadedDiT(transformer, scheduler_config, source, folder, vae_folder)


def default_sampler(loaded: LoadedDiT) -> SamplerConfig:
    """The sampler a model is deployed with: the embedded model's own, else the defaults."""
    return EMBEDDED_SAMPLER if loaded.is_embedded else SamplerConfig()
