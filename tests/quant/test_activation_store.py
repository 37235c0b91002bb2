"""--max-memory: block inputs beyond the budget go to files and come back unchanged, and a
calibration that spills writes the same checkpoint, byte for byte, as one that keeps everything."""

from __future__ import annotations

import pytest
import torch

from exporter.artifacts import CHECKPOINT_DIR
from exporter.errors import UserError
from exporter.quant.activation_store import BatchStore, MemoryBudget, parse_bytes
from exporter.quant.checkpoint import MANIFEST, TENSORS
from exporter.quant.recipes import get_recipe
from exporter.stages.calibrate import CalibrationOptions, run_calibrate
from tests.conftest import SAMPLER


def test_sizes_parse_and_bad_ones_are_refused():
    assert parse_bytes("8GiB") == 8 * 2**30 and parse_bytes("512 MB") == 512 * 10**6 and parse_bytes("1e3") == 1000
    for bad in ("lots", "8 GiBs", "-1"):
        with pytest.raises(UserError, match="--max-memory takes a size"):
            parse_bytes(bad)


def test_batches_past_the_budget_go_to_files_and_come_back_unchanged(tmp_path):
    budget = MemoryBudget(device=3 * 64 * 4, host=0)
    batches = [torch.randn(8, 8) + i for i in range(5)]
    store, other = BatchStore("cpu", budget, tmp_path), BatchStore("cpu", budget, tmp_path)
    for batch in batches:
        store.append(batch)
    other.append(batches[0])  # the budget is shared: nothing is left for a second store
    assert store.spilled == 2 and other.spilled == 1 and budget.used["device"] == 3 * 64 * 4
    assert all(torch.equal(a, b) for a, b in zip(store, batches)) and torch.equal(other[0], batches[0])
    store.close()
    assert budget.used["device"] == 0  # freed bytes go back to the budget
    other.close()
    assert not any(tmp_path.iterdir())  # the spill files went with their stores


@pytest.mark.parametrize("precision, overrides", [("w4a8", {}), ("w4a4", {"kd_iterations": 5})])
def test_a_calibration_that_spills_writes_the_same_checkpoint(tiny, calib, tmp_path, monkeypatch, precision,
                                                              overrides):
    recipe = get_recipe(precision).with_overrides(**overrides)
    options = CalibrationOptions(data=calib.save(tmp_path / "calibration.safetensors"))
    run_calibrate(tiny, recipe, SAMPLER, options, tmp_path / "memory", progress=False)
    spilled = []
    append = BatchStore.append

    def counting_append(self, tensor):
        append(self, tensor)
        spilled.append(self.spilled)

    monkeypatch.setattr(BatchStore, "append", counting_append)
    options = CalibrationOptions(data=options.data, max_memory="1KiB")
    _, summary = run_calibrate(tiny, recipe, SAMPLER, options, tmp_path / "files", progress=False)
    assert spilled and spilled[-1] > 0
    for name in (TENSORS, MANIFEST):
        assert (summary.checkpoint / name).read_bytes() == (tmp_path / "memory" / CHECKPOINT_DIR / name).read_bytes()
