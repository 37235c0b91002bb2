"""FP4 in the exported graph: FLOAT4E2M1 weights and activations (opset 23), decode tables for
the other FP4 formats, and the reference form that ONNX Runtime runs, checked against ONNX's own
reference implementation of FLOAT4E2M1 QuantizeLinear / DequantizeLinear."""

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from exporter.artifacts import reference_onnx
from exporter.errors import UserError
from exporter.numerics.fp4 import FP4_FORMATS, Fp4Format
from exporter.numerics.packing import pack_int4
from exporter.onnx.fp4_graph import FP4_OPSET, decode_table, fake_quantize, needs_reference, reference_graph
from exporter.onnx.graph_builder import Builder
from exporter.onnx.ort_check import session
from exporter.quant.quantize import quantize_model
from exporter.quant.recipes import get_recipe
from exporter.stages.export import run_export


def _model(nodes, inputs, outputs, initializers=(), opset=FP4_OPSET) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 11
    onnx.checker.check_model(model, full_check=True)
    return model


def _value(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _run_ort(model: onnx.ModelProto, feeds: dict) -> np.ndarray:
    return session(model.SerializeToString()).run(None, feeds)[0]


def _assert_same_outputs(actual: list[np.ndarray], expected: list[np.ndarray]) -> None:
    """The dequantized activations and weights exactly; their product up to summation order."""
    np.testing.assert_array_equal(actual[1], expected[1])
    np.testing.assert_array_equal(actual[2], expected[2])
    np.testing.assert_allclose(actual[0], expected[0], rtol=1e-5, atol=1e-5 * np.abs(expected[0]).max())


@pytest.mark.parametrize("fmt", FP4_FORMATS, ids=lambda f: f.kind)
def test_standard_op_rounding_is_the_formats_rounding(fmt: Fp4Format):
    """Every magnitude, every midpoint (the ties), one ulp either side of them, saturation."""
    m = fmt.magnitudes.numpy().astype(np.float32)
    mids = ((m[1:] + m[:-1]) / 2).astype(np.float32)
    points = np.concatenate([m, mids, np.nextafter(mids, np.float32(0)), np.nextafter(mids, np.float32(99)),
                             [fmt.qmax * 1.5, fmt.qmax * 100], np.linspace(0, fmt.qmax * 1.2, 301)])
    x = np.concatenate([points, -points]).astype(np.float32)[None]
    for scale in (1.0, 0.37):
        b = Builder("q", [], [])
        s = b.const(numpy_helper.from_array(np.array(scale, np.float32), "s"))
        fake_quantize(b, "x", s, fmt, output="y")
        model = _model(b.nodes, [_value("x", list(x.shape))], [_value("y", list(x.shape))], b.initializers)
        xs = x * np.float32(scale)
        expected = (fmt.round(torch.from_numpy(xs) / scale) * scale).numpy()
        np.testing.assert_array_equal(_run_ort(model, {"x": xs}), expected)


def _fp4_graph(weight_layout: str) -> tuple[onnx.ModelProto, dict]:
    """x [3, 64] -> blocked E2M1 Q/DQ with a computed per-32 scale -> MatMul with E2M1 weights
    [64, 8] dequantized blocked (g32), per output channel or per tensor."""
    gen = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 16, (64, 8), generator=gen, dtype=torch.uint8)
    w = helper.make_tensor("w", TensorProto.FLOAT4E2M1, [64, 8], pack_int4(codes.reshape(-1)).numpy().tobytes(),
                           raw=True)
    scale, attrs = {"blocked": (torch.rand(2, 8, generator=gen) + 0.5, {"axis": 0, "block_size": 32}),
                    "per-channel": (torch.rand(8, generator=gen) + 0.5, {"axis": 1}),
                    "per-tensor": (torch.tensor(0.7), {})}[weight_layout]
    ws = numpy_helper.from_array(scale.numpy().astype(np.float32), "ws")
    consts = [numpy_helper.from_array(np.array(v, dtype=dtype), name) for name, v, dtype in
              (("group_shape", [3, 2, 32], np.int64), ("last", [-1], np.int64),
               ("six", 6.0, np.float32))]
    nodes = [
        helper.make_node("Reshape", ["x", "group_shape"], ["xg"]),
        helper.make_node("Abs", ["xg"], ["xg_abs"]),
        helper.make_node("ReduceMax", ["xg_abs", "last"], ["amax"], keepdims=0),
        helper.make_node("Div", ["amax", "six"], ["xs"]),
        helper.make_node("QuantizeLinear", ["x", "xs"], ["xq"], axis=1, block_size=32,
                         output_dtype=TensorProto.FLOAT4E2M1),
        helper.make_node("DequantizeLinear", ["xq", "xs"], ["xd"], axis=1, block_size=32),
        helper.make_node("DequantizeLinear", ["w", "ws"], ["wd"], **attrs),
        helper.make_node("MatMul", ["xd", "wd"], ["y"]),
    ]
    outputs = [_value("y", [3, 8]), _value("xd", [3, 64]), _value("wd", [64, 8])]
    model = _model(nodes, [_value("x", [3, 64])], outputs, [w, ws, *consts])
    x = torch.randn(3, 64, generator=gen).numpy() * 3
    x[0, :4] = [0.25, 0.75, -1.25, 5.0]  # ties, once the block's scale is 1 (amax 6)
    x[0, 4] = 6.0
    return model, {"x": x}


