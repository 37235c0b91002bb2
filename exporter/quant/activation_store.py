"""The block inputs a calibration keeps, in bounded memory.

Block-by-block calibration keeps, for the block being calibrated, its input for every calibration
batch (S inputs x T tokens x H channels in float32: 4 S T H bytes; DiT-XL/2 at the default 3,200
inputs: 3,200 x 256 x 1152 x 4 = 3.8 GB), and while it runs the block, the block's output for the
next one: 8 S T H bytes at the peak, plus the distillation targets (another 4 S T H) for
DilateQuant's recipes. ``BatchStore`` keeps each batch on the device while the budget allows, then
in host memory (pinned, when the device is a GPU) while the host budget allows, then in a file under
a spill folder, and gives it back on the device when asked.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import torch

from exporter.errors import UserError

UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 10**3, "kib": 2**10, "m": 2**20, "mb": 10**6, "mib": 2**20,
         "g": 2**30, "gb": 10**9, "gib": 2**30, "t": 2**40, "tb": 10**12, "tib": 2**40}


def parse_bytes(text: str) -> int:
    """'8GiB', '512 MB', '1e9' -> bytes; UserError otherwise."""
    match = re.fullmatch(r"\s*([0-9.]+(?:e[0-9]+)?)\s*([a-z]*)\s*", text.lower())
    if not match or match.group(2) not in UNITS:
        raise UserError(f"--max-memory takes a size such as 8GiB, 512MB or 1e9 (bytes), not '{text}'")
    return int(float(match.group(1)) * UNITS[match.group(2)])


def available_host_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux); None where it cannot be read."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


class MemoryBudget:
    """Bytes of stored block inputs to keep on the device and in host memory (None: no limit),
    shared by every store of one calibration."""

    def __init__(self, device: int | None, host: int | None) -> None:
        self.limits = {"device": device, "host": host}
        self.used = {"device": 0, "host": 0}

    @classmethod
    def for_device(cls, device: torch.device, max_memory: str | None = None) -> "MemoryBudget":
        """``max_memory`` for the device (on the CPU, the device is host memory), else half of
        what is free; the host tier of a GPU gets half of the host's available memory."""
        host = available_host_bytes()
        host = host // 2 if host is not None else None
        if max_memory is not None:
            limit = parse_bytes(max_memory)
        elif device.type == "cuda":
            limit = torch.cuda.mem_get_info(device)[0] // 2
        else:
            limit = host
        return cls(limit, host if device.type == "cuda" else 0)

    def take(self, tier: str, size: int) -> bool:
        limit = self.limits[tier]
        if limit is not None and self.used[tier] + size > limit:
            return False
        self.used[tier] += size
        return True

    def give(self, tier: str, size: int) -> None:
        self.used[tier] -= size


class BatchStore:
    """One tensor per calibration batch, placed by ``budget``; ``store[i]`` is batch i on the device."""

    def __init__(self, device: torch.device, budget: MemoryBudget | None = None, spill_dir: Path | None = None) -> None:
        self.device, self.spill_dir = torch.device(device), spill_dir
        self.budget = budget if budget is not None else MemoryBudget(None, None)
        self._items: list[torch.Tensor | Path] = []
        self._held = {"device": 0, "host": 0}
        self._folder: tempfile.TemporaryDirectory | None = None

    def __len__(self) -> int:
        return len(self._items)

    def append(self, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self.budget.take("device", size):
            self._items.append(tensor.to(self.device))
            self._held["device"] += size
        elif self.device.type == "cuda" and self.budget.take("host", size):
            self._items.append(tensor.to("cpu").pin_memory())
            self._held["host"] += size
        else:
            path = Path(self._spill_folder()) / f"{len(self._items)}.pt"
            torch.save(tensor.detach().cpu().contiguous(), path)
            self._items.append(path)

    def __getitem__(self, i: int) -> torch.Tensor:
        item = self._items[i]
        if isinstance(item, Path):
            return torch.load(item, weights_only=True).to(self.device)
        return item.to(self.device, non_blocking=True)

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    @property
    def spilled(self) -> int:
        """Batches kept in files."""
        return sum(isinstance(item, Path) for item in self._items)

    def _spill_folder(self) -> str:
        if self._folder is None:
            if self.spill_dir is not None:
                os.makedirs(self.spill_dir, exist_ok=True)
            self._folder = tempfile.TemporaryDirectory(prefix="block-inputs-", dir=self.spill_dir)
        return self._folder.name

    def close(self) -> None:
        """Frees the batches and returns their bytes to the budget."""
        self._items.clear()
        for tier, size in self._held.items():
            self.budget.give(tier, size)
        self._held = {"device": 0, "host": 0}
        if self._folder is not None:
            self._folder.cleanup()
            self._folder = None


__all__ = ["BatchStore", "MemoryBudget", "available_host_bytes", "parse_bytes"]
