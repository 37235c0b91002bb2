"""Calibration that survives an interruption: as each transformer block is finished, the block
driver writes it into OUT/quantized.partial/ (artifacts.CALIBRATION_JOURNAL), and ``--resume``
rebuilds the finished blocks from there instead of calibrating them again.

    identity.json       what the run calibrates: the FP model's fingerprint, the recipe, a digest
                        of the calibration set, the timestep buckets; a resume must match it
    block-NNN.safetensors  the block's quantized layers as the checkpoint stores them
                        (layer_storage.py) and every other tensor of the block (dilation and
                        distillation change some), under "fp.<name>"
    block-NNN.json      the layers' manifest entries, activation ranges and calibration losses;
                        written last, so a block counts as finished once its JSON exists

Rebuilt layers hold the same codes, scales and tables as the ones they replace, so they compute
the same outputs, and the blocks after them see the same inputs: a resumed run ends in the same
checkpoint, byte for byte, as one that was never interrupted.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save
from torch import nn

from exporter.atomic import atomic_write_bytes, atomic_write_text
from exporter.errors import UserError
from exporter.quant.calibration import CalibrationSet
from exporter.quant.layer_storage import LAYER_STORAGE, load_layer
from exporter.quant.module_tree import replace_module
from exporter.quant.qlinear import DecodedLinear, TimestepContext
from exporter.quant.recipes import Recipe

VERSION = 1
IDENTITY = "identity.json"


def calibration_digest(calib: CalibrationSet) -> str:
    digest = hashlib.sha256()
    for tensor in (calib.x, calib.t, calib.y):
        digest.update(tensor.detach().contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()


class BlockJournal:
    def __init__(self, folder: Path, identity: dict[str, Any]) -> None:
        # As JSON reads it back (tuples become lists), so that it compares equal with the saved one.
        self.folder, self.identity = Path(folder), json.loads(json.dumps({"version": VERSION, **identity}))

    @classmethod
    def start(cls, folder: Path, identity: dict[str, Any]) -> "BlockJournal":
        """A new journal, replacing any earlier one in ``folder``."""
        journal = cls(folder, identity)
        shutil.rmtree(journal.folder, ignore_errors=True)
        journal.folder.mkdir(parents=True)
        atomic_write_text(journal.folder / IDENTITY, json.dumps(journal.identity, indent=2) + "\n")
        return journal

    @classmethod
    def resume(cls, folder: Path, identity: dict[str, Any]) -> "BlockJournal":
        """The journal in ``folder``; UserError naming what differs when it calibrated something else."""
        journal = cls(folder, identity)
        path = cls.require(folder)
        try:
            saved = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise UserError(f"cannot resume: corrupt {path}: {e}") from None
        if not isinstance(saved, dict):
            raise UserError(f"cannot resume: corrupt {path}")
        differs = [key for key in journal.identity if saved.get(key) != journal.identity[key]]
        if differs:
            raise UserError(f"cannot resume: the interrupted calibration in {journal.folder} had another "
                            f"{', '.join(k.replace('_', ' ') for k in differs)}")
        return journal

    @staticmethod
    def require(folder: Path) -> Path:
        """The identity file of the journal in ``folder``; UserError when there is none to resume."""
        path = Path(folder) / IDENTITY
        if not path.is_file():
            raise UserError(f"nothing to resume: {folder} holds no interrupted calibration")
        return path

    def _path(self, block: int, suffix: str) -> Path:
        return self.folder / f"block-{block:03d}.{suffix}"

    def finished(self) -> int:
        """Blocks finished, counted from the first."""
        count = 0
        while self._path(count, "json").is_file() and self._path(count, "safetensors").is_file():
            count += 1
        return count

    def record(self, block: int, prefix: str, model: nn.Module, config: Any,
               ranges: dict[str, tuple[list[float], list[float]]], losses: list[float] | None) -> None:
        """Writes block ``block`` (its modules under ``prefix``) as it is now."""
        module = model.get_submodule(prefix.rstrip("."))
        layers = {name: m for name, m in module.named_modules() if isinstance(m, DecodedLinear)}
        tensors: dict[str, torch.Tensor] = {}
        entries = [{"name": prefix + name, "in_features": q.in_features, "out_features": q.out_features,
                    **LAYER_STORAGE[type(config)].save(prefix + name, q, config, tensors)}
                   for name, q in layers.items()]
        inside = tuple(f"{name}." for name in layers)
        for key, value in module.state_dict().items():
            if not key.startswith(inside):
                tensors[f"fp.{key}"] = value
        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        atomic_write_bytes(self._path(block, "safetensors"), save(tensors))
        details = {"layers": entries, "ranges": {n: r for n, r in ranges.items() if n.startswith(prefix)},
                   "losses": losses}
        atomic_write_text(self._path(block, "json"), json.dumps(details) + "\n")

    def restore(self, block: int, prefix: str, model: nn.Module, bucket_of_t: torch.Tensor,
                context: TimestepContext) -> tuple[dict[str, tuple[list[float], list[float]]], list[float] | None]:
        """Puts finished block ``block`` back into ``model``; its activation ranges and losses."""
        device = bucket_of_t.device
        try:
            details = json.loads(self._path(block, "json").read_text())
            tensors = load_file(str(self._path(block, "safetensors")), device=str(device))
            for entry in details["layers"]:
                replace_module(model, entry["name"], load_layer(entry, tensors, bucket_of_t, context))
            module = model.get_submodule(prefix.rstrip("."))
            fp_state = {k[3:]: v for k, v in tensors.items() if k.startswith("fp.")}
            missing, unexpected = module.load_state_dict(fp_state, strict=False)
            quantized = tuple(f"{e['name'][len(prefix):]}." for e in details["layers"])
            if unexpected or any(not k.startswith(quantized) for k in missing):
                raise ValueError(f"tensors do not match the block (missing {missing[:3]}, unexpected {unexpected[:3]})")
        except (OSError, KeyError, TypeError, ValueError, RuntimeError, json.JSONDecodeError) as e:
            raise UserError(f"cannot resume: corrupt block {block} in {self.folder}: "
                            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
        ranges = {n: (lo, hi) for n, (lo, hi) in details["ranges"].items()}
        return ranges, details["losses"]

    def close(self) -> None:
        """The calibration finished: its journal is no longer needed."""
        shutil.rmtree(self.folder, ignore_errors=True)


def searched_recipe_of(folder: Path, identity: dict[str, Any]) -> Recipe | None:
    """The recipe the group-size search gave the interrupted calibration in ``folder``, when it
    calibrated what ``identity`` describes (its model, requested recipe and calibration set)."""
    try:
        saved = json.loads((Path(folder) / IDENTITY).read_text())
        identity = json.loads(json.dumps(identity))
        if all(saved.get(key) == value for key, value in identity.items()) and "searched_recipe" in saved:
            return Recipe.from_dict(saved["searched_recipe"])
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError, UserError):
        pass
    return None


__all__ = ["BlockJournal", "calibration_digest", "searched_recipe_of"]
