"""The quantized checkpoint: a folder with

    manifest.json       format version, precision recipe, the transformer's diffusers config, the
                        noise schedule and deployed sampler, timestep buckets, and per quantized
                        layer its role, shapes and weight / activation formats
    tensors.safetensors for each quantized layer `L`:
                          L.codes     4-bit: uint8 [N, ceil(K/2)], ONNX nibble order
                                      (exporter/numerics/packing.py); 8-bit: int8 / uint8 [N, K]
                          L.w_scale   float32 [N, groups]; with two-level scales (manifest
                                      "scales": "two-level") exactly s[n] * f[n, g], which
                                      exporter/numerics/two_level.py's split_two_level recovers;
                                      with FP4 power-of-two groups ("scales": "pow2-groups")
                                      exactly s[n] * 2**t[n, g], which fp4_groups.split_pow2
                                      recovers
                          L.w_zero    float32 [N, groups] (asymmetric formats only)
                          L.bias      float32 [N] (if the layer has one)
                          L.a_scale, L.a_zero   float32 [buckets] or [buckets, groups] (static
                                      activations only); with two-level scales exactly s[b] * f[b, g]
                                      (exporter/numerics/two_level_activations.py)
                        VQ layers instead of codes and scales:
                          L.codebook     float16 [codewords, dim]
                          L.assignments  uint8: the codeword index of each sub-vector, row-major
                                         [N, ceil(K/dim)], as a little-endian bit stream of
                                         log2(codewords) bits each (exporter/numerics/vq.py)
                        timestep_buckets   int64 [num_train_timesteps]: t -> bucket row
                        fp.<name>       every parameter and buffer that is not quantized

It is self-contained: a model is rebuilt from it without the FP model or recalibrating.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from exporter.atomic import atomic_directory
from exporter.errors import UserError
from exporter.models.loading import LoadedDiT
from exporter.quant.layer_storage import LAYER_STORAGE, load_layer
from exporter.quant.module_tree import replace_module
from exporter.quant.qlinear import TimestepContext
from exporter.quant.quantized_model import QuantizedDiT, TimestepBuckets
from exporter.quant.recipes import Recipe

FORMAT = "dit-export-quantized"
VERSION = 2  # 2: recipes and layers name their weight kind
MANIFEST = "manifest.json"
TENSORS = "tensors.safetensors"


def model_fingerprint(transformer: nn.Module) -> str:
    """sha256 over the FP model's parameter names, shapes and bytes."""
    digest = hashlib.sha256()
    for name, tensor in transformer.state_dict().items():
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.detach().contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()


def save_checkpoint(qdit: QuantizedDiT, folder: Path, extra: dict[str, Any]) -> Path:
    """extra: model_source, model_fingerprint, scheduler_config, sampler, calibration."""
    tensors: dict[str, torch.Tensor] = {"timestep_buckets": qdit.buckets.bucket_of_t.long()}
    storage = LAYER_STORAGE[type(qdit.recipe.weight)]
    qlinears = qdit.quant_linears()
    layers = [{"name": name, "role": qdit.roles[name], "in_features": q.in_features, "out_features": q.out_features,
               **storage.save(name, q, qdit.recipe.weight, tensors)} for name, q in qlinears.items()]
    quantized_prefixes = tuple(f"{n}." for n in qlinears)
    for key, value in qdit.transformer.state_dict().items():
        if not key.startswith(quantized_prefixes):
            tensors[f"fp.{key}"] = value.detach().contiguous()
    manifest = {
        "format": FORMAT, "version": VERSION,
        "precision": qdit.recipe.name, "recipe": qdit.recipe.to_dict(),
        "transformer_config": {k: v for k, v in dict(qdit.transformer.config).items() if not k.startswith("_")},
        "timestep_buckets": {"count": qdit.buckets.count, "members": qdit.buckets.members},
        "layers": layers, **extra,
    }
    tensors = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
    with atomic_directory(folder) as tmp:
        save_file(tensors, str(tmp / TENSORS))
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return folder


