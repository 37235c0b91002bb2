"""`dit-export rewrite`: every quantized GEMM of a QDQ graph becomes one plugin node.

Writes three graphs next to the QDQ graph NAME.qdq.onnx:

    NAME.rewritten.onnx   plugin nodes plus their reference functions (reference.py), which
                          ONNX Runtime runs on CPU
    NAME.trt.onnx         the same graph without the functions: TensorRT's ONNX parser would
                          inline a model-local function of the node's name instead of calling
                          the plugin, so here only the plugin can implement the node
    NAME.qdq-fp16io.onnx  the QDQ graph with the plugins' boundaries: each replaced GEMM's input
                          and output rounded to FLOAT16 (Cast there and back), what the
                          rewritten graph computes to float reordering (the rewrite check's
                          reference)

The plugins take and give FLOAT16 (the Triton kernels read and write it); in a float32 graph the
rewrite puts a Cast to FLOAT16 before each plugin and a Cast back after it.

Plugin nodes have the contract's op name in the ``dit_export`` domain and the attributes
``plugin_version`` and ``plugin_namespace`` that TensorRT's plugin importer reads, besides the
contract's fields.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import TensorProto, helper

from exporter import artifacts
from exporter.contract.plugin_contract import DOMAIN
from exporter.errors import UserError
from exporter.onnx.files import load_onnx, write_onnx
from exporter.quant.recipes import Recipe, no_kernel_reason
from exporter.rewrite.patterns import GemmMatch, Initializers, NotReplaced, is_quantized_gemm, match_gemm, producer
from exporter.rewrite.reference import overload_key, reference_function

DOMAIN_VERSION = 1


@dataclass
class RewriteResult:
    rewritten: onnx.ModelProto
    tensorrt: onnx.ModelProto
    fp16io: onnx.ModelProto  # the QDQ graph with the plugins' FLOAT16 boundaries
    replaced: dict[str, int] = field(default_factory=dict)  # plugin -> count
    not_replaced: dict[str, str] = field(default_factory=dict)  # layer -> why
    layers: dict[str, str] = field(default_factory=dict)  # layer -> plugin


@dataclass(frozen=True)
class RewrittenFiles:
    """What ``run_rewrite`` wrote, and which GEMMs became which plugins."""

    rewritten_onnx: Path
    tensorrt_onnx: Path
    qdq_fp16io_onnx: Path
    replaced: dict[str, int]  # plugin -> count
    not_replaced: dict[str, str]  # layer -> why
    functions: int  # reference functions in the rewritten graph
    layers: dict[str, str]  # layer -> plugin


def check_deployable(recipe: Recipe) -> None:
    """UserError (one line) when the recipe is an accuracy reference: no kernel runs it, so the
    rewrite emits no plugins for it."""
    reason = no_kernel_reason(recipe)
    if reason:
        raise UserError(reason)


def _plugin_node(match: GemmMatch, index: int, x16: gs.Variable, y16: gs.Variable) -> gs.Node:
    attrs = {**match.fields, "plugin_version": match.contract.version, "plugin_namespace": match.contract.namespace}
    name = f"{match.layer}.{match.contract.name}" if match.layer else f"{match.contract.name}_{index}"
    return gs.Node(op=match.contract.name, name=name, domain=DOMAIN, attrs=attrs, inputs=[x16, *match.inputs[1:]],
                   outputs=[y16])


def _cast(graph: gs.Graph, source: gs.Tensor, dtype, name: str) -> gs.Variable:
    out = gs.Variable(name, dtype=dtype)
    to = TensorProto.FLOAT16 if dtype == np.float16 else TensorProto.FLOAT
    graph.nodes.append(gs.Node("Cast", name=name, attrs={"to": to}, inputs=[source], outputs=[out]))
    return out


def _gemm_nodes(match: GemmMatch) -> list[gs.Node]:
    """The nodes that compute the GEMM's output from its input x (activation quantizer, weight
    decode, MatMul, bias), found backwards from the output up to x."""
    x, found, seen, todo = match.inputs[0], [], set(), [match.output]
    while todo:
        t = todo.pop()
        node = producer(t)
        if t is x or node is None or id(node) in seen:
            continue
        seen.add(id(node))
        found.append(node)
        todo += node.inputs
    return found


def _fp16_boundaries(graph: gs.Graph, match: GemmMatch, index: int) -> tuple[gs.Variable, gs.Variable]:
    """Rounds the GEMM's input and output to FLOAT16 in place (Casts there and back); returns the
    FLOAT16 input and output, the plugin's."""
    x, y = match.inputs[0], match.output
    x16 = _cast(graph, x, np.float16, f"{x.name}.fp16.{index}")
    x32 = _cast(graph, x16, np.float32, f"{x.name}.fp32.{index}")
    for node in _gemm_nodes(match):
        for i in [i for i, t in enumerate(node.inputs) if t is x]:
            node.inputs[i] = x32
    computed = gs.Variable(f"{y.name}.computed", dtype=np.float32)
    producer(y).outputs[0] = computed
    y16 = _cast(graph, computed, np.float16, f"{y.name}.fp16")
    graph.nodes.append(gs.Node("Cast", name=f"{y.name}.fp32", attrs={"to": TensorProto.FLOAT}, inputs=[y16],
                               outputs=[y]))
    return x16, y16


