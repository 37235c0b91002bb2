"""Graph rewrite: quantized GEMMs found by pattern and replaced by plugin nodes, the reference
functions that run them in ONNX Runtime, the TensorRT variant, and the contract's C++ header."""

import shutil
import subprocess

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, numpy_helper

from exporter.errors import UserError
from exporter.export.onnx_export import check_inputs, fp_onnx, qdq_onnx
from exporter.export.onnx_files import write_onnx
from exporter.export.ort_check import session
from exporter.quant.packing import pack_int4
from exporter.quant.quantize import quantize_model
from exporter.quant.recipes import get_recipe
from exporter.rewrite.contract import CONTRACTS, DOMAIN, INT_GEMM
from exporter.rewrite.header import HEADER, generate
from exporter.rewrite.rewrite import rewrite_graph, run_rewrite
from exporter.validate import run_rewrite_validation

PRECISIONS = ["w8a8", "w4a8", "w4a8-naive", "w4a4", "w4a8-fp4", "fp4-g32", "vq3", "vq2-a8"]


@pytest.fixture(scope="module")
def qdq_graphs(tiny, calib, tmp_path_factory):
    folder = tmp_path_factory.mktemp("rw")
    graphs = {}
    for precision in PRECISIONS + ["fp4"]:
        recipe = get_recipe(precision)
        if recipe.weight.kind == "vq":
            recipe = recipe.with_overrides(weight_vq_iterations=5)
        if recipe.kd_iterations:
            recipe = recipe.with_overrides(kd_iterations=3)
        qdit = quantize_model(tiny.transformer, recipe, calib, 1000, progress=False)
        graphs[precision] = (write_onnx(qdq_onnx(qdit), folder / f"{precision}.qdq.onnx"), qdit)
    return graphs


def _feeds(transformer):
    sample, timestep, labels = check_inputs(transformer, [999, 420, 0])
    return {"sample": sample.numpy(), "timestep": timestep.numpy(), "class_labels": labels.numpy()}


@pytest.mark.parametrize("precision", PRECISIONS)
def test_every_quantized_gemm_becomes_a_plugin_that_computes_the_same(qdq_graphs, tiny, precision):
    path, qdit = qdq_graphs[precision]
    result = run_rewrite(path)
    assert result["not_replaced"] == {}
    assert sum(result["replaced"].values()) == len(qdit.quant_linears())
    rewritten, trt = onnx.load(result["rewritten_onnx"]), onnx.load(result["tensorrt_onnx"])
    onnx.checker.check_model(rewritten, full_check=True)
    plugins = [n for n in trt.graph.node if n.domain == DOMAIN]
    assert len(plugins) == len(qdit.quant_linears()) and not trt.functions
    assert {(f.name, f.overload) for f in rewritten.functions} == {(n.op_type, n.overload) for n in plugins}
    for node in plugins:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        contract = CONTRACTS[node.op_type]
        assert attrs.pop("plugin_version") == contract.version.encode()
        assert attrs.pop("plugin_namespace") == contract.namespace.encode()
        fields = {k: v.decode() if isinstance(v, bytes) else v for k, v in attrs.items()}
        contract.check(fields)
        assert len(node.input) == len(contract.present_inputs(fields))
    # No quantized-type tensor is left for TensorRT to dequantize: the plugins hold all codes.
    assert not any(n.op_type in ("DequantizeLinear", "QuantizeLinear") for n in trt.graph.node)
    feeds = _feeds(tiny.transformer)
    expected = session(path).run(None, feeds)[0]
    actual = session(result["rewritten_onnx"]).run(None, feeds)[0]
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-5 * np.abs(expected).max())


def test_fp4_activations_on_power_of_two_groups_stay_with_the_reason(qdq_graphs, tiny):
    """No plugin computes the power-of-two group scales of `fp4`'s activations: those layers stay as
    QDQ subgraphs, listed with the reason; its weight-only layers (adaLN) become DitFp4Gemm nodes."""
    path, qdit = qdq_graphs["fp4"]
    result = rewrite_graph(onnx.load(str(path)))
    layers = qdit.quant_linears()
    with_act = [name for name, layer in layers.items() if layer.act is not None]
    assert with_act and len(result.not_replaced) == len(with_act)
    assert set(result.not_replaced.values()) == {
        "dynamic activation scales not computed as max|x| / qmax (e.g. FP4 on fine groups: a float per "
        "token times m 2^t per group), which no plugin takes"}
    assert result.replaced == {"DitFp4Gemm": len(layers) - len(with_act)}
    written = run_rewrite(path)
    feeds = _feeds(tiny.transformer)
    expected = session(path).run(None, feeds)[0]
    actual = session(written["rewritten_onnx"]).run(None, feeds)[0]
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-5 * np.abs(expected).max())


def test_plugins_carry_the_layers_fields(qdq_graphs):
    path, qdit = qdq_graphs["fp4-g32"]
    trt = rewrite_graph(onnx.load(str(path))).tensorrt
    fields = {n.name: {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute} for n in trt.graph.node
              if n.domain == DOMAIN}
    by_layer = {name.split(".MatMul")[0]: f for name, f in fields.items()}
    for name, layer in qdit.quant_linears().items():
        f = by_layer[name]
        assert (f["in_features"], f["out_features"]) == (layer.in_features, layer.out_features)
        assert f["rotation_block"] == layer.rotation_block
        assert f["act_format"] == (b"fp4e2m1" if layer.act is not None else b"none")
        assert f["weight_format"] == layer.fmt.kind.encode() and f["group_size"] == 32


