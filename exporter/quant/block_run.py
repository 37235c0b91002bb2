"""How a block driver runs, besides what it quantizes: progress bars, the journal of finished blocks
(journal.py, --resume) and the memory budget of the block inputs it keeps (activation_store.py,
--max-memory)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from exporter.quant.activation_store import BatchStore, MemoryBudget
from exporter.quant.journal import BlockJournal


@dataclass
class BlockRun:
    progress: bool = True
    journal: BlockJournal | None = None
    memory: MemoryBudget | None = None  # None: every block input stays on the device

    def store(self, device: torch.device) -> BatchStore:
        """An empty store of block inputs under this run's budget, spilling into the journal's folder."""
        return BatchStore(device, self.memory, self.journal.folder if self.journal is not None else None)

    def finished_blocks(self) -> int:
        return self.journal.finished() if self.journal is not None else 0


__all__ = ["BlockRun"]
