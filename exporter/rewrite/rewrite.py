"""`dit-export rewrite`: every quantized GEMM of a QDQ graph becomes one plugin node.

Writes two graphs next to the QDQ graph NAME.qdq.onnx:

    NAME.rewritten.onnx   plugin nodes plus their reference functions (reference.py), which
                          ONNX Runtime runs on CPU
    NAME.trt.onnx         the same graph without the functions: TensorRT's ONNX parser would
                          inline a model-local function of the node's name instead of calling
                          the plugin, so here only the plugin can implement the node

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

from exporter.errors import UserError
from exporter.export.onnx_files import load_onnx, write_onnx
from exporter.rewrite.contract import DOMAIN
from exporter.rewrite.patterns import GemmMatch, Initializers, NotReplaced, is_quantized_gemm, match_gemm
from exporter.rewrite.reference import overload_key, reference_function

DOMAIN_VERSION = 1


@dataclass
class RewriteResult:
    rewritten: onnx.ModelProto
    tensorrt: onnx.ModelProto
    replaced: dict[str, int] = field(default_factory=dict)  # plugin -> count
    not_replaced: dict[str, str] = field(default_factory=dict)  # layer -> why
    layers: dict[str, str] = field(default_factory=dict)  # layer -> plugin

    def summary(self) -> dict:
        return {"replaced": dict(self.replaced), "not_replaced": dict(self.not_replaced),
                "functions": len(self.rewritten.functions)}


def _plugin_node(match: GemmMatch, index: int) -> gs.Node:
    attrs = {**match.fields, "plugin_version": match.contract.version, "plugin_namespace": match.contract.namespace}
    name = f"{match.layer}.{match.contract.name}" if match.layer else f"{match.contract.name}_{index}"
    return gs.Node(op=match.contract.name, name=name, domain=DOMAIN, attrs=attrs, inputs=match.inputs,
                   outputs=[match.output])


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
    functions: dict[tuple[str, str], onnx.FunctionProto] = {}
    overloads: dict[str, str] = {}  # plugin node name -> overload (graphsurgeon has no field for it)
    for i, match in enumerate(matches):
        for node in match.replaced_nodes:
            node.outputs.clear()
        plugin = _plugin_node(match, i)
        graph.nodes.append(plugin)
        overloads[plugin.name] = overload_key(match.fields)
        key = (match.contract.name, overloads[plugin.name])
        if key not in functions:
            functions[key] = reference_function(match.contract, match.fields, opset)
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    out = _export(graph, inits)
    out.ir_version = max(proto.ir_version, 10)  # node overloads: IR 10
    del out.opset_import[:]
    out.opset_import.extend([o for o in proto.opset_import if o.domain != DOMAIN]
                            + [helper.make_opsetid(DOMAIN, DOMAIN_VERSION)])
    for node in out.graph.node:
        if node.domain == DOMAIN:
            node.overload = overloads[node.name]
    tensorrt = copy.deepcopy(out)
    out.functions.extend(functions.values())
    result = RewriteResult(out, tensorrt, not_replaced=not_replaced)
    for match in matches:
        result.replaced[match.contract.name] = result.replaced.get(match.contract.name, 0) + 1
        result.layers[match.layer] = match.contract.name
    return result


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


def rewritten_paths(qdq_path: Path) -> tuple[Path, Path]:
    stem = qdq_path.name.removesuffix(".onnx").removesuffix(".qdq")
    return qdq_path.with_name(f"{stem}.rewritten.onnx"), qdq_path.with_name(f"{stem}.trt.onnx")


def run_rewrite(qdq_path: Path, external_data: bool | None = None) -> dict:
    """Rewrites the QDQ graph at ``qdq_path`` and writes both graphs next to it."""
    qdq_path = Path(qdq_path)
    if not qdq_path.is_file():
        raise UserError(f"ONNX file '{qdq_path}' does not exist (run dit-export export first)")
    result = rewrite_graph(load_onnx(qdq_path))
    rewritten_path, trt_path = rewritten_paths(qdq_path)
    write_onnx(result.rewritten, rewritten_path, external_data)
    write_onnx(result.tensorrt, trt_path, external_data)
    return {"rewritten_onnx": str(rewritten_path), "tensorrt_onnx": str(trt_path), **result.summary(),
            "layers": result.layers}
