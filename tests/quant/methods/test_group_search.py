"""Q-DiT's group-size search: candidates respect the budget, the result is reproducible with a seed
and no worse than the uniform seed, the objective is the paired sample distance on seeds no
evaluation uses, and the searched groups reach the checkpoint and the graphs."""

import importlib.util
import json

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from exporter.errors import UserError
from exporter.evaluation.fidelity import DigitsJudge, FeatureStats, frechet_distance
from exporter.kernels.linear import QuantizedWeight, kernel_weights
from exporter.kernels.variants import AOT_LAYOUTS
from exporter.models.loading import load_dit
from exporter.models.sampling import balanced_labels, sample, sample_seeds
from exporter.numerics.primitives import PER_CHANNEL
from exporter.numerics.two_level import split_two_level
from exporter.quant.calibration import collect_calibration_set
from exporter.quant.checkpoint import load_checkpoint
from exporter.quant.methods.qdit_group_search import SEED_RUN, GroupSearch, SearchOptions, evolve, mean_group
from exporter.quant.recipes import get_recipe
from exporter.stages.calibrate import CalibrationOptions, run_calibrate
from exporter.stages.export import run_export
from exporter.stages.rewrite import check_deployable, rewrite_graph
from tests.conftest import SAMPLER, save_tiny_pipeline


@pytest.fixture(scope="module")
def digits_dit(tmp_path_factory):
    """A two-block DiT that makes 1x16x16 samples, which the digits classifier's features judge."""
    return load_dit(str(save_tiny_pipeline(tmp_path_factory.mktemp("m") / "pipe", num_layers=2, sample_size=16,
                                           attention_head_dim=32)))


@pytest.fixture(scope="module")
def digits_calib(digits_dit):
    return collect_calibration_set(digits_dit, SAMPLER, trajectories=4, seed=0, progress=False)


def _search(loaded, calib, precision="w4a8-g32", **options):
    defaults = dict(inputs=48, epochs=2, population=4, parents=2, samples=12, finalists=2)
    return GroupSearch(loaded, get_recipe(precision), calib, SAMPLER, SearchOptions(**{**defaults, **options}),
                       progress=False)


def test_search_respects_the_budget_is_reproducible_and_no_worse_than_its_uniform_seed(digits_dit, digits_calib):
    search = _search(digits_dit, digits_calib, budget=40.0, seed=3)
    seen = []
    original = search.objective

    def recording(config):
        seen.append(config)
        return original(config)

    search.objective = recording
    result = evolve(search, progress=False)
    assert seen and all(mean_group(c) >= 40.0 for c in seen)
    assert mean_group(result.config) >= 40.0
    assert result.objective <= result.seed_objective
    assert result.history == sorted(result.history, reverse=True)  # elitist: never worse
    again = evolve(_search(digits_dit, digits_calib, budget=40.0, seed=3), progress=False)
    assert again.config == result.config and again.objective == pytest.approx(result.objective)


def test_with_two_level_scales_only_weight_groups_are_searched(digits_dit, digits_calib):
    search = _search(digits_dit, digits_calib, "w4a8", budget=48.0, seed=3)
    seen = []
    original = search.objective

    def recording(config):
        seen.append(config)
        return original(config)

    search.objective = recording
    result = evolve(search, progress=False)
    assert len(seen) > 2 and all(a == PER_CHANNEL for c in seen for _, a in c.values())
    assert len({tuple(w for w, _ in c.values()) for c in seen}) > 2  # the weight groups do vary
    assert all(mean_group(c) >= 48.0 for c in seen) and mean_group(result.config) >= 48.0
    assert mean_group(result.config) == sum(w for w, _ in result.config.values()) / len(result.config)


