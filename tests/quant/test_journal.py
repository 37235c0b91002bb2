"""--resume: a calibration interrupted between blocks continues from its journal and writes the
same checkpoint, byte for byte, as a run that was never interrupted; a journal of another model,
recipe or calibration set is refused in one line."""

from __future__ import annotations

from dataclasses import replace

import pytest

from exporter.artifacts import CALIBRATION_JOURNAL, CHECKPOINT_DIR
from exporter.errors import UserError
from exporter.quant.checkpoint import MANIFEST, TENSORS
from exporter.quant.journal import BlockJournal, searched_recipe_of
from exporter.quant.recipes import get_recipe
from exporter.stages.calibrate import CalibrationOptions, run_calibrate
from tests.conftest import SAMPLER


class Interrupted(Exception):
    pass


def interrupt_after(monkeypatch, blocks: int) -> list[int]:
    """Makes the journal stop the run (as a kill would) once ``blocks`` blocks are written."""
    recorded: list[int] = []
    record = BlockJournal.record

    def record_then_stop(self, block, *args, **kwargs):
        record(self, block, *args, **kwargs)
        recorded.append(block)
        if len(recorded) == blocks:
            raise Interrupted

    monkeypatch.setattr(BlockJournal, "record", record_then_stop)
    return recorded


@pytest.mark.parametrize("precision, overrides", [("w4a8", {}), ("w4a4", {"kd_iterations": 5}),
                                                  ("vq3", {"weight_iterations": 5})])
def test_a_resumed_calibration_writes_the_uninterrupted_checkpoint(tiny, calib, tmp_path, monkeypatch, precision,
                                                                   overrides):
    recipe = get_recipe(precision).with_overrides(**overrides)
    options = CalibrationOptions(data=calib.save(tmp_path / "calibration.safetensors"))
    run_calibrate(tiny, recipe, SAMPLER, options, tmp_path / "whole", progress=False)
    assert not (tmp_path / "whole" / CALIBRATION_JOURNAL).exists()  # a finished run leaves no journal

    with monkeypatch.context() as patch:
        recorded = interrupt_after(patch, 1)
        with pytest.raises(Interrupted):
            run_calibrate(tiny, recipe, SAMPLER, options, tmp_path / "cut", progress=False)
    assert recorded == [0] and not (tmp_path / "cut" / CHECKPOINT_DIR).exists()
    assert BlockJournal(tmp_path / "cut" / CALIBRATION_JOURNAL, {}).finished() == 1

    resumed = interrupt_after(monkeypatch, 99)
    _, summary = run_calibrate(tiny, recipe, SAMPLER, replace(options, resume=True), tmp_path / "cut", progress=False)
    assert resumed == [1]  # block 0 came from the journal
    for name in (TENSORS, MANIFEST):
        assert (summary.checkpoint / name).read_bytes() == (tmp_path / "whole" / CHECKPOINT_DIR / name).read_bytes()
    assert not (tmp_path / "cut" / CALIBRATION_JOURNAL).exists()


def test_a_journal_of_another_calibration_is_refused(tiny, calib, tmp_path, monkeypatch):
    options = CalibrationOptions(data=calib.save(tmp_path / "calibration.safetensors"))
    with pytest.raises(UserError, match="nothing to resume"):
        run_calibrate(tiny, get_recipe("w8a8"), SAMPLER, replace(options, resume=True), tmp_path / "none",
                      progress=False)
    interrupt_after(monkeypatch, 1)
    with pytest.raises(Interrupted):
        run_calibrate(tiny, get_recipe("w8a8"), SAMPLER, options, tmp_path, progress=False)
    with pytest.raises(UserError, match=r"cannot resume: .* had another recipe$"):
        run_calibrate(tiny, get_recipe("w4a8"), SAMPLER, replace(options, resume=True), tmp_path, progress=False)
    with pytest.raises(UserError, match=r"had another timestep buckets$"):
        run_calibrate(tiny, get_recipe("w8a8"), SAMPLER, replace(options, resume=True, buckets=2), tmp_path,
                      progress=False)
    other = calib.save(tmp_path / "other.safetensors")
    other_calib = type(calib).load(other)
    type(calib)(other_calib.x[:-2], other_calib.t[:-2], other_calib.y[:-2], other_calib.sampler).save(other)
    with pytest.raises(UserError, match=r"had another calibration set$"):
        run_calibrate(tiny, get_recipe("w8a8"), SAMPLER, replace(options, resume=True, data=other), tmp_path,
                      progress=False)


def test_the_group_search_of_an_interrupted_run_is_reused_only_for_the_same_calibration(tmp_path):
    recipe = get_recipe("w4a8")
    searched = replace(recipe, layer_groups=(("transformer_blocks.0.attn1.to_q", 64, -1),))
    identity = {"model": "m", "recipe": recipe.to_dict(), "calibration_set": "c", "timestep_buckets": None}
    BlockJournal.start(tmp_path, {**identity, "searched_recipe": searched.to_dict()})
    assert searched_recipe_of(tmp_path, identity) == searched
    assert searched_recipe_of(tmp_path, {**identity, "calibration_set": "d"}) is None
    assert searched_recipe_of(tmp_path / "none", identity) is None


def test_resume_without_an_interrupted_calibration_is_a_one_line_error(tmp_path):
    from tests.test_cli import assert_one_line_error, run_cli

    assert_one_line_error(run_cli("calibrate", "--resume", "--out", str(tmp_path / "out")), "nothing to resume")
    assert not (tmp_path / "out").exists()
