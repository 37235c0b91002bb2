"""A calibrated model's quantized Linears on the kernels (exporter/kernels/linear.py) compute what
the simulated model computes, on the same codes, to float reordering and FP16 rounding."""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("triton", reason="the kernels are Triton kernels")

from exporter.errors import UserError
from exporter.kernels.linear import KernelLinear, use_kernels
from exporter.models.loading import load_dit
from exporter.quant.calibration import collect_calibration_set
from exporter.quant.quantize import quantize_model
from exporter.quant.recipes import get_recipe
from tests.conftest import SAMPLER, save_tiny_pipeline


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """A two-block DiT 64 channels wide: the 4-bit kernel's weights come in chunks of 64 channels."""
    loaded = load_dit(str(save_tiny_pipeline(tmp_path_factory.mktemp("m") / "pipe", num_layers=2,
                                             attention_head_dim=32)))
    return loaded, collect_calibration_set(loaded, SAMPLER, trajectories=2, seed=0, progress=False)


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # the kernels' device: the GPU, else the interpreter


def _batch(calib):
    return calib.x[:16], calib.t[:16], calib.y[:16]


@pytest.mark.parametrize("precision", ["w4a8", "w8a8", "w4a4", "fp4", "vq2-a8", "vq2"])
def test_kernels_compute_the_simulated_layers(wide, precision):
    """Each layer on the kernels, fed what its simulated twin was fed: the same codes, so the same
    output to float reordering; FP16 rounding where the activations stay FP (adaLN, VQ without A8)."""
    loaded, calib = wide
    recipe = get_recipe(precision)
    if recipe.weight.kind == "vq":
        recipe = recipe.with_overrides(weight_method="kmeans")
    qdit = quantize_model(loaded.transformer, recipe, calib, 1000, progress=False)
    seen = {}
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, (i[0], o)))
             for n, m in qdit.quant_linears().items()]
    x, t, y = _batch(calib)
    with torch.no_grad():
        simulated = qdit.transformer(x, timestep=t, class_labels=y).sample
    for h in hooks:
        h.remove()
    on_kernels = copy.deepcopy(qdit)
    assert use_kernels(on_kernels) == len(seen) > 0
    assert not any(isinstance(m, KernelLinear) for m in qdit.transformer.modules())
    on_kernels.transformer.to(DEVICE)
    on_kernels.context.timestep = t.to(DEVICE)
    layers = {n: m for n, m in on_kernels.transformer.named_modules() if isinstance(m, KernelLinear)}
    assert layers.keys() == seen.keys()
    for name, layer in layers.items():
        inputs, expected = seen[name]
        with torch.no_grad():
            out = layer(inputs.to(DEVICE)).cpu()
        tolerance = 1e-5 if layer.quantized_input else 1e-3
        assert (out - expected).abs().max() <= tolerance * expected.abs().max(), name
    with torch.no_grad():
        whole = on_kernels.transformer(x.to(DEVICE), timestep=t.to(DEVICE), class_labels=y.to(DEVICE)).sample
    whole = whole.cpu()
    # Layer by layer the outputs agree; through the model, FP16 inputs and reordered sums flip a few
    # codes (FP4: a few group scales too) in later layers, and each FP4 flip moves by a coarser step.
    fp4_activations = recipe.activation is not None and recipe.activation.kind == "fp4"
    assert (whole - simulated).abs().max() <= (0.04 if fp4_activations else 0.02) * simulated.abs().max()


def test_float_group_scales_have_no_kernel(wide):
    loaded, calib = wide
    qdit = quantize_model(loaded.transformer, get_recipe("w4a8-g32").with_overrides(weight_method="rtn"), calib,
                          1000, progress=False)
    with pytest.raises(UserError, match="float group scales"):
        use_kernels(qdit)


def test_fp4_layers_need_power_of_two_groups_and_fp8_tensor_cores(wide, monkeypatch):
    loaded, calib = wide
    for recipe, message in ((get_recipe("fp4").with_overrides(weight_scales="float"), "float FP4 group scales"),
                            (get_recipe("fp4").with_overrides(activation_scales="float"),
                             "activations fp4e2m1 have no kernel")):
        reference = quantize_model(loaded.transformer, recipe.with_overrides(weight_method="rtn"), calib, 1000,
                                   progress=False)
        with pytest.raises(UserError, match=message):
            use_kernels(reference)
    qdit = quantize_model(loaded.transformer, get_recipe("fp4").with_overrides(weight_method="rtn"), calib, 1000,
                          progress=False)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *_: (8, 0))
    with pytest.raises(UserError, match=r"\(FP4\) runs on FP8 tensor cores, which sm_80 lacks") as e:
        use_kernels(copy.deepcopy(qdit))
    assert "\n" not in str(e.value)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *_: (8, 9))
    assert use_kernels(copy.deepcopy(qdit)) == len(qdit.quant_linears())
