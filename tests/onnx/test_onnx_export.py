"""QDQ ONNX export: user-facing I/O, packed integer weights, per-timestep scales from the
timestep input, agreement with the PyTorch simulated model, determinism."""

from dataclasses import replace

import numpy as np
import onnx
import pytest
import torch

from exporter.models.loading import load_dit
from exporter.onnx.ort_check import run, session
from exporter.quant.quantize import quantize_model
from exporter.quant.recipes import get_recipe
from exporter.quant.weight_configs import IntWeights
from exporter.stages.export import ErrorStats, check_inputs, fp_onnx, qdq_onnx
from tests.conftest import SAMPLER

RECIPES = {
    "w8a8": get_recipe("w8a8"),
    "w4a8": get_recipe("w4a8"),
    "w4a8-naive": get_recipe("w4a8-naive"),
    "w4a8-static": get_recipe("w4a8").with_overrides(activation_mode="static"),
    "w4a8-act-groups": get_recipe("w4a8").with_overrides(activation_group_size=16),
    "uint4-weights": replace(get_recipe("w4a8"), weight=IntWeights(bits=4, symmetric=False, group_size=32)),
    "int8-per-tensor-weights": get_recipe("w8a8").with_overrides(weight_group_size=0),
    "w8-fp8-static": get_recipe("w8a8").with_overrides(activation_kind="fp8"),
    "w4-fp8-dynamic": get_recipe("w4a8").with_overrides(activation_kind="fp8"),
    "w4a8-fp4": get_recipe("w4a8-fp4"),
    "fp4": get_recipe("fp4"),
    "fp4-e3m0-weights": get_recipe("fp4").with_overrides(weight_format="e3m0"),
    "fp4-g32": get_recipe("fp4-g32"),
    "fp4-g32-e3m0-weights": get_recipe("fp4-g32").with_overrides(weight_format="e3m0"),
    "fp4-g32-e2m1-per-channel-weights": get_recipe("fp4-g32").with_overrides(weight_format="e2m1",
                                                                             weight_group_size=-1),
    "fp4-g32-static-activations": get_recipe("fp4-g32").with_overrides(activation_mode="static"),
    "w8a8-hadamard": get_recipe("w8a8").with_overrides(hadamard=True),
    "w4a4": get_recipe("w4a4").with_overrides(kd_iterations=2),
    "w4a4-symmetric-per-token": get_recipe("w4a4").with_overrides(activation_symmetric=False, activation_group_size=-1,
                                                                  kd_iterations=0),
}



def test_fp_graph_has_user_names_dynamic_batch_and_matches_torch(tiny):
    proto = fp_onnx(tiny.transformer)
    assert [i.name for i in proto.graph.input] == ["sample", "timestep", "class_labels"]
    assert [o.name for o in proto.graph.output] == ["out_sample"]
    sess = session(proto.SerializeToString())
    for batch in (1, 3):
        x, t, y = check_inputs(tiny.transformer, [900, 500, 0][:batch])
        with torch.no_grad():
            ref = tiny.transformer(x, t, y).sample.numpy()
        np.testing.assert_allclose(run(sess, x, t, y), ref, atol=1e-5)