def test_static_asymmetric_group_tables_reach_the_plugins_unchanged(qdq_graphs):
    path, qdit = qdq_graphs["w4a4"]
    trt = rewrite_graph(onnx.load(str(path))).tensorrt
    tensors = {t.name: numpy_helper.to_array(t) for t in trt.graph.initializer}
    nodes = {n.name.split(".MatMul")[0]: n for n in trt.graph.node if n.domain == DOMAIN}
    static = {name: layer for name, layer in qdit.quant_linears().items() if layer.act is not None}
    assert any(layer.act.groups > 1 for layer in static.values())
    for name, layer in static.items():
        node = nodes[name]
        fields = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert fields["act_format"] == b"uint4" and fields["act_mode"] == b"static"
        assert layer.in_features // (fields["act_group_size"] or layer.in_features) == layer.act.groups
        ports = [p.name for p in INT_GEMM.present_inputs({k: v.decode() if isinstance(v, bytes) else v
                                                          for k, v in fields.items()})]
        table = tensors[node.input[ports.index("act_scale_table")]]
        zeros = tensors[node.input[ports.index("act_zero_table")]]
        assert zeros.dtype == np.int8 and table.shape == zeros.shape == tuple(layer.act.scale.shape)
        np.testing.assert_array_equal(table, layer.act.scale.numpy())
        np.testing.assert_array_equal(zeros, layer.act.zero.numpy().astype(np.int8))


def test_rewrite_validation_passes_and_catches_a_wrong_plugin_input(qdq_graphs, tiny, calib, tmp_path):
    path, qdit = qdq_graphs["w4a8"]
    result = run_rewrite(path)
    report = run_rewrite_validation(path, result["rewritten_onnx"], tiny.transformer, calib.timesteps[:3], tmp_path,
                                    calibration=calib)
    assert report["rewrite_check"]["passed"] and (tmp_path / "rewrite_validation.md").exists()
    proto = onnx.load(result["rewritten_onnx"])
    scale = next(t for t in proto.graph.initializer if t.name.endswith("weight_scale.grid"))
    scale.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(scale) * np.float32(1.01), scale.name))
    broken = write_onnx(proto, tmp_path / "broken.onnx")
    with pytest.raises(UserError, match="rewritten vs QDQ graph, output out_sample"):
        run_rewrite_validation(path, broken, tiny.transformer, calib.timesteps[:3], tmp_path, calibration=calib)


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
    assert list(result.not_replaced.values()) == ["weights with zero points: the plugins take symmetric weights"]
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
    good = dict(in_features=64, out_features=32, weight_bits=4, group_size=32, act_mode="dynamic",
                act_format="int8", act_group_size=0, rotation_block=0, has_bias=1)
    INT_GEMM.check(good)
    with pytest.raises(ValueError, match="act_mode must be one of"):
        INT_GEMM.check({**good, "act_mode": "sometimes"})
    with pytest.raises(ValueError, match="fields missing \\['has_bias'\\]"):
        INT_GEMM.check({k: v for k, v in good.items() if k != "has_bias"})
    with pytest.raises(ValueError, match="both be 'none'"):
        INT_GEMM.check({**good, "act_format": "none"})
    assert [p.name for p in INT_GEMM.present_inputs({**good, "act_mode": "static"})] == [
        "x", "weight", "weight_scale", "act_scale_table", "timestep_bucket", "bias"]


def test_generated_header_is_current():
    assert HEADER.read_text() == generate(), "run: python -m exporter.rewrite.header > " + str(HEADER)


@pytest.mark.skipif(shutil.which("g++") is None, reason="no C++ compiler")
def test_header_compiles_and_parses_plugin_fields(tmp_path):
    source = tmp_path / "check.cpp"
    source.write_text(r'''
#include "dit_export/plugin_contract.h"
#include <cstdio>
using namespace dit_export;
int main() {
    int32_t k = 64, n = 32, bits = 4, g = 32, zero = 0, one = 1;
    FieldView f[] = {{"in_features", FieldType::kInt32, &k, 1}, {"out_features", FieldType::kInt32, &n, 1},
                     {"weight_bits", FieldType::kInt32, &bits, 1}, {"group_size", FieldType::kInt32, &g, 1},
                     {"act_mode", FieldType::kChar, "static", 7}, {"act_format", FieldType::kChar, "int8", 5},
                     {"act_group_size", FieldType::kInt32, &zero, 1}, {"rotation_block", FieldType::kInt32, &zero, 1},
                     {"has_bias", FieldType::kInt32, &one, 1}};
    DitIntGemmFields fields;
    std::string ok = parseDitIntGemmFields(f, 9, fields);
    DitIntGemmInputs in = ditIntGemmInputs(fields);
    std::string missing = parseDitIntGemmFields(f, 8, fields);
    f[4].data = "sometimes"; f[4].length = 10;
    std::string bad = parseDitIntGemmFields(f, 9, fields);
    std::printf("%s|%d %d %d %d|%s|%s\n", ok.c_str(), in.count, in.act_scale_table, in.bias, in.hadamard,
                missing.c_str(), bad.c_str());
}
''')
    binary = tmp_path / "check"
    subprocess.run(["g++", "-std=c++17", "-Wall", "-Wextra", "-Werror", f"-I{HEADER.parents[1]}", str(source), "-o",
                    str(binary)], check=True)
    out = subprocess.run([str(binary)], check=True, capture_output=True, text=True).stdout.strip()
    assert out == ("|6 3 5 -1|DitIntGemm: missing field has_bias|"
                   "DitIntGemm: field act_mode must be one of none, static, dynamic")
