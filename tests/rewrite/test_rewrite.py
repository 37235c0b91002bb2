"""Graph rewrite: quantized GEMMs found by pattern and replaced by plugin nodes whose inputs are the
Triton kernels' operands, the reference functions that run them in ONNX Runtime, the FLOAT16
boundaries, the TensorRT variant, reference precisions refused, and the contract's C++ header."""

import shutil
import subprocess

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, numpy_helper

from exporter.contract.header import HEADER, generate
from exporter.contract.plugin_contract import CONTRACTS, DOMAIN, FP4_GEMM, INT_GEMM
from exporter.errors import UserError
from exporter.kernels.linear import QuantizedWeight, activation_kind, kernel_weights
from exporter.kernels.variants import AOT_LAYOUTS
from exporter.models.loading import load_dit
from exporter.numerics.packing import pack_int4
from exporter.numerics.two_level_activations import kernel_tables
from exporter.onnx.files import write_onnx
from exporter.onnx.ort_check import session
from exporter.quant.calibration import collect_calibration_set
from exporter.quant.quantize import quantize_model
from exporter.quant.recipes import DEPLOY_INSTEAD, get_recipe
from exporter.stages.export import check_inputs, fp_onnx, qdq_onnx
from exporter.stages.rewrite import check_deployable, rewrite_graph, run_rewrite
from exporter.stages.validate import run_rewrite_validation
from tests.conftest import SAMPLER, save_tiny_pipeline

PRECISIONS = ["w8a8", "w4a8", "w4a8-naive", "w4a4", "fp4", "vq3", "vq2"]  # the deployable ones
REFERENCES = ["w4a4-g32", "fp4-g32"]


def _quantize(transformer, calib, precision, **overrides):
    recipe = get_recipe(precision).with_overrides(**overrides)
    if recipe.weight.kind == "vq":
        recipe = recipe.with_overrides(weight_iterations=5)
    elif recipe.weight.method == "gptq":
        recipe = recipe.with_overrides(weight_method="rtn")  # the same scales and layouts, calibrated faster
    if recipe.kd_iterations:
        recipe = recipe.with_overrides(kd_iterations=3)
    return quantize_model(transformer, recipe, calib, 1000, progress=False)


@pytest.fixture(scope="module")
def qdq_graphs(tiny, calib, tmp_path_factory):
    """32 channels wide: the kernels' one-byte-per-weight layouts (K below the 4-bit K step)."""
    folder = tmp_path_factory.mktemp("rw")
    graphs = {}
    for precision in PRECISIONS + REFERENCES:
        qdit = _quantize(tiny.transformer, calib, precision)
        graphs[precision] = (write_onnx(qdq_onnx(qdit), folder / f"{precision}.qdq.onnx"), qdit)
    return graphs


@pytest.fixture(scope="module")
def wide_graphs(tmp_path_factory):
    """128 channels wide: the 4-bit layouts (K a multiple of the kernels' K step)."""
    folder = tmp_path_factory.mktemp("rw-wide")
    wide = load_dit(str(save_tiny_pipeline(folder / "pipe", num_layers=1, attention_head_dim=64)))
    calib = collect_calibration_set(wide, SAMPLER, trajectories=1, seed=0, progress=False)
    graphs = {}
    for precision, overrides in (("w4a8", {}), ("w4a4", {}), ("fp4", {})):
        qdit = _quantize(wide.transformer, calib, precision, **overrides)
        graphs[precision] = (write_onnx(qdq_onnx(qdit), folder / f"{precision}.qdq.onnx"), qdit, wide)
    return graphs


def _feeds(transformer):
    sample, timestep, labels = check_inputs(transformer, [999, 420, 0])
    return {"sample": sample.numpy(), "timestep": timestep.numpy(), "class_labels": labels.numpy()}


def _fields(node) -> dict:
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    return {k: v.decode() if isinstance(v, bytes) else v for k, v in attrs.items()}


