"""Calibration, quantization by recipe, checkpoint round trip and its bad inputs, on a small DiT."""

import json

import pytest
import torch

from exporter.errors import UserError
from exporter.models.loading import load_dit
from exporter.numerics.primitives import sqnr_db
from exporter.quant.calibration import CalibrationSet
from exporter.quant.checkpoint import load_checkpoint, loaded_from_checkpoint
from exporter.quant.policy import LayerPolicy, linear_roles
from exporter.quant.qlinear import DynamicActivationQuant, FineGroupActivationQuant, StaticActivationQuant
from exporter.quant.quantize import quantize_model
from exporter.quant.quantized_model import TimestepBuckets
from exporter.quant.recipes import RECIPES, get_recipe
from exporter.stages.calibrate import CalibrationOptions, run_calibrate
from tests.conftest import SAMPLER, save_tiny_pipeline


def test_calibration_set_covers_every_sampler_step_with_both_guidance_halves(tiny, calib, tmp_path):
    assert len(calib) == 6 * 4 * 2 and len(calib.timesteps) == 6
    assert (calib.y == 10).sum() == 6 * 4  # the null class, once per step and trajectory
    again = CalibrationSet.load(calib.save(tmp_path / "c.safetensors"))
    assert torch.equal(again.x, calib.x) and torch.equal(again.t, calib.t) and again.sampler == SAMPLER


def test_timestep_buckets_group_consecutive_steps_and_cover_all_timesteps():
    b = TimestepBuckets.build([900, 700, 500, 300, 100], 2, 1000)
    assert b.members == [[900, 700, 500], [300, 100]]
    assert b.bucket_of_t.shape == (1000,)
    assert b.bucket_of_t[900] == 0 and b.bucket_of_t[550] == 0 and b.bucket_of_t[350] == 1 and b.bucket_of_t[0] == 1
    with pytest.raises(UserError):
        TimestepBuckets.build([900, 100], 3, 1000)


def test_default_policy_follows_q_dit(tiny):
    roles = linear_roles(tiny.transformer)
    policy = LayerPolicy()
    quantized = [n for n, r in roles.items() if r in policy.weights]
    assert all(r not in policy.weights for r in ("timestep_embedder", "final_adaln", "final_linear"))
    assert len(quantized) == 2 * 7  # q, k, v, out, fc1, fc2, adaLN per block
    with pytest.raises(UserError, match="unknown layer roles"):
        LayerPolicy.parse("attn_qkv,conv", "")


@pytest.mark.parametrize("name", [n for n, r in RECIPES.items() if r.weight.kind != "vq"])  # VQ: test_vq4dit.py
def test_each_precision_quantizes_the_policy_layers_and_stays_close(tiny, calib, name):
    recipe = get_recipe(name)
    q = quantize_model(tiny.transformer, recipe, calib, 1000, progress=False)
    layers = q.quant_linears()
    assert set(layers) == set(q.roles)
    for layer_name, layer in layers.items():
        want_act = q.roles[layer_name] in recipe.policy.activations
        kind = DynamicActivationQuant if recipe.activation.mode == "dynamic" else StaticActivationQuant
        if recipe.activation.scales == "e4m3-groups":
            kind = FineGroupActivationQuant
        assert isinstance(layer.act, kind) if want_act else layer.act is None
        values = layer.fmt.decode(layer.codes)
        assert values.min() >= layer.fmt.qmin and values.max() <= layer.fmt.qmax
        assert layer.fmt.bits == recipe.weight.bits
    x, t, y = calib.x[:16], calib.t[:16], calib.y[:16]
    with torch.no_grad():
        ref, out = tiny.transformer(x, t, y).sample, q.transformer(x, t, y).sample
    assert sqnr_db(ref, out) > {"w8a8": 30, "fp4": 8, "fp4-g32": 8}.get(name, 12)


def test_static_scales_follow_the_timestep_per_sample(tiny, calib):
    q = quantize_model(tiny.transformer, get_recipe("w8a8"), calib, 1000, progress=False)
    layer = next(m for m in q.quant_linears().values() if isinstance(m.act, StaticActivationQuant))
    assert layer.act.scale.shape == (6,) and len(set(layer.act.scale.tolist())) > 1
    x = torch.randn(2, 4, layer.in_features)
    early, late = calib.timesteps[0], calib.timesteps[-1]
    q.context.timestep = torch.tensor([early, late])
    both = layer.act(x)
    q.context.timestep = torch.tensor([early])
    assert torch.equal(layer.act(x[:1]), both[:1])
    q.context.timestep = torch.tensor([late])
    assert torch.equal(layer.act(x[1:]), both[1:])