@pytest.mark.parametrize("weight_layout", ["blocked", "per-channel", "per-tensor"])
def test_reference_form_computes_what_onnx_reference_ops_compute(weight_layout):
    model, feeds = _fp4_graph(weight_layout)
    assert needs_reference(model)
    expected = ReferenceEvaluator(model).run(None, feeds)
    reference = reference_graph(model)
    assert not needs_reference(reference)
    assert not any(t.data_type == TensorProto.FLOAT4E2M1 for t in reference.graph.initializer)
    _assert_same_outputs(session(reference.SerializeToString()).run(None, feeds), expected)
    assert needs_reference(model), "the original graph is left as it was"


def test_onnx_runtime_cannot_run_fp4_itself_so_sessions_use_the_reference_form():
    import onnxruntime as ort

    model, feeds = _fp4_graph("blocked")
    with pytest.raises(Exception, match="NOT_IMPLEMENTED|float4e2m1"):
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    _assert_same_outputs(session(model.SerializeToString()).run(None, feeds), ReferenceEvaluator(model).run(None, feeds))


def test_an_fp4_quantize_that_is_not_dequantized_is_a_clear_error():
    q = helper.make_node("QuantizeLinear", ["x", "s"], ["q"], output_dtype=TensorProto.FLOAT4E2M1, name="odd")
    cast = helper.make_node("Cast", ["q"], ["y"], to=TensorProto.FLOAT)
    s = numpy_helper.from_array(np.array(1.0, np.float32), "s")
    model = _model([q, cast], [_value("x", [2])], [_value("y", [2])], [s])
    with pytest.raises(UserError, match="node 'odd': a FLOAT4E2M1 QuantizeLinear must feed DequantizeLinear"):
        reference_graph(model)


def test_fp4_export_writes_float4_weights_decode_tables_and_the_reference_file(tiny, calib, tmp_path):
    recipe = get_recipe("fp4-g32").with_overrides(weight_format="e3m0")
    qdit = quantize_model(tiny.transformer, recipe, calib, 1000, progress=False)
    assert all(layer.fmt == Fp4Format("e3m0") for layer in qdit.quant_linears().values())
    result = run_export(qdit, tiny.transformer, tmp_path, calib.timesteps[:3])
    proto = onnx.load(result.qdq_onnx)
    assert proto.opset_import[0].version == FP4_OPSET
    weights = {t.name: t for t in proto.graph.initializer if t.name.endswith(".weight_q")}
    assert weights and all(t.data_type == TensorProto.UINT4 for t in weights.values())
    tables = [t for t in proto.graph.initializer if t.name.endswith("weight_decode_table")]
    np.testing.assert_array_equal(numpy_helper.to_array(tables[0]), decode_table(Fp4Format("e3m0")))
    quantizers = [n for n in proto.graph.node if n.op_type == "QuantizeLinear"]
    layers = qdit.quant_linears().values()
    assert len(quantizers) == sum(layer.act is not None for layer in layers)
    assert all(a.i == TensorProto.FLOAT4E2M1 for n in quantizers for a in n.attribute if a.name == "output_dtype")
    hadamards = [n for n in proto.graph.node if n.op_type == "MatMul" and any("hadamard" in i for i in n.input)]
    assert len(hadamards) == sum(layer.rotation_block > 1 for layer in layers)
    assert result.reference_onnx == reference_onnx(tmp_path / "onnx" / "fp4-g32.qdq.onnx")
    assert not needs_reference(onnx.load(result.reference_onnx))
    assert result.qdq_vs_simulated.mean_abs < 0.05 * result.qdq_vs_fp.mean_abs


def test_e2m1_weights_are_float4e2m1_and_int_exports_write_no_reference_file(tiny, calib, tmp_path):
    qdit = quantize_model(tiny.transformer, get_recipe("w4a8-fp4").with_overrides(weight_format="e2m1"),
                          calib, 1000, progress=False)
    result = run_export(qdit, tiny.transformer, tmp_path, calib.timesteps[:2])
    proto = onnx.load(result.qdq_onnx)
    weights = [t for t in proto.graph.initializer if t.name.endswith(".weight_q")]
    assert weights and all(t.data_type == TensorProto.FLOAT4E2M1 for t in weights)
    for t in weights:
        assert len(t.raw_data) == (t.dims[0] * t.dims[1] + 1) // 2  # two codes per byte
    assert result.qdq_vs_simulated.mean_abs < 0.05 * result.qdq_vs_fp.mean_abs
    # Re-exporting the same folder at an integer precision removes the stale reference file.
    qdit_int = quantize_model(tiny.transformer, get_recipe("w4a8"), calib, 1000, progress=False)
    qdit_int.recipe = qdit.recipe  # same file name as the FP4 export
    result = run_export(qdit_int, tiny.transformer, tmp_path, calib.timesteps[:2])
    assert result.reference_onnx is None
    assert not reference_onnx(tmp_path / "onnx" / "w4a8-fp4.qdq.onnx").exists()
