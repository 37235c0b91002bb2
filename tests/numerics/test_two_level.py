"""Two-level INT4 weight scales (w4a8): the factor search against a brute-force reference, exact
products and their split, GPTQ on the two-level grid, the recipe rules, the checkpoint and the
`precisions` listing."""

import json

import pytest
import torch
from typer.testing import CliRunner

from exporter.errors import UserError
from exporter.numerics.primitives import PER_CHANNEL, IntFormat, choose_qparams, dequantize, quantize
from exporter.numerics.two_level import (
    INT4_GROUP_FACTORS,
    clear_low_mantissa,
    row_scales,
    search_factors,
    split_two_level,
    two_level_scales,
)
from exporter.quant.checkpoint import load_checkpoint
from exporter.quant.methods.gptq import gptq_quantize
from exporter.quant.recipes import RECIPES, get_recipe
from exporter.quant.weight_configs import Fp4Weights, IntWeights
from exporter.stages.calibrate import CalibrationOptions, run_calibrate
from tests.conftest import SAMPLER

INT4 = IntFormat(4)
GROUP = 32


def _weight(n: int = 48, k: int = 256, seed: int = 0) -> torch.Tensor:
    """Groups of very different magnitudes and a few outliers, as real layers have."""
    gen = torch.Generator().manual_seed(seed)
    magnitude = torch.rand(n, k // GROUP, 1, generator=gen).expand(-1, -1, GROUP).reshape(n, k)
    w = torch.randn(n, k, generator=gen) * magnitude
    w[torch.rand(n, k, generator=gen) < 0.01] *= 8
    return w


def _low_bits(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous().view(torch.int32) & 31


def test_factor_search_picks_the_lp_error_minimiser_among_1_to_16():
    w = _weight()
    s = row_scales(w, GROUP, clip_search=True)
    f = search_factors(w, s, GROUP)
    assert f.shape == (48, 256 // GROUP) and f.min() >= 1 and f.max() <= 16
    # brute force, one factor and one group at a time
    errors = torch.empty(16, *f.shape)
    for factor in range(1, 17):
        for g in range(f.shape[1]):
            block = w[:, g * GROUP:(g + 1) * GROUP]
            scale = (s * factor)[:, None]
            q = (block / scale).round().clamp(-8, 7)
            errors[factor - 1, :, g] = (block - q * scale).abs().pow(2.4).sum(1)
    chosen = errors.gather(0, (f - 1)[None]).squeeze(0)
    assert torch.all(chosen <= errors.amin(0) * (1 + 1e-6))
    assert (f < 16).any() and (f == 16).any()  # the search does choose


def test_products_are_exact_int8_operands_and_split_recovers_s_and_f():
    w = _weight(seed=1)
    w_scale = two_level_scales(w, GROUP, clip_search=True)
    s, f = row_scales(w, GROUP, clip_search=True), search_factors(w, row_scales(w, GROUP, clip_search=True), GROUP)
    assert torch.all(_low_bits(s) == 0)
    assert torch.equal(w_scale.double(), s.double()[:, None] * f.double())  # s * f exact in float32
    codes = quantize(w, w_scale, torch.zeros_like(w_scale), INT4, GROUP).long()
    operand = codes.reshape(48, -1, GROUP) * f[:, :, None]
    assert operand.min() >= -128 and operand.max() <= 112

    got_s, got_f = split_two_level(w_scale)
    assert torch.equal(got_s[:, None].double() * got_f.double(), w_scale.double())
    full = (f == 16).any(1)  # rows that use the largest factor: calibration's own s is the split's
    assert full.any() and torch.equal(got_s[full], s[full]) and torch.equal(got_f[full], f[full])


def test_split_recovers_a_constructed_grid_and_rejects_float_scales():
    gen = torch.Generator().manual_seed(2)
    s = clear_low_mantissa(torch.rand(20, generator=gen) * 1e-2 + 1e-4)
    f = torch.randint(*INT4_GROUP_FACTORS, (20, 6), generator=gen)
    f[:, 0] = 16
    got_s, got_f = split_two_level(s[:, None] * f.float())
    assert torch.equal(got_s, s) and torch.equal(got_f, f)

    float_scales, _ = choose_qparams(_weight(seed=3), INT4, GROUP)
    with pytest.raises(ValueError, match="not two-level"):
        split_two_level(float_scales)
    with pytest.raises(ValueError, match="not two-level"):  # a factor beyond 16
        split_two_level(torch.stack([s * 17, s], 1))
    unclear = s + s * 2.0**-22  # low mantissa bits set
    with pytest.raises(ValueError, match="not two-level"):
        split_two_level(unclear[:, None] * f.float())


def test_gptq_on_the_two_level_grid_beats_round_to_nearest():
    gen = torch.Generator().manual_seed(4)
    k, n = 256, 64
    x = torch.randn(4096, k, generator=gen) @ (torch.eye(k) + torch.randn(k, k, generator=gen) / k**0.5)
    x[:, :4] *= 10  # outlier channels
    w = _weight(n, k, seed=5)
    hessian = 2 * x.T @ x / len(x)
    reference = x @ w.T

    def error(codes, scale):
        out = x @ dequantize(codes, scale, torch.zeros_like(scale), INT4, GROUP).T
        return float((out - reference).norm() / reference.norm())

    codes, scale, zero = gptq_quantize(w, hessian, INT4, GROUP, clip_search=True, two_level=True)
    assert torch.all(zero == 0)
    s, f = split_two_level(scale)
    assert (codes.long().reshape(n, -1, GROUP) * f[:, :, None]).abs().max() <= 128
    fixed = row_scales(w, GROUP, clip_search=True)  # s is set up front from the unchanged weight
    assert torch.equal(torch.where((f == 16).any(1), s, fixed), fixed)
    rtn_scale = two_level_scales(w, GROUP, clip_search=True)
    rtn = error(quantize(w, rtn_scale, torch.zeros_like(rtn_scale), INT4, GROUP), rtn_scale)
    assert error(codes, scale) < 0.8 * rtn


def test_two_level_needs_symmetric_int4_groups_and_decides_deployability():
    for bad in (dict(bits=8), dict(bits=4, group_size=PER_CHANNEL), dict(bits=4, symmetric=False, group_size=32)):
        with pytest.raises(UserError, match="two-level weight scales need symmetric INT4"):
            IntWeights(**bad, scales="two-level")
    with pytest.raises(UserError, match="unknown fp4 weight scales 'two-level'"):
        Fp4Weights(group_size=32, scales="two-level")
    with pytest.raises(UserError, match="unknown int weight scales"):
        IntWeights(bits=4, group_size=32, scales="three-level")
    w4a8 = get_recipe("w4a8")
    assert w4a8.weight.scales == "two-level" and w4a8.weight.group_size == 32 and w4a8.weight.method == "gptq"
    assert get_recipe("w4a8-g32").weight == IntWeights(bits=4, group_size=32, method="gptq", clip_search=True)
    assert w4a8.activation == get_recipe("w4a8-g32").activation
    assert {n: r.deployable for n, r in RECIPES.items()} == {
        "w8a8": True, "w4a8": True, "w4a8-g32": False, "w4a8-naive": True, "w4a8-fp4": False, "fp4": True,
        "fp4-g32": False, "w4a4": True, "w4a4-g32": False, "vq2": True, "vq3": True, "vq2-a8": False, "vq3-a8": False}
    assert not w4a8.with_overrides(activation_group_size=32).deployable
    assert not w4a8.with_overrides(activation_mode="static", activation_group_size=32).deployable
    assert w4a8.with_overrides(activation_mode="static").deployable
    per_channel = w4a8.with_overrides(weight_group_size=PER_CHANNEL)  # one float scale per row: float scales
    assert per_channel.weight.scales == "float" and per_channel.deployable
    assert w4a8.with_overrides(weight_group_size=128).weight.scales == "two-level"


def test_checkpoint_keeps_two_level_scales_and_refuses_broken_ones(tiny, calib, tmp_path):
    run_calibrate(tiny, get_recipe("w4a8"), SAMPLER, CalibrationOptions(data=calib.save(tmp_path / "c")), tmp_path,
                  progress=False)
    folder = tmp_path / "quantized"
    loaded, manifest = load_checkpoint(folder)
    assert loaded.recipe == get_recipe("w4a8") and manifest["recipe"]["weight"]["scales"] == "two-level"
    assert all(layer["weight"]["scales"] == "two-level" for layer in manifest["layers"])
    for layer in loaded.quant_linears().values():
        split_two_level(layer.w_scale)

    old = json.loads((folder / "manifest.json").read_text())  # written before the field existed
    del old["recipe"]["weight"]["scales"]
    for layer in old["layers"]:
        del layer["weight"]["scales"]
    (folder / "manifest.json").write_text(json.dumps(old))
    assert load_checkpoint(folder)[0].recipe.weight.scales == "float"

    (folder / "manifest.json").write_text(json.dumps(manifest))
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(folder / "tensors.safetensors"))
    name = next(layer["name"] for layer in manifest["layers"] if layer["in_features"] > GROUP)
    w_scale = tensors[f"{name}.w_scale"]
    w_scale[0, 1] = w_scale[0, 0] * 17  # two factors 17 apart: no s fits both
    save_file(tensors, str(folder / "tensors.safetensors"))
    with pytest.raises(UserError, match=f"{name}.w_scale: scales are not two-level") as e:
        load_checkpoint(folder)
    assert "\n" not in str(e.value)


def test_precisions_say_which_recipes_deploy_at_full_speed():
    from exporter.cli import app
    from exporter.cli_options import PRECISION_HELP

    result = CliRunner().invoke(app, ["precisions"])
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line.split()[1] for line in result.output.splitlines() if line.split()[0] in RECIPES}
    assert lines == {name: "deployable" if r.deployable else "reference" for name, r in RECIPES.items()}
    assert lines["w4a8"] == "deployable" and lines["w4a8-g32"] == "reference"
    assert all(name in PRECISION_HELP for name in RECIPES)
