"""Codebook (VQ) weights in the exported graph: packed assignments unpacked by standard ops in
ONNX Runtime, bit for bit, and the exported VQ model agreeing with its PyTorch form."""

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from exporter.onnx.graph_builder import Builder
from exporter.onnx.ort_check import session
from exporter.onnx.vq_graph import packed_stream, vq_weight
from exporter.quant.quantize import quantize_model
from exporter.quant.recipes import get_recipe
from exporter.quant.vq_linear import VqLinear
from exporter.stages.export import run_export


def _layer(codewords: int, dim: int, n: int, k: int, seed: int = 0) -> VqLinear:
    gen = torch.Generator().manual_seed(seed)
    codebook = torch.randn(codewords, dim, generator=gen).half().float()
    assignments = torch.randint(codewords, (n, -(-k // dim)), generator=gen)
    return VqLinear(codebook, assignments, k, torch.randn(n, generator=gen))


def _weight_graph(q: VqLinear) -> onnx.ModelProto:
    b = Builder("L", [], [])
    vq_weight(b, q)
    output = helper.make_tensor_value_info(b.nodes[-1].output[0], TensorProto.FLOAT, [q.in_features, q.out_features])
    graph = helper.make_graph(b.nodes, "g", [], [output], b.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.mark.parametrize("codewords,dim,n,k", [
    (256, 4, 24, 64),   # vq2: a byte per index
    (64, 2, 24, 64),    # vq3: 6-bit indices, 4 per 3 bytes
    (64, 2, 5, 33),     # K not a multiple of d, N S not a multiple of 8
    (2, 3, 7, 20),      # 1-bit indices
    (2048, 4, 9, 44),   # 11-bit indices span three bytes
    (16, 4, 3, 10),     # 4-bit indices, a padded stream
])
def test_decoded_weight_is_the_layers_weight_exactly(codewords, dim, n, k):
    q = _layer(codewords, dim, n, k)
    (decoded,) = session(_weight_graph(q).SerializeToString()).run(None, {})
    np.testing.assert_array_equal(decoded, q.weight.T.numpy())


def test_stream_is_the_checkpoints_packing_padded_to_whole_rows():
    q = _layer(64, 2, 5, 33)
    stream = packed_stream(q.assignments, 6)
    count = q.assignments.numel()  # 85 indices: 64 bytes packed, 66 in 11 rows of 6
    assert len(stream) == 6 * -(-count // 8) and not stream[-(len(stream) - -(-count * 6 // 8)):].any()


@pytest.mark.parametrize("precision", ["vq2", "vq3", "vq2-a8"])
def test_exported_vq_model_matches_pytorch_and_stores_no_float_weights(tiny, calib, tmp_path, precision):
    recipe = get_recipe(precision).with_overrides(weight_iterations=10)
    qdit = quantize_model(tiny.transformer, recipe, calib, 1000, progress=False)
    result = run_export(qdit, tiny.transformer, tmp_path, calib.timesteps[:3])
    assert result.reference_onnx is None  # standard ops only: ONNX Runtime runs the graph itself
    assert result.qdq_vs_simulated.max_abs < 1e-4 * result.qdq_vs_simulated.reference_max_abs
    proto = onnx.load(result.qdq_onnx)
    names = {t.name: t for t in proto.graph.initializer}
    for name, layer in qdit.quant_linears().items():
        assert names[f"{name}.vq_codebook"].data_type == TensorProto.FLOAT16
        assert names[f"{name}.vq_assignments"].data_type == TensorProto.UINT8
    quantized_inputs = sum(n.op_type == "QuantizeLinear" for n in proto.graph.node)
    assert quantized_inputs == sum(layer.act is not None for layer in qdit.quant_linears().values())
    assert (quantized_inputs > 0) == precision.endswith("-a8")
    # The quantized layers' weights exist only as codebooks and packed indices.
    float_params = sum(int(np.prod(t.dims)) for t in proto.graph.initializer if t.data_type == TensorProto.FLOAT)
    fp_params = sum(p.numel() for p in tiny.transformer.parameters())
    quantized = sum(m.weight.numel() for m in qdit.quant_linears().values())
    assert float_params < fp_params - quantized + 1000