def _check_rewritten(path, qdit, transformer):
    result = run_rewrite(path)
    assert result.not_replaced == {}
    assert sum(result.replaced.values()) == len(qdit.quant_linears())
    rewritten, trt = onnx.load(result.rewritten_onnx), onnx.load(result.tensorrt_onnx)
    onnx.checker.check_model(rewritten, full_check=True)
    plugins = [n for n in trt.graph.node if n.domain == DOMAIN]
    assert len(plugins) == len(qdit.quant_linears()) and not trt.functions
    assert {(f.name, f.overload) for f in rewritten.functions} == {(n.op_type, n.overload) for n in plugins}
    producers = {o: n for n in trt.graph.node for o in n.output}
    consumers = {i: n for n in trt.graph.node for i in n.input}
    for node in plugins:
        fields = _fields(node)
        contract = CONTRACTS[node.op_type]
        assert fields.pop("plugin_version") == contract.version and fields.pop("plugin_namespace") == contract.namespace
        contract.check(fields)
        assert len(node.input) == len(contract.present_inputs(fields))
        # FLOAT16 in and out, cast from and back to the float32 graph
        for cast, tensor in ((producers[node.input[0]], node.input[0]), (consumers[node.output[0]], node.output[0])):
            to = TensorProto.FLOAT16 if tensor == node.input[0] else TensorProto.FLOAT
            assert cast.op_type == "Cast" and cast.attribute[0].i == to, tensor
    # No quantized-type tensor is left for TensorRT to dequantize: the plugins hold all codes.
    assert not any(n.op_type in ("DequantizeLinear", "QuantizeLinear") for n in trt.graph.node)
    feeds = _feeds(transformer)
    fp16io = session(result.qdq_fp16io_onnx).run(None, feeds)[0]
    actual = session(result.rewritten_onnx).run(None, feeds)[0]
    np.testing.assert_allclose(actual, fp16io, rtol=0, atol=1e-6 * np.abs(fp16io).max())
    # The FLOAT16 boundaries are the only difference to the QDQ graph: a rounding, not an error.
    qdq = session(path).run(None, feeds)[0]
    assert np.abs(actual - qdq).max() <= 0.05 * np.abs(qdq).max()
    return result, trt


@pytest.mark.parametrize("precision", PRECISIONS)
def test_every_quantized_gemm_becomes_a_plugin_that_computes_the_same(qdq_graphs, tiny, precision):
    path, qdit = qdq_graphs[precision]
    _, trt = _check_rewritten(path, qdit, tiny.transformer)
    for node in (n for n in trt.graph.node if n.domain == DOMAIN and n.op_type != "DitVqGemm"):
        fields = _fields(node)
        if fields["in_features"] % 128:  # below the 4-bit K step: one byte per weight
            assert fields["weight_bits"] == 8, node.name


def _initializers(trt) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in trt.graph.initializer}


@pytest.mark.parametrize("precision", ["w4a8", "w4a4", "fp4"])
def test_plugin_inputs_are_the_kernels_operands_of_the_checkpoint(wide_graphs, precision):
    """Read back from the QDQ graph, the plugins' weights are byte for byte what the kernels'
    mapping (exporter/kernels/linear.py) makes of the calibrated layers, in the 4-bit layouts."""
    path, qdit, wide = wide_graphs[precision]
    _, trt = _check_rewritten(path, qdit, wide.transformer)
    tensors = _initializers(trt)
    nodes = {n.name.split(".MatMul")[0]: n for n in trt.graph.node if n.domain == DOMAIN}
    for name, layer in qdit.quant_linears().items():
        node = nodes[name]
        fields = _fields(node)
        expected = kernel_weights(QuantizedWeight.of(name, layer), activation_kind(layer), AOT_LAYOUTS)
        ports = [p.name for p in CONTRACTS[node.op_type].present_inputs(fields)]
        weight = tensors[node.input[ports.index("weight")]]
        assert fields["weight_bits"] == (4 if expected.four_bit else 8)
        np.testing.assert_array_equal(weight.view(np.uint8), expected.codes.view(torch.uint8).numpy())
        np.testing.assert_array_equal(tensors[node.input[ports.index("weight_scale")]], expected.w_scale.numpy())
        if expected.four_bit:
            side = "weight_factor" if node.op_type == "DitIntGemm" else "weight_offset"
            values = expected.factor if node.op_type == "DitIntGemm" else expected.offset
            np.testing.assert_array_equal(tensors[node.input[ports.index(side)]].view(np.uint8), values.numpy())
        if layer.rotation_block:  # fp4: the quantizer rotates each group, the plugin takes x as it was
            assert fields["act_format"] == "fp4e2m1_hadamard" and layer.rotation_block == 32, name
            assert not any(n.op_type == "MatMul" and tensors.get(n.input[1], np.empty(0)).shape == (32, 32)
                           for n in trt.graph.node)  # no rotation left for TensorRT
    assert any(_fields(n)["weight_bits"] == 4 for n in nodes.values())
    assert (precision == "fp4") == any(layer.rotation_block for layer in qdit.quant_linears().values())


@pytest.mark.parametrize("precision", REFERENCES)
def test_reference_precisions_get_no_plugins(qdq_graphs, precision):
    path, qdit = qdq_graphs[precision]
    with pytest.raises(UserError, match=f"precision {precision} is an accuracy reference with no plugin kernel: "
                                        f"deploy {DEPLOY_INSTEAD[precision]} instead") as e:
        check_deployable(qdit.recipe)
    assert "\n" not in str(e.value)
    # The graph alone: no layer whose activations or scales no kernel takes becomes a plugin.
    try:
        result = rewrite_graph(onnx.load(str(path)))
    except UserError as e:
        assert "no quantized GEMM could be replaced by a plugin" in str(e)
        return
    with_act = [n for n, layer in qdit.quant_linears().items() if layer.act is not None]
    assert len(result.not_replaced) >= len(with_act) > 0