def weight_storage(manifest: dict[str, Any]) -> dict[str, Any]:
    """Stored weight bytes of the quantized layers against the same weights in FP16."""
    stored = sum(layer.get("weight_bytes", 0) for layer in manifest["layers"])
    fp16 = sum(2 * layer["in_features"] * layer["out_features"] for layer in manifest["layers"])
    return {"quantized_weight_bytes": stored, "fp16_weight_bytes": fp16,
            "weight_storage_vs_fp16": round(stored / fp16, 4) if fp16 else None}


def check_made_from(manifest: dict[str, Any], transformer: nn.Module, source: str, folder: Path) -> None:
    """UserError unless the checkpoint was calibrated from this FP model."""
    if model_fingerprint(transformer) != manifest.get("model_fingerprint"):
        raise UserError(f"checkpoint {folder} was calibrated from '{manifest.get('model_source')}', "
                        f"not from '{source}'")


def read_manifest(folder: Path) -> dict[str, Any]:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise UserError(f"'{folder}' is not a quantized checkpoint (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"corrupt checkpoint manifest {path}: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise UserError(f"'{path}' is not a {FORMAT} manifest")
    if manifest.get("version") != VERSION:
        raise UserError(f"checkpoint version {manifest.get('version')} is not supported (expected {VERSION})")
    return manifest


def manifest_recipe(manifest: dict[str, Any]) -> Recipe:
    """The recipe a checkpoint was calibrated with, from its manifest."""
    return Recipe.from_dict(manifest["recipe"])


def load_checkpoint(folder: Path) -> tuple[QuantizedDiT, dict[str, Any]]:
    """The quantized model and its manifest; UserError when the folder is not a valid checkpoint."""
    from diffusers import DiTTransformer2DModel

    folder = Path(folder)
    manifest = read_manifest(folder)
    try:
        tensors = load_file(str(folder / TENSORS))
    except (OSError, SafetensorError) as e:
        raise UserError(f"corrupt checkpoint tensors {folder / TENSORS}: {e}") from None
    try:
        recipe = Recipe.from_dict(manifest["recipe"])
        torch.manual_seed(0)
        model = DiTTransformer2DModel(**manifest["transformer_config"]).eval().requires_grad_(False)
        context = TimestepContext()
        context.attach(model)
        bucket_of_t = tensors["timestep_buckets"]
        buckets = TimestepBuckets(bucket_of_t, manifest["timestep_buckets"]["members"])
        roles = {}
        for layer in manifest["layers"]:
            name = layer["name"]
            roles[name] = layer["role"]
            replace_module(model, name, load_layer(layer, tensors, bucket_of_t, context))
        fp_state = {k[3:]: v for k, v in tensors.items() if k.startswith("fp.")}
        missing, unexpected = model.load_state_dict(fp_state, strict=False)
        missing = [k for k in missing if not any(k.startswith(f"{n}.") for n in roles)]
        if missing or unexpected:
            raise ValueError(f"tensors do not match the manifest (missing {missing[:3]}, unexpected {unexpected[:3]})")
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise UserError(f"corrupt checkpoint {folder}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    return QuantizedDiT(model, context, recipe, buckets, roles), manifest


def open_checkpoint(folder: Path, model: LoadedDiT | None = None) -> tuple[QuantizedDiT, dict[str, Any]]:
    """The quantized model and manifest; with ``model``, checks the checkpoint was made from it."""
    qdit, manifest = load_checkpoint(folder)
    if model is not None:
        check_made_from(manifest, model.transformer, model.source, folder)
    return qdit, manifest


def as_loaded(qdit: QuantizedDiT, manifest: dict[str, Any], folder: Path) -> LoadedDiT:
    """The quantized model in the shape sampling and eval take."""
    vae = manifest.get("vae_folder")
    return LoadedDiT(qdit.transformer, manifest["scheduler_config"], f"{folder} ({manifest['precision']})",
                     Path(folder), Path(vae) if vae and Path(vae).is_dir() else None)


def loaded_from_checkpoint(folder: Path, model: LoadedDiT | None = None) -> tuple[LoadedDiT, dict[str, Any]]:
    qdit, manifest = open_checkpoint(folder, model)
    return as_loaded(qdit, manifest, folder), manifest
