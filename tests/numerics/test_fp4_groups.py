"""FP4 weights on power-of-two groups (`fp4`): the exponent search against a brute-force reference,
exact products and their split, GPTQ on the grid, the recipe rules and the checkpoint (its
activations: tests/numerics/test_fp4_fine_groups.py)."""

import json

import pytest
import torch

from exporter.errors import UserError
from exporter.numerics import fp4_groups
from exporter.numerics.fp4 import FP4_FORMATS, Fp4Format
from exporter.numerics.primitives import PER_CHANNEL, IntFormat, choose_qparams, dequantize, quantize, search_clip_ratio
from exporter.quant.checkpoint import load_checkpoint
from exporter.quant.methods.gptq import gptq_quantize
from exporter.quant.qlinear import DynamicActivationQuant, FineGroupActivationQuant
from exporter.quant.recipes import ActivationSpec, get_recipe
from exporter.quant.weight_configs import Fp4Weights, IntWeights
from exporter.stages.calibrate import CalibrationOptions, run_calibrate
from tests.conftest import SAMPLER

GROUP = 32
E2M1 = Fp4Format("e2m1")


def _weight(n: int = 48, k: int = 256, seed: int = 0) -> torch.Tensor:
    """Groups of very different magnitudes and a few outliers, as real layers have."""
    gen = torch.Generator().manual_seed(seed)
    magnitude = torch.rand(n, k // GROUP, 1, generator=gen).expand(-1, -1, GROUP).reshape(n, k) ** 3
    w = torch.randn(n, k, generator=gen) * magnitude
    w[torch.rand(n, k, generator=gen) < 0.01] *= 8
    return w


@pytest.mark.parametrize("fmt", FP4_FORMATS, ids=lambda f: f.kind)
def test_exponent_search_picks_the_lp_error_minimiser_in_the_formats_range(fmt):
    w = _weight()
    s = fp4_groups.row_scales(w, GROUP, fmt.kind, clip_search=True)
    t = fp4_groups.search_exponents(w, s, GROUP, fmt.kind)
    t_min, t_max = fp4_groups.EXPONENTS[fmt.kind]
    assert t.shape == (48, 256 // GROUP) and t.dtype == torch.int32 and t.min() >= t_min and t.max() <= t_max
    # brute force, one exponent and one group at a time
    errors = torch.empty(t_max - t_min + 1, *t.shape)
    for e in range(t_min, t_max + 1):
        for g in range(t.shape[1]):
            block = w[:, g * GROUP:(g + 1) * GROUP]
            scale = (s * 2.0**e)[:, None]
            errors[e - t_min, :, g] = (block - fmt.round(block / scale) * scale).abs().pow(2.4).sum(1)
    chosen = errors.gather(0, (t - t_min).long()[None]).squeeze(0)
    assert torch.all(chosen <= errors.amin(0) * (1 + 1e-6))
    assert (t < t_max).any() and (t == t_max).any()  # the search does choose


def test_row_scale_maps_the_largest_clipped_group_scale_onto_t_max():
    w = _weight(seed=1)
    for clip in (False, True):
        ratio = search_clip_ratio(w, E2M1, GROUP) if clip else 1.0
        scale, _ = choose_qparams(w, E2M1, GROUP, clip_ratio=ratio)
        s = fp4_groups.row_scales(w, GROUP, "e2m1", clip_search=clip)
        assert torch.equal(s * 2.0 ** fp4_groups.EXPONENTS["e2m1"][1], scale.amax(1))


def test_products_are_exact_e4m3_operands_and_split_recovers_s_and_t():
    w = _weight(seed=2)
    for fmt in FP4_FORMATS:
        w_scale = fp4_groups.pow2_scales(w, GROUP, fmt.kind, clip_search=True)
        s = fp4_groups.row_scales(w, GROUP, fmt.kind, clip_search=True)
        t = fp4_groups.search_exponents(w, s, GROUP, fmt.kind)
        assert torch.equal(w_scale.double(), s.double()[:, None] * torch.exp2(t.double()))  # exact in float32
        codes = quantize(w, w_scale, torch.zeros_like(w_scale), fmt, GROUP)
        operand = fp4_groups.e4m3_operand(codes, t, fmt.kind).view(torch.float8_e4m3fn).float()
        assert torch.equal(operand * s[:, None], dequantize(codes, w_scale, torch.zeros_like(w_scale), fmt, GROUP))

        got_s, got_t = fp4_groups.split_pow2(w_scale, fmt.kind)
        assert torch.equal(got_s[:, None] * torch.exp2(got_t.float()), w_scale)
        full = (t == fp4_groups.EXPONENTS[fmt.kind][1]).any(1)  # rows whose largest group took t_max
        assert full.any() and torch.equal(got_s[full], s[full]) and torch.equal(got_t[full], t[full])


def test_split_picks_t_max_where_it_can_and_rejects_other_scales():
    t_min, t_max = fp4_groups.EXPONENTS["e2m1"]
    gen = torch.Generator().manual_seed(3)
    s = torch.rand(20, generator=gen) * 1e-2 + 1e-4
    t = torch.randint(t_min, t_max + 1, (20, 6), generator=gen, dtype=torch.int32)
    t[:, 0] = t_max
    got_s, got_t = fp4_groups.split_pow2(s[:, None] * torch.exp2(t.float()), "e2m1")
    assert torch.equal(got_s, s) and torch.equal(got_t, t)
    # A row whose scales span less than the range: several splits; the one with t_max on top.
    narrow = s[:1, None] * torch.tensor([[1.0, 0.5, 0.25]])
    got_s, got_t = fp4_groups.split_pow2(narrow, "e2m1")
    assert got_t.tolist() == [[t_max, t_max - 1, t_max - 2]] and torch.equal(got_s, s[:1] / 2.0**t_max)
    # Where s = max / 2**t_max would be subnormal and inexact, the largest t on top that keeps it exact.
    m = float(torch.tensor(1.2345))  # a full float32 mantissa
    tiny = torch.tensor([[m * 2.0**-122, m * 2.0**-123]])
    got_s, got_t = fp4_groups.split_pow2(tiny, "e2m1")
    assert torch.equal(got_s[:, None] * torch.exp2(got_t.float()), tiny) and got_t.tolist() == [[4, 3]]

    float_scales, _ = choose_qparams(_weight(seed=4), E2M1, GROUP)
    for bad in (float_scales,  # float group scales
                torch.stack([s, s * 3], 1),  # not a power of two apart
                torch.stack([s, s * 2.0 ** -(t_max - t_min + 1)], 1),  # 2**12 apart: beyond the range
                torch.stack([s, torch.zeros_like(s)], 1), -s[:, None]):
        with pytest.raises(ValueError, match="not FP4 power-of-two groups"):
            fp4_groups.split_pow2(bad, "e2m1")
    wide_range = torch.stack([s, s * 2.0**-10], 1)  # in range for E2M1 (11 steps), not for E3M0 (8)
    fp4_groups.split_pow2(wide_range, "e2m1")
    with pytest.raises(ValueError, match="not FP4 power-of-two groups"):
        fp4_groups.split_pow2(wide_range, "e3m0")
    with pytest.raises(ValueError, match="float32"):
        fp4_groups.split_pow2(float_scales.double(), "e2m1")


def test_gptq_on_the_power_of_two_grid_beats_round_to_nearest():
    gen = torch.Generator().manual_seed(5)
    k, n = 256, 64
    x = torch.randn(4096, k, generator=gen) @ (torch.eye(k) + torch.randn(k, k, generator=gen) / k**0.5)
    x[:, :4] *= 10  # outlier channels
    w = _weight(n, k, seed=6)
    hessian = 2 * x.T @ x / len(x)
    reference = x @ w.T

    def error(codes, scale):
        out = x @ dequantize(codes, scale, torch.zeros_like(scale), E2M1, GROUP).T
        return float((out - reference).norm() / reference.norm())

    codes, scale, zero = gptq_quantize(w, hessian, E2M1, GROUP, clip_search=True, pow2_groups=True)
    assert torch.all(zero == 0)
    s, t = fp4_groups.split_pow2(scale, "e2m1")
    fixed = fp4_groups.row_scales(w, GROUP, "e2m1", clip_search=True)  # s set up front from the unchanged weight
    on_top = (t == fp4_groups.EXPONENTS["e2m1"][1]).any(1)
    assert on_top.any() and torch.equal(s[on_top], fixed[on_top])
    assert torch.equal(scale, fixed[:, None] * torch.exp2((torch.log2(scale / fixed[:, None])).round()))
    rtn_scale = fp4_groups.pow2_scales(w, GROUP, "e2m1", clip_search=True)
    rtn = error(quantize(w, rtn_scale, torch.zeros_like(rtn_scale), E2M1, GROUP), rtn_scale)
    assert error(codes, scale) < 0.8 * rtn
    with pytest.raises(ValueError, match="power-of-two group scales are for FP4"):
        gptq_quantize(w, hessian, IntFormat(4), GROUP, pow2_groups=True)


def test_format_choice_is_made_on_the_power_of_two_grid():
    w = _weight(seed=7)
    best, errors = fp4_groups.select_pow2_format(w, GROUP)
    for fmt in FP4_FORMATS:
        scale = fp4_groups.pow2_scales(w, GROUP, fmt.kind, clip_search=True)
        got = (dequantize(quantize(w, scale, torch.zeros_like(scale), fmt, GROUP), scale, torch.zeros_like(scale),
                          fmt, GROUP) - w).pow(2).mean()
        assert errors[fmt.name] == pytest.approx(float(got), rel=1e-6)
    assert errors[best.name] == min(errors.values())
    spec = Fp4Weights(group_size=GROUP, method="rtn", clip_search=True, scales="pow2-groups")
    assert spec.format_for(w) == best


def test_activation_spec_and_weight_spec_rules():
    spec = ActivationSpec(bits=4, mode="dynamic", group_size=32, kind="fp4", scales="e4m3-groups")
    assert spec.format == E2M1
    for bad in (dict(kind="int"), dict(mode="static"), dict(group_size=PER_CHANNEL)):
        with pytest.raises(UserError, match="e4m3-groups"):
            ActivationSpec(**{**dict(bits=4, mode="dynamic", group_size=32, kind="fp4"), **bad}, scales="e4m3-groups")
    with pytest.raises(UserError, match="unknown activation scales"):
        ActivationSpec(scales="pow2-groups")
    two_level = dict(bits=4, symmetric=False, mode="static", group_size=32)
    assert ActivationSpec(**two_level, scales="two-level").format == IntFormat(4, symmetric=False)
    for bad in (dict(symmetric=True), dict(mode="dynamic"), dict(group_size=PER_CHANNEL), dict(bits=8)):
        with pytest.raises(UserError, match="two-level activation scales"):
            ActivationSpec(**{**two_level, **bad}, scales="two-level")
    with pytest.raises(UserError, match="unknown int weight scales 'pow2-groups'"):
        IntWeights(bits=4, group_size=32, scales="pow2-groups")
    with pytest.raises(UserError, match="pow2-groups.*need FP4 weights in groups"):
        Fp4Weights(group_size=PER_CHANNEL, scales="pow2-groups")

    fp4, reference = get_recipe("fp4"), get_recipe("fp4-g32")
    assert fp4.weight.scales == "pow2-groups" and fp4.activation.scales == "e4m3-groups"
    assert fp4.hadamard and fp4.hadamard_block == 32  # each activation group rotated by the quantizer
    assert fp4.weight.method == "gptq" and fp4.weight.clip_search and fp4.weight.format == "auto"
    assert reference.hadamard and reference.weight.scales == "float" and reference.activation.scales == "float"
    assert fp4.deployable and not reference.deployable
    assert fp4.with_overrides(hadamard=False).deployable
    assert not fp4.with_overrides(hadamard_block=0).deployable  # the kernels rotate groups of 32 only
    assert not fp4.with_overrides(hadamard_block=64).deployable
    with pytest.raises(UserError, match="power of two"):
        fp4.with_overrides(hadamard_block=48)
    static = fp4.with_overrides(activation_mode="static")  # no fine static group scales: float ones
    assert static.activation.scales == "float" and not static.deployable
    assert fp4.with_overrides(weight_group_size=PER_CHANNEL).weight.scales == "float"
    assert not fp4.with_overrides(activation_group_size=16).deployable  # the kernels' groups are 32
    assert fp4.with_overrides(activation_group_size=16).activation.scales == "e4m3-groups"


def test_checkpoint_keeps_power_of_two_groups_and_refuses_broken_ones(tiny, calib, tmp_path):
    q, _ = run_calibrate(tiny, get_recipe("fp4"), SAMPLER, CalibrationOptions(data=calib.save(tmp_path / "c")),
                         tmp_path, progress=False)
    folder = tmp_path / "quantized"
    loaded, manifest = load_checkpoint(folder)
    assert loaded.recipe == get_recipe("fp4") and manifest["recipe"]["weight"]["scales"] == "pow2-groups"
    assert all(layer["weight"]["scales"] == "pow2-groups" for layer in manifest["layers"])
    acts = [layer["activation"] for layer in manifest["layers"] if layer["activation"]["mode"] != "none"]
    assert acts and all(a["scales"] == "e4m3-groups" and a["group_size"] == GROUP for a in acts)
    for name, layer in loaded.quant_linears().items():
        fp4_groups.split_pow2(layer.w_scale, layer.fmt.kind)
        assert isinstance(layer.act, FineGroupActivationQuant) == (q.quant_linears()[name].act is not None)
        assert not isinstance(layer.act, DynamicActivationQuant)
    x, t, y = calib.x[:8], calib.t[:8], calib.y[:8]
    with torch.no_grad():
        assert torch.equal(q.transformer(x, t, y).sample, loaded.transformer(x, t, y).sample)

    from safetensors.torch import load_file, save_file

    tensors = load_file(str(folder / "tensors.safetensors"))
    name = next(layer["name"] for layer in manifest["layers"] if layer["in_features"] > GROUP)
    w_scale = tensors[f"{name}.w_scale"].clone()
    tensors[f"{name}.w_scale"][0, 0] *= 3  # no longer a power of two times the row's scale
    save_file(tensors, str(folder / "tensors.safetensors"))
    with pytest.raises(UserError, match=f"{name}.w_scale: scales are not FP4 power-of-two groups") as e:
        load_checkpoint(folder)
    assert "\n" not in str(e.value)
    tensors[f"{name}.w_scale"] = w_scale
    save_file(tensors, str(folder / "tensors.safetensors"))
    load_checkpoint(folder)

    broken = json.loads((folder / "manifest.json").read_text())
    layer = next(layer for layer in broken["layers"] if layer["activation"]["mode"] != "none")
    layer["activation"]["format"] = "int8"
    (folder / "manifest.json").write_text(json.dumps(broken))
    with pytest.raises(UserError, match="fine group activations are FP4 E2M1"):
        load_checkpoint(folder)
    layer["activation"]["scales"] = "pow2-groups"  # an earlier activation grid: refused, not misread
    (folder / "manifest.json").write_text(json.dumps(broken))
    with pytest.raises(UserError, match="unknown activation scales 'pow2-groups'"):
        load_checkpoint(folder)