def _static_plugin_inputs(path, qdit, act_format: str):
    """For each layer with static activations: the layer and its plugin's inputs by port."""
    trt = rewrite_graph(onnx.load(str(path))).tensorrt
    tensors = _initializers(trt)
    nodes = {n.name.split(".MatMul")[0]: n for n in trt.graph.node if n.domain == DOMAIN}
    static = {name: layer for name, layer in qdit.quant_linears().items() if layer.act is not None}
    assert static
    for name, layer in static.items():
        fields = _fields(nodes[name])
        assert (fields["act_mode"], fields["act_format"]) == ("static", act_format)
        ports = [p.name for p in INT_GEMM.present_inputs(fields)]
        inputs = dict(zip(ports, nodes[name].input))
        yield layer, {port: tensors[tensor] for port, tensor in inputs.items() if tensor in tensors}


def test_static_tables_reach_the_plugins_unchanged(qdq_graphs):
    for layer, inputs in _static_plugin_inputs(*qdq_graphs["w8a8"], "int8"):
        np.testing.assert_array_equal(inputs["act_scale_table"], layer.act.scale.numpy())


def test_two_level_uint4_tables_reach_the_plugins_as_the_kernel_takes_them(wide_graphs):
    """w4a4's static UINT4 groups: the plugin's bucket scales and (factor, zero point) bytes are
    the checkpoint's tables split as the kernels' mapping splits them, s f the checkpoint's scale."""
    path, qdit, _ = wide_graphs["w4a4"]
    for layer, inputs in _static_plugin_inputs(path, qdit, "uint4"):
        s, groups = kernel_tables(layer.act.scale, layer.act.zero)
        got_s, got_groups = inputs["act_scale_table"], inputs["act_groups"].view(np.uint8)
        np.testing.assert_array_equal(got_s, s.numpy())
        np.testing.assert_array_equal(got_groups, groups.numpy())
        np.testing.assert_array_equal(got_s[:, None] * got_groups[..., 0].astype(np.float32), layer.act.scale.numpy())
        assert got_groups.shape == (len(s), layer.in_features // 32, 2)


def test_rewrite_validation_passes_and_catches_a_wrong_plugin_input(qdq_graphs, tiny, calib, tmp_path):
    path, qdit = qdq_graphs["w4a8"]
    result = run_rewrite(path)
    reference = result.qdq_fp16io_onnx
    report = run_rewrite_validation(reference, result.rewritten_onnx, tiny.transformer, calib.timesteps[:3],
                                    tmp_path, calibration=calib)
    assert report["rewrite_check"]["passed"] and (tmp_path / "rewrite_validation.md").exists()
    proto = onnx.load(result.rewritten_onnx)
    scale = next(t for t in proto.graph.initializer if t.name.endswith(".weight_scale"))
    scale.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(scale) * np.float32(1.01), scale.name))
    broken = write_onnx(proto, tmp_path / "broken.onnx")
    with pytest.raises(UserError, match="rewritten vs QDQ graph, output out_sample"):
        run_rewrite_validation(reference, broken, tiny.transformer, calib.timesteps[:3], tmp_path, calibration=calib)


def test_unsupported_layers_are_reported_with_the_reason(qdq_graphs):
    path, qdit = qdq_graphs["w4a8"]
    proto = onnx.load(str(path))
    dq = next(n for n in proto.graph.node if n.op_type == "DequantizeLinear"
              and any(t.name == n.input[0] and t.data_type == TensorProto.INT4 for t in proto.graph.initializer))
    scale = next(t for t in proto.graph.initializer if t.name == dq.input[1])
    ones = pack_int4(torch.ones(int(np.prod(scale.dims)), dtype=torch.int8)).numpy().tobytes()
    zero = onnx.helper.make_tensor("zero_point", TensorProto.INT4, list(scale.dims), ones, raw=True)
    proto.graph.initializer.append(zero)
    dq.input.append("zero_point")
    result = rewrite_graph(proto)
    assert list(result.not_replaced.values()) == ["weights with zero points: the kernels take symmetric weights"]
    assert sum(result.replaced.values()) == len(qdit.quant_linears()) - 1