@pytest.mark.parametrize("name", list(RECIPES))
def test_qdq_graph_agrees_with_the_simulated_model(tiny, calib, name):
    qdit = quantize_model(tiny.transformer, RECIPES[name], calib, 1000, progress=False)
    proto = qdq_onnx(qdit)
    ops = {n.op_type for n in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops and "QuantLinear" not in ops
    assert [i.name for i in proto.graph.input] == ["sample", "timestep", "class_labels"]
    assert proto.opset_import[0].version >= 21
    x, t, y = check_inputs(tiny.transformer, calib.timesteps)
    with torch.no_grad():
        simulated = qdit.transformer(x, t, y).sample.numpy()
        reference = tiny.transformer(x, t, y).sample.numpy()
    out = run(session(proto.SerializeToString()), x, t, y)
    exporter_error = ErrorStats.of(simulated, out)
    quantization_error = ErrorStats.of(reference, out)
    # Rounding can flip where ONNX and torch differ by an ulp before a QuantizeLinear: allow a
    # few such flips, never an error comparable to quantization itself.
    assert exporter_error.mean_abs < 0.05 * quantization_error.mean_abs, (exporter_error, quantization_error)
    assert exporter_error.max_abs < 0.05 * exporter_error.reference_max_abs


def test_int4_weights_are_packed_in_the_file(tiny, calib):
    qdit = quantize_model(tiny.transformer, get_recipe("w4a8"), calib, 1000, progress=False)
    proto = qdq_onnx(qdit)
    weights = {i.name: i for i in proto.graph.initializer if i.name.endswith(".weight_q")}
    assert len(weights) == len(qdit.roles)
    for name, tensor in weights.items():
        k, n = tensor.dims
        assert tensor.data_type == onnx.TensorProto.INT4 and len(tensor.raw_data) == (k * n + 1) // 2, name
    scale = next(i for i in proto.graph.initializer if i.name == "transformer_blocks.0.ff.net.2.weight_scale")
    assert list(scale.dims) == [128 // 32, 32]  # blocked along input channels


def test_static_scales_are_selected_from_the_timestep_input(tiny, calib):
    qdit = quantize_model(tiny.transformer, get_recipe("w8a8"), calib, 1000, progress=False)
    proto = qdq_onnx(qdit)
    gathers = [n for n in proto.graph.node if n.op_type == "Gather" and "timestep" in n.input]
    assert len(gathers) == 1  # one bucket lookup shared by every layer
    table = next(i for i in proto.graph.initializer if i.name == "timestep_bucket_table")
    assert list(table.dims) == [1000]
    sess = session(proto.SerializeToString())
    x, _, y = check_inputs(tiny.transformer, [0, 0])
    early = run(sess, x, torch.tensor([calib.timesteps[0]] * 2), y)
    late = run(sess, x, torch.tensor([calib.timesteps[0], calib.timesteps[-1]]), y)
    np.testing.assert_array_equal(early[0], late[0])  # a sample's scales depend on its own timestep


def test_export_is_deterministic(tiny, calib):
    qdit = quantize_model(tiny.transformer, get_recipe("w4a8"), calib, 1000, progress=False)
    assert qdq_onnx(qdit).SerializeToString() == qdq_onnx(qdit).SerializeToString()
    assert fp_onnx(tiny.transformer).SerializeToString() == fp_onnx(tiny.transformer).SerializeToString()


def test_external_data_round_trips_and_stays_inside_the_folder(tiny, calib, tmp_path):
    from exporter.errors import UserError
    from exporter.onnx.files import check_external_data, load_onnx, write_onnx

    qdit = quantize_model(tiny.transformer, get_recipe("w4a8"), calib, 1000, progress=False)
    inline = write_onnx(qdq_onnx(qdit), tmp_path / "inline" / "m.onnx")
    external = write_onnx(qdq_onnx(qdit), tmp_path / "external" / "m.onnx", external_data=True)
    assert (tmp_path / "external" / "m.onnx.data").stat().st_size > 0
    assert external.stat().st_size < inline.stat().st_size
    x, t, y = check_inputs(tiny.transformer, calib.timesteps)
    np.testing.assert_array_equal(run(session(inline), x, t, y), run(session(external), x, t, y))
    from onnx import numpy_helper

    loaded, expected = load_onnx(external), load_onnx(inline)
    assert [n.SerializeToString() for n in loaded.graph.node] == [n.SerializeToString() for n in expected.graph.node]
    for a, b in zip(loaded.graph.initializer, expected.graph.initializer):
        assert a.name == b.name and np.array_equal(numpy_helper.to_array(a), numpy_helper.to_array(b))

    proto = onnx.load(str(external), load_external_data=False)
    for bad in ("../secret.bin", "/etc/passwd"):
        for tensor in proto.graph.initializer:
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = bad
        (tmp_path / "external" / "evil.onnx").write_bytes(proto.SerializeToString())
        with pytest.raises(UserError, match="points outside the model's folder"):
            check_external_data(tmp_path / "external" / "evil.onnx")
        with pytest.raises(UserError, match="points outside the model's folder"):
            session(tmp_path / "external" / "evil.onnx")


def test_written_files_are_byte_identical(tiny, calib, tmp_path):
    from exporter.onnx.files import write_onnx

    qdit = quantize_model(tiny.transformer, get_recipe("w4a8"), calib, 1000, progress=False)
    a = write_onnx(qdq_onnx(qdit), tmp_path / "a" / "m.onnx", external_data=True)
    b = write_onnx(qdq_onnx(qdit), tmp_path / "b" / "m.onnx", external_data=True)
    assert a.read_bytes() == b.read_bytes()
    assert (a.parent / "m.onnx.data").read_bytes() == (b.parent / "m.onnx.data").read_bytes()


def test_embedders_repeated_in_every_block_are_stored_once(tmp_path):
    from tests.conftest import save_tiny_dit

    loaded = load_dit(str(save_tiny_dit(tmp_path / "m", num_layers=3)))
    model = loaded.transformer
    separate = len(fp_onnx(model).graph.initializer)
    for block in model.transformer_blocks[1:]:  # as in checkpoints converted from the original DiT
        block.norm1.emb.load_state_dict(model.transformer_blocks[0].norm1.emb.state_dict())
    proto = fp_onnx(model)
    assert len(proto.graph.initializer) == separate - 2 * 5  # 2 blocks x (2 linears x (w, b) + class table)
    x, t, y = check_inputs(model, [900, 0])
    with torch.no_grad():
        np.testing.assert_allclose(run(session(proto.SerializeToString()), x, t, y), model(x, t, y).sample.numpy(),
                                   atol=1e-5)


def test_export_refuses_a_checkpoint_whose_manifest_does_not_match_its_tensors(tiny, calib, tmp_path):
    import json

    from exporter.errors import UserError
    from exporter.stages.calibrate import CalibrationOptions, run_calibrate
    from exporter.stages.export import export_checkpoint

    run_calibrate(tiny, get_recipe("w4a8"), SAMPLER, CalibrationOptions(data=calib.save(tmp_path / "c")), tmp_path,
                  progress=False)
    manifest_path = tmp_path / "quantized" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["layers"][3]["out_features"] *= 2
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="corrupt checkpoint"):
        export_checkpoint(tmp_path / "quantized", tiny, tmp_path / "export")
    assert not (tmp_path / "export").exists()