def test_the_objective_is_the_feature_distance_to_fp_samples_from_the_same_unseen_seeds(digits_dit, digits_calib):
    search = _search(digits_dit, digits_calib, budget=0.0)
    config = search.uniform(32)
    value = search.objective(config)
    assert search.objective(config) == value and search.evaluations == 1  # scored once, then cached

    seeds = sample_seeds(SEED_RUN, 2 * 12)[:12]
    assert not set(seeds) & set(sample_seeds(0, 100_000)) and not set(seeds) & set(sample_seeds(1, 100_000))
    labels = balanced_labels(12, 10)
    judge = DigitsJudge()

    def features(model):
        return FeatureStats.of(judge.features(sample(model, digits_dit.scheduler_config, labels, seeds, SAMPLER,
                                                     progress=False).clamp(-1, 1)))

    quantized = features(search.model)  # the search left its layers at ``config``
    assert value == pytest.approx(frechet_distance(quantized, features(digits_dit.transformer)), rel=1e-6)
    assert value > 0


@pytest.mark.skipif(importlib.util.find_spec("torch_fidelity") is not None,
                    reason="torch-fidelity is installed: Inception's features are available")
def test_a_model_without_a_feature_space_is_a_clear_error(tiny, tmp_path):
    options = CalibrationOptions(trajectories=2, group_search=SearchOptions(budget=40.0, epochs=1, population=2))
    with pytest.raises(UserError, match="group-size search on this model needs torch-fidelity"):
        run_calibrate(tiny, get_recipe("w4a8"), SAMPLER, options, tmp_path, progress=False)
    assert not any(tmp_path.iterdir())


def test_an_impossible_budget_is_a_clear_error(digits_dit, tmp_path):
    options = CalibrationOptions(trajectories=2, group_search=SearchOptions(budget=10_000, epochs=1, population=2,
                                                                           samples=4))
    with pytest.raises(UserError, match="no uniform group size meets the budget"):
        run_calibrate(digits_dit, get_recipe("w4a8"), SAMPLER, options, tmp_path, progress=False)


@pytest.mark.parametrize("precision", ["w4a8", "w4a8-g32"])
def test_searched_groups_reach_the_checkpoint_and_the_exported_layers(digits_dit, tmp_path, precision):
    options = CalibrationOptions(trajectories=2, group_search=SearchOptions(budget=48.0, epochs=2, population=4,
                                                                            inputs=32, samples=8))
    qdit, summary = run_calibrate(digits_dit, get_recipe(precision), SAMPLER, options, tmp_path, progress=False)
    details = json.loads((tmp_path / "group_search.json").read_text())
    assert (tmp_path / "group_search.png").read_bytes()[:4] == b"\x89PNG"
    assert summary.group_search["mean_group"] >= 48.0
    loaded, manifest = load_checkpoint(tmp_path / "quantized")
    layers = loaded.quant_linears()
    for name, (weight_group, act_group) in details["config"].items():
        assert layers[name].group_size == weight_group
        assert layers[name].act.group_size == act_group
    assert [tuple(g) for g in manifest["recipe"]["layer_groups"]] == [
        (n, w, a) for n, (w, a) in details["config"].items()]
    assert loaded.recipe.deployable == (precision == "w4a8")  # two-level: activations stay per token
    if precision != "w4a8":
        with pytest.raises(UserError, match="precision w4a8-g32 is an accuracy reference"):
            check_deployable(loaded.recipe)
        return
    exported = run_export(loaded, digits_dit.transformer, tmp_path, [900, 10])
    trt = rewrite_graph(onnx.load(exported.qdq_onnx)).tensorrt
    tensors = {t.name: numpy_helper.to_array(t) for t in trt.graph.initializer}
    nodes = {n.name.split(".MatMul")[0]: n for n in trt.graph.node if n.op_type == "DitIntGemm"}
    for name in details["config"]:
        split_two_level(layers[name].w_scale)
        # The searched groups reach the plugin as the kernel's operands of the two-level scales.
        expected = kernel_weights(QuantizedWeight.of(name, layers[name]), "int8", AOT_LAYOUTS)
        weight = tensors[nodes[name].input[1]]
        np.testing.assert_array_equal(weight.view(np.uint8), expected.codes.view(torch.uint8).numpy())