def test_a_graph_without_quantized_gemms_is_a_clear_error(tiny, tmp_path):
    fp = write_onnx(fp_onnx(tiny.transformer), tmp_path / "fp.onnx")
    with pytest.raises(UserError, match="no quantized GEMM in this graph"):
        run_rewrite(fp)
    assert not list(tmp_path.glob("*.rewritten.onnx")) and not list(tmp_path.glob("*.trt.onnx"))


def test_malformed_or_missing_graphs_are_clear_errors(qdq_graphs, tmp_path):
    path, _ = qdq_graphs["w4a8"]
    truncated = tmp_path / "w4a8.qdq.onnx"
    truncated.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(UserError, match="malformed|cannot read"):
        run_rewrite(truncated)
    with pytest.raises(UserError, match="does not exist"):
        run_rewrite(tmp_path / "missing.qdq.onnx")
    assert not list(tmp_path.glob("*.rewritten.onnx"))


def test_contract_rejects_fields_that_do_not_fit():
    good = dict(in_features=256, out_features=32, weight_bits=4, act_mode="dynamic", act_format="int8", has_bias=1)
    INT_GEMM.check(good)
    with pytest.raises(ValueError, match="act_mode must be one of"):
        INT_GEMM.check({**good, "act_mode": "sometimes"})
    with pytest.raises(ValueError, match="fields missing \\['has_bias'\\]"):
        INT_GEMM.check({k: v for k, v in good.items() if k != "has_bias"})
    with pytest.raises(ValueError, match="act_mode none takes act_format none"):
        INT_GEMM.check({**good, "act_mode": "none"})
    with pytest.raises(ValueError, match="in_features a multiple of the kernels' K step, 128"):
        INT_GEMM.check({**good, "in_features": 64})
    with pytest.raises(ValueError, match="out_features must be an integer >= 16, a multiple of 16"):
        INT_GEMM.check({**good, "out_features": 4})
    fp4 = {**good, "weight_format": "e1m2", "act_format": "fp4e2m1"}
    FP4_GEMM.check(fp4)
    with pytest.raises(ValueError, match="act_mode must be one of none, dynamic"):
        FP4_GEMM.check({**fp4, "act_mode": "static"})
    with pytest.raises(ValueError, match="weight_format must be one of e2m1, e3m0, e1m2"):
        FP4_GEMM.check({**fp4, "weight_format": "e5m2"})
    assert [p.name for p in INT_GEMM.present_inputs({**good, "act_mode": "static"})] == [
        "x", "weight", "weight_factor", "weight_scale", "act_scale_table", "timestep_bucket", "bias"]


def test_generated_header_is_current():
    assert HEADER.read_text() == generate(), "run: python -m exporter.contract.header > " + str(HEADER)


@pytest.mark.skipif(shutil.which("g++") is None, reason="no C++ compiler")
def test_header_compiles_and_parses_plugin_fields(tmp_path):
    source = tmp_path / "check.cpp"
    source.write_text(r'''
#include "dit_export/plugin_contract.h"
#include <cstdio>
using namespace dit_export;
int main() {
    int32_t k = 256, n = 32, bits = 4, one = 1, k64 = 64;
    FieldView f[] = {{"in_features", FieldType::kInt32, &k, 1}, {"out_features", FieldType::kInt32, &n, 1},
                     {"weight_bits", FieldType::kInt32, &bits, 1}, {"act_mode", FieldType::kChar, "static", 7},
                     {"act_format", FieldType::kChar, "int8", 5}, {"has_bias", FieldType::kInt32, &one, 1}};
    DitIntGemmFields fields;
    std::string ok = parseDitIntGemmFields(f, 6, fields);
    DitIntGemmInputs in = ditIntGemmInputs(fields);
    std::string missing = parseDitIntGemmFields(f, 5, fields);
    f[0].data = &k64;
    std::string rule = parseDitIntGemmFields(f, 6, fields);
    f[0].data = &k; f[3].data = "sometimes"; f[3].length = 10;
    std::string bad = parseDitIntGemmFields(f, 6, fields);
    std::printf("%s|%d %d %d %d|%s|%s|%s\n", ok.c_str(), in.count, in.weight_factor, in.act_scale_table, in.bias,
                missing.c_str(), rule.c_str(), bad.c_str());
}
''')
    binary = tmp_path / "check"
    subprocess.run(["g++", "-std=c++17", "-Wall", "-Wextra", "-Werror", f"-I{HEADER.parents[1]}", str(source), "-o",
                    str(binary)], check=True)
    out = subprocess.run([str(binary)], check=True, capture_output=True, text=True).stdout.strip()
    assert out == ("|7 2 4 6|DitIntGemm: missing field has_bias|"
                   "DitIntGemm: 4-bit weights need in_features a multiple of the kernels' K step, 128|"
                   "DitIntGemm: field act_mode must be one of none, static, dynamic")
