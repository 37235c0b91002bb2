"""Q-DiT's group-size search: candidates respect the budget, the result is reproducible with a seed
and no worse than the uniform seed, and the searched groups reach the checkpoint and the graphs."""

import json

import onnx
import pytest

from exporter.calibrate import CalibrationOptions, run_calibrate
from exporter.errors import UserError
from exporter.export.onnx_export import run_export
from exporter.quant.checkpoint import load_checkpoint
from exporter.quant.granularity import GroupSearch, SearchOptions, evolve, mean_group
from exporter.quant.recipes import get_recipe
from exporter.rewrite.rewrite import rewrite_graph
from exporter.sampling import epsilon_step_weights
from tests.conftest import SAMPLER


def _search(tiny, calib, **options):
    weights = dict(zip(calib.timesteps, epsilon_step_weights(tiny.scheduler_config, SAMPLER, calib.timesteps)))
    return GroupSearch(tiny.transformer, get_recipe("w4a8"), calib, weights,
                       SearchOptions(inputs=48, epochs=3, population=6, **options), progress=False)


def test_search_respects_the_budget_is_reproducible_and_beats_its_uniform_seed(tiny, calib):
    search = _search(tiny, calib, budget=40.0, seed=3)
    seen = []
    original = search.objective

    def recording(config):
        seen.append(config)
        return original(config)

    search.objective = recording
    result = evolve(search, progress=False)
    assert seen and all(mean_group(c) >= 40.0 for c in seen)
    assert result.objective <= min(result.uniform.values())
    assert result.history == sorted(result.history, reverse=True)  # elitist: never worse
    again = evolve(_search(tiny, calib, budget=40.0, seed=3), progress=False)
    assert again.config == result.config and again.objective == pytest.approx(result.objective)


def test_objective_ranks_coarser_quantization_as_worse(tiny, calib):
    search = _search(tiny, calib, budget=0.0)
    fine, coarse = search.uniform(32), search.uniform(288)
    assert search.objective(fine) < search.objective(coarse)


def test_an_impossible_budget_is_a_clear_error(tiny, calib, tmp_path):
    options = CalibrationOptions(trajectories=2, group_search=SearchOptions(budget=10_000, epochs=1, population=2))
    with pytest.raises(UserError, match="no uniform group size meets the budget"):
        run_calibrate(tiny, get_recipe("w4a8"), SAMPLER, options, tmp_path, progress=False)


def test_searched_groups_reach_the_checkpoint_and_the_exported_layers(tiny, tmp_path):
    options = CalibrationOptions(trajectories=2, group_search=SearchOptions(budget=40.0, epochs=2, population=4,
                                                                            inputs=32))
    qdit, summary = run_calibrate(tiny, get_recipe("w4a8"), SAMPLER, options, tmp_path, progress=False)
    details = json.loads((tmp_path / "group_search.json").read_text())
    assert (tmp_path / "group_search.png").read_bytes()[:4] == b"\x89PNG"
    assert summary["group_search"]["mean_group"] >= 40.0
    loaded, manifest = load_checkpoint(tmp_path / "quantized")
    layers = loaded.quant_linears()
    for name, (weight_group, act_group) in details["config"].items():
        assert layers[name].group_size == weight_group
        assert layers[name].act.group_size == act_group
    assert [tuple(g) for g in manifest["recipe"]["layer_groups"]] == [
        (n, w, a) for n, (w, a) in details["config"].items()]
    exported = run_export(loaded, tiny.transformer, tmp_path, [900, 10])
    plugins = rewrite_graph(onnx.load(exported["qdq_onnx"])).tensorrt
    fields = {n.name.split(".MatMul")[0]: {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
              for n in plugins.graph.node if n.op_type == "DitIntGemm"}
    for name, (weight_group, act_group) in details["config"].items():
        width = layers[name].in_features
        assert fields[name]["group_size"] == weight_group
        assert fields[name]["act_group_size"] == (0 if act_group >= width else act_group)