@pytest.mark.parametrize("name", ["w8a8", "w4a8", "w8a8-fp8", "w4a8-fp4", "fp4", "fp4-g32"])
def test_checkpoint_round_trip_is_bit_exact(tiny, calib, tmp_path, name):
    recipe = get_recipe(name) if name in RECIPES else get_recipe("w8a8").with_overrides(activation_kind="fp8")
    q, _ = run_calibrate(tiny, recipe, SAMPLER, CalibrationOptions(data=calib.save(tmp_path / "c")),
                         tmp_path, progress=False)
    loaded, manifest = loaded_from_checkpoint(tmp_path / "quantized", tiny)
    assert manifest["precision"] == recipe.name and len(manifest["layers"]) == len(q.roles)
    before = {k: v for k, v in q.transformer.state_dict().items()}
    after = loaded.transformer.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k
    x, t, y = calib.x[:8], calib.t[:8], calib.y[:8]
    with torch.no_grad():
        assert torch.equal(q.transformer(x, t, y).sample, loaded.transformer(x, t, y).sample)
    for png in ("layer_sqnr.png", "timestep_sqnr.png", "activation_ranges.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
    report = json.loads((tmp_path / "quant_report.json").read_text())
    assert set(report["layers"]) == set(q.roles)


def test_int4_weights_are_stored_packed(tiny, calib, tmp_path):
    from safetensors.torch import load_file

    run_calibrate(tiny, get_recipe("w4a8"), SAMPLER, CalibrationOptions(data=calib.save(tmp_path / "c")), tmp_path,
                  progress=False)
    tensors = load_file(str(tmp_path / "quantized" / "tensors.safetensors"))
    codes = tensors["transformer_blocks.0.ff.net.2.codes"]
    assert codes.dtype == torch.uint8 and codes.shape == (32, 128 // 2)


@pytest.fixture
def checkpoint(tiny, calib, tmp_path):
    run_calibrate(tiny, get_recipe("w8a8"), SAMPLER, CalibrationOptions(data=calib.save(tmp_path / "c")), tmp_path,
                  progress=False)
    return tmp_path / "quantized"


def test_corrupt_checkpoints_are_refused(checkpoint):
    tensors = checkpoint / "tensors.safetensors"
    good = tensors.read_bytes()
    tensors.write_bytes(good[: len(good) // 2])
    with pytest.raises(UserError, match="corrupt checkpoint tensors"):
        load_checkpoint(checkpoint)
    tensors.write_bytes(good)
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    manifest["layers"][0]["in_features"] += 1  # manifest no longer matches its tensors
    (checkpoint / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="corrupt checkpoint"):
        load_checkpoint(checkpoint)
    (checkpoint / "manifest.json").write_text("{")
    with pytest.raises(UserError, match="corrupt checkpoint manifest"):
        load_checkpoint(checkpoint)
    (checkpoint / "manifest.json").unlink()
    with pytest.raises(UserError, match="not a quantized checkpoint"):
        load_checkpoint(checkpoint)


def test_a_checkpoint_is_refused_for_another_model(checkpoint, tmp_path):
    other = load_dit(str(save_tiny_pipeline(tmp_path / "other", num_layers=2, seed=1)))
    with pytest.raises(UserError, match="was calibrated from"):
        loaded_from_checkpoint(checkpoint, other)


def test_unknown_precision_lists_the_valid_ones():
    with pytest.raises(UserError, match="unknown precision 'w3a5'; valid: w8a8, w4a8"):
        get_recipe("w3a5")


def test_fp4_weights_take_a_format_per_layer(tiny, calib):
    from exporter.numerics.fp4 import Fp4Format

    q = quantize_model(tiny.transformer, get_recipe("w4a8-fp4"), calib, 1000, progress=False)
    formats = {layer.fmt for layer in q.quant_linears().values()}
    assert formats and all(isinstance(f, Fp4Format) for f in formats)


def test_a_fixed_hadamard_block_rotates_the_quantized_activations_groups_only(tiny, calib):
    recipe = get_recipe("w8a8").with_overrides(hadamard=True, hadamard_block=8)
    q = quantize_model(tiny.transformer, recipe, calib, 1000, progress=False)
    blocks = {name: (layer.rotation_block, layer.act is not None) for name, layer in q.quant_linears().items()}
    assert {b for b, _ in blocks.values()} == {0, 8}
    assert all((b == 8) == quantized for b, quantized in blocks.values())


def test_hadamard_rotation_keeps_the_layer_and_is_stored(tiny, calib, tmp_path):
    from dataclasses import replace

    from exporter.numerics.hadamard import rotate

    recipe = replace(get_recipe("w8a8"), hadamard=True)
    q = quantize_model(tiny.transformer, recipe, calib, 1000, progress=False)
    for name, layer in q.quant_linears().items():
        assert layer.rotation_block == layer.in_features  # the tiny model's widths are powers of two
        original = tiny.transformer.get_submodule(name).weight
        # The stored weight is W R: rotating it back (R is symmetric and orthonormal) gives W.
        assert sqnr_db(original, rotate(layer.weight, layer.rotation_block)) > 35
    x, t, y = calib.x[:16], calib.t[:16], calib.y[:16]
    with torch.no_grad():
        assert sqnr_db(tiny.transformer(x, t, y).sample, q.transformer(x, t, y).sample) > 25
    run_calibrate(tiny, recipe, SAMPLER, CalibrationOptions(data=calib.save(tmp_path / "c")), tmp_path, progress=False)
    loaded, manifest = loaded_from_checkpoint(tmp_path / "quantized", tiny)
    assert manifest["recipe"]["hadamard"] and all(layer["rotation_block"] for layer in manifest["layers"])
    with torch.no_grad():
        reference = run_calibrate(tiny, recipe, SAMPLER, CalibrationOptions(data=tmp_path / "c"), tmp_path / "again",
                                  progress=False)[0].transformer(x, t, y).sample
        assert torch.equal(loaded.transformer(x, t, y).sample, reference)


def test_every_recipe_round_trips_through_its_manifest_form():
    import json
    from dataclasses import replace

    from exporter.quant.recipes import Recipe

    variants = list(RECIPES.values()) + [get_recipe("w4a8").with_overrides(hadamard=True, hadamard_block=64),
                                         replace(get_recipe("w4a8"), layer_groups=(("a.b", 64, -1),))]
    for recipe in variants:
        assert Recipe.from_dict(json.loads(json.dumps(recipe.to_dict()))) == recipe, recipe.name
