"""VQ4DiT calibration: soft candidate assignments, block-wise distillation, vq2 / vq3 precisions
and their checkpoint."""

import copy

import pytest
import torch

from exporter.errors import UserError
from exporter.numerics.vq import VqFormat, nearest, subvectors
from exporter.quant.checkpoint import load_checkpoint, save_checkpoint, weight_storage
from exporter.quant.methods.vq4dit import SoftVqLinear, Vq4DitOptions, calibrate_block, nearest_vq
from exporter.quant.qlinear import DynamicActivationQuant
from exporter.quant.quantize import quantize_model
from exporter.quant.recipes import get_recipe
from exporter.quant.vq_linear import VqLinear
from exporter.quant.weight_configs import IntWeights, VqWeights


def test_soft_layer_starts_between_its_candidates_and_hardens_to_the_top_one():
    linear = torch.nn.Linear(34, 16)  # 34 is not a multiple of the sub-vector size
    soft = SoftVqLinear(linear, VqFormat(8, 4), Vq4DitOptions(kmeans_iterations=5))
    assert soft.codebook.shape == (8, 4) and soft.candidates.shape == (16 * 9, 2)
    ratios = soft.ratios()
    assert torch.allclose(ratios.sum(1), torch.ones(len(ratios)))
    assert torch.all(ratios[:, 0] >= ratios[:, 1])  # the nearest codeword starts with the larger ratio
    hard = soft.hard()
    assert isinstance(hard, VqLinear) and hard.weight.shape == (16, 34)
    points = subvectors(linear.weight.detach(), 4).reshape(-1, 4)
    expected, _ = nearest(points, soft.codebook.detach().half().float())
    assert torch.equal(hard.assignments.reshape(-1), expected[:, 0])


def test_calibration_loss_decreases_and_beats_plain_kmeans(tiny, calib):
    fp = tiny.transformer
    block = fp.transformer_blocks[0]
    targets = {"attn1.to_q": block.attn1.to_q, "ff.net.0.proj": block.ff.net[0].proj}
    with torch.no_grad():
        hidden = fp.pos_embed(calib.x)
        reference = block(hidden, timestep=calib.t, class_labels=calib.y)
    fmt = VqFormat(16, 4)
    options = Vq4DitOptions(iterations=60, kmeans_iterations=20)
    hard, losses = calibrate_block(block, targets, fmt, (hidden, calib.t, calib.y), options)
    assert sum(losses[-10:]) / 10 < 0.8 * sum(losses[:10]) / 10

    def error(replacements) -> float:
        student = copy.deepcopy(block)
        for name, module in replacements.items():
            parent, _, child = name.rpartition(".")
            setattr(student.get_submodule(parent), child, module)
        with torch.no_grad():
            out = student(hidden, timestep=calib.t, class_labels=calib.y)
        return float((out - reference).pow(2).mean())

    kmeans_only = {name: nearest_vq(linear, fmt, options) for name, linear in targets.items()}
    assert error(hard) < 0.7 * error(kmeans_only)
    # The teacher is left as it was.
    with torch.no_grad():
        assert torch.equal(block(hidden, timestep=calib.t, class_labels=calib.y), reference)


@pytest.mark.parametrize("precision", ["vq2", "vq3", "vq3-a8"])
def test_vq_precisions_quantize_and_round_trip_through_the_checkpoint(tiny, calib, tmp_path, precision):
    recipe = get_recipe(precision).with_overrides(weight_iterations=10)
    qdit = quantize_model(tiny.transformer, recipe, calib, 1000, progress=False)
    layers = qdit.quant_linears()
    assert layers and all(isinstance(m, VqLinear) for m in layers.values())
    with_act = {name for name, m in layers.items() if isinstance(m.act, DynamicActivationQuant)}
    assert with_act == ({n for n in layers if qdit.roles[n] in recipe.policy.activations}
                        if recipe.activation else set())
    assert with_act or not recipe.activation
    assert set(qdit.calibration_losses) == {"block 0", "block 1"}
    save_checkpoint(qdit, tmp_path / "q", {"model_fingerprint": "x"})
    loaded, manifest = load_checkpoint(tmp_path / "q")
    for name, layer in loaded.quant_linears().items():
        assert torch.equal(layer.weight, layers[name].weight), name
        assert type(layer.act) is type(layers[name].act), name
    storage = weight_storage(manifest)
    layer = manifest["layers"][0]
    fmt = VqFormat(layer["weight"]["codewords"], layer["weight"]["dim"])
    per_row = -(-layer["in_features"] // fmt.dim)
    assert layer["weight_bytes"] == 2 * fmt.codewords * fmt.dim + -(-layer["out_features"] * per_row
                                                                     * fmt.index_bits // 8)
    assert 0 < storage["weight_storage_vs_fp16"] < 1
    x, t, y = calib.x[:4], calib.t[:4], calib.y[:4]
    with torch.no_grad():
        assert torch.equal(loaded.transformer(x, t, y).sample, qdit.transformer(x, t, y).sample)


def test_kmeans_method_is_the_uncalibrated_baseline(tiny, calib):
    recipe = get_recipe("vq2").with_overrides(weight_method="kmeans")
    qdit = quantize_model(tiny.transformer, recipe, calib, 1000, progress=False)
    assert qdit.calibration_losses == {}
    assert all(isinstance(m, VqLinear) for m in qdit.quant_linears().values())


def test_vq_recipes_reject_inconsistent_settings():
    with pytest.raises(UserError, match="does not apply to vq weights"):
        VqWeights(method="gptq")
    with pytest.raises(UserError, match="does not apply to int weights"):
        IntWeights(bits=4, method="kmeans")
    assert VqWeights(codewords=256, dim=4).bits == 2 and VqWeights(codewords=64, dim=2).bits == 3
    with pytest.raises(UserError, match="power-of-two number of codewords"):
        VqWeights(codewords=100, dim=4)
    with pytest.raises(UserError, match="vq weights have no setting group_size"):
        get_recipe("vq2").with_overrides(weight_group_size=32)
    with pytest.raises(UserError, match="int weights have no setting iterations"):
        get_recipe("w4a8").with_overrides(weight_iterations=10)
    with pytest.raises(UserError, match="dynamic activations only"):
        get_recipe("vq2-a8").with_overrides(activation_mode="static")