def rewrite_graph(proto: onnx.ModelProto) -> RewriteResult:
    """The rewritten and TensorRT graphs of a QDQ graph; UserError when it has no quantized GEMM."""
    inits = Initializers(proto)
    try:
        graph = gs.import_onnx(proto)
    except Exception as e:  # graphsurgeon raises many types on malformed graphs
        raise UserError(f"cannot read the graph: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    candidates = [n for n in graph.nodes if is_quantized_gemm(n, inits)]
    if not candidates:
        raise UserError("no quantized GEMM in this graph (no MatMul with a weight computed from quantized codes): "
                        "rewrite takes the QDQ graph that `dit-export export` writes, NAME.qdq.onnx")
    matches: list[GemmMatch] = []
    not_replaced: dict[str, str] = {}
    for node in candidates:
        try:
            matches.append(match_gemm(node, inits))
        except NotReplaced as e:
            not_replaced[node.name] = str(e)
    if not matches:
        layer, why = next(iter(not_replaced.items()))
        more = f" (and {len(not_replaced) - 1} more)" if len(not_replaced) > 1 else ""
        raise UserError(f"no quantized GEMM could be replaced by a plugin: {layer}: {why}{more}")
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    boundaries = [_fp16_boundaries(graph, match, i) for i, match in enumerate(matches)]
    fp16io = _with_model_fields(_export(graph.toposort(), inits), proto)
    functions: dict[tuple[str, str], onnx.FunctionProto] = {}
    overloads: dict[str, str] = {}  # plugin node name -> overload (graphsurgeon has no field for it)
    for i, (match, (x16, y16)) in enumerate(zip(matches, boundaries)):
        producer(y16).outputs.clear()
        plugin = _plugin_node(match, i, x16, y16)
        graph.nodes.append(plugin)
        overloads[plugin.name] = overload_key(match.fields)
        key = (match.contract.name, overloads[plugin.name])
        if key not in functions:
            functions[key] = reference_function(match.contract, match.fields, opset)
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    out = _with_model_fields(_export(graph, inits), proto)
    out.ir_version = max(proto.ir_version, 10)  # node overloads: IR 10
    out.opset_import.extend([helper.make_opsetid(DOMAIN, DOMAIN_VERSION)])
    for node in out.graph.node:
        if node.domain == DOMAIN:
            node.overload = overloads[node.name]
    tensorrt = copy.deepcopy(out)
    out.functions.extend(functions.values())
    result = RewriteResult(out, tensorrt, fp16io, not_replaced=not_replaced)
    for match in matches:
        result.replaced[match.contract.name] = result.replaced.get(match.contract.name, 0) + 1
        result.layers[match.layer] = match.contract.name
    return result


def _with_model_fields(out: onnx.ModelProto, proto: onnx.ModelProto) -> onnx.ModelProto:
    """The source graph's IR version and default-domain opsets on an exported graph."""
    out.ir_version = proto.ir_version
    del out.opset_import[:]
    out.opset_import.extend([o for o in proto.opset_import if o.domain != DOMAIN])
    return out


def _export(graph: gs.Graph, inits: Initializers) -> onnx.ModelProto:
    """graphsurgeon's export, with the initializers it cannot write (4-bit types, which it reads
    unpacked) carried over from the original graph as they were."""
    sub_byte = {TensorProto.INT4, TensorProto.UINT4, TensorProto.FLOAT4E2M1}
    kept = {name: t for name, t in inits.by_name.items() if t.data_type in sub_byte}
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Constant) and tensor.name in kept:
            tensor.values = np.zeros(1, dtype=np.int8)  # replaced below
    out = gs.export_onnx(graph, do_type_check=False)
    for t in out.graph.initializer:
        if t.name in kept:
            t.CopyFrom(kept[t.name])
    return out


def run_rewrite(qdq_path: Path, external_data: bool | None = None) -> RewrittenFiles:
    """Rewrites the QDQ graph at ``qdq_path`` and writes the three graphs next to it."""
    qdq_path = Path(qdq_path)
    if not qdq_path.is_file():
        raise UserError(f"ONNX file '{qdq_path}' does not exist (run dit-export export first)")
    result = rewrite_graph(load_onnx(qdq_path))
    rewritten_path, trt_path = artifacts.rewritten_onnx(qdq_path), artifacts.trt_onnx(qdq_path)
    write_onnx(result.rewritten, rewritten_path, external_data)
    write_onnx(result.tensorrt, trt_path, external_data)
    write_onnx(result.fp16io, artifacts.qdq_fp16io_onnx(qdq_path), external_data)
    return RewrittenFiles(rewritten_path, trt_path, artifacts.qdq_fp16io_onnx(qdq_path), dict(result.replaced),
                          dict(result.not_replaced), len(result.rewritten.functions), dict(result.layers))
