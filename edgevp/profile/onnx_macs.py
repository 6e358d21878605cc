"""Multiply-accumulates counted on an ONNX graph: MatMul (attention products included), Gemm, Conv and Einsum (a
pack's per-task head).

Counting on the exported graph sees exactly what runs; torch-level counters silently skip fused attention. Shapes
come from ONNX shape inference with the batch fixed to 1 (ONNX Runtime fills in what inference cannot resolve). Nodes
are attributed to transformer blocks by the exporter's scope names (`blocks.N`, the TorchScript exporter) or, where
the graph carries none (the dynamo exporter), by its pre-norm structure: in a ViT every block starts with a
normalisation and has two, so the 2i-th normalisation opens block i and the last one the head.
"""
from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import IncompatibleError
from ..optional import optional, require

_BLOCK = re.compile(r"blocks\.(\d+)")


@dataclass
class GraphCost:
    macs: int
    params: int
    per_block: dict[str, int] = field(default_factory=dict)  # "blocks.N" / "stem" / "head" -> MACs
    unknown: list[str] = field(default_factory=list)  # MAC nodes whose shapes could not be inferred

    @property
    def flops(self) -> int:
        return 2 * self.macs


def _onnx():
    return require("onnx", "counting MACs on a graph")


def load_model(path: str | Path):
    onnx = _onnx()
    try:
        return onnx.load(str(path))
    except Exception as e:  # protobuf decode errors have several types
        raise IncompatibleError(f"'{path}' is not a readable ONNX model: {type(e).__name__}") from None


def _shapes(model) -> dict[str, list[int | None]]:
    onnx = _onnx()
    for inp in model.graph.input:
        for d in inp.type.tensor_type.shape.dim:
            if not d.HasField("dim_value"):
                d.dim_value = 1  # batch (and any other symbolic dim) fixed to 1
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    out = {}
    for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        dims = v.type.tensor_type.shape.dim
        out[v.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    for t in inferred.graph.initializer:
        out[t.name] = list(t.dims)
    return out


def _shapes_by_running(model, names: set[str]) -> dict[str, list[int]]:
    """Shapes that inference could not resolve, read off one ONNX Runtime run at batch 1."""
    onnx, ort = _onnx(), optional("onnxruntime")
    if ort is None:
        return {}
    m = onnx.ModelProto()
    m.CopyFrom(model)
    known = {o.name for o in m.graph.output}
    for n in sorted(names - known):
        m.graph.output.append(onnx.ValueInfoProto(name=n))
    from ..runtime.sessions import open_session

    sess = open_session(m.SerializeToString(), log_severity=2)
    feed = {}
    for i in sess.get_inputs():
        shape = [d if isinstance(d, int) else 1 for d in i.shape]
        dtype = np.int64 if "int64" in i.type else np.float16 if "float16" in i.type else np.float32
        feed[i.name] = np.zeros(shape, dtype=dtype)
    outs = sess.run(None, feed)
    return {o.name: list(v.shape) for o, v in zip(sess.get_outputs(), outs) if o.name in names}


MAC_OPS = ("MatMul", "Gemm", "Conv", "Einsum")


def _scope(node) -> str | None:
    """The block a node's scope name places it in, or None when it carries no scope."""
    text = node.name + " " + " ".join(p.value for p in node.metadata_props if p.key == "namespace")
    m = _BLOCK.search(text)
    if m:
        return f"blocks.{int(m.group(1))}"
    return "head" if re.search(r"head|fc_norm|classifier", text) else None


def _norm_starts(nodes) -> list[int]:
    """Indices of the nodes that open a normalisation: LayerNormalization, or the ReduceMean that opens a decomposed
    one (its output is subtracted from its own input)."""
    alias: dict[str, str] = {}  # through Casts (an fp16 graph casts around the fp32 reductions)
    for n in nodes:
        if n.op_type == "Cast":
            alias[n.output[0]] = alias.get(n.input[0], n.input[0])

    def a(name: str) -> str:
        return alias.get(name, name)

    subs = {(a(n.input[0]), a(n.input[1])) for n in nodes if n.op_type == "Sub" and len(n.input) == 2}
    return [i for i, n in enumerate(nodes) if n.op_type == "LayerNormalization"
            or (n.op_type == "ReduceMean" and (a(n.input[0]), a(n.output[0])) in subs)]


def structural_scopes(nodes) -> dict[int, str] | None:
    """Node index -> block for a pre-norm ViT graph without scope names (2 normalisations per block plus the final
    one); None when the graph does not have that shape (an odd count of at least 3)."""
    starts = _norm_starts(nodes)
    if len(starts) < 3 or len(starts) % 2 == 0:
        return None
    depth = (len(starts) - 1) // 2
    bounds = [starts[2 * b] for b in range(depth)] + [starts[-1]]
    scopes = {}
    for i in range(len(nodes)):
        opened = sum(1 for b in bounds if b <= i)
        scopes[i] = "stem" if opened == 0 else "head" if opened > depth else f"blocks.{opened - 1}"
    return scopes


def _attr(node, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return a.i if a.type == a.INT else list(a.ints)
    return default


def node_macs(node, shapes: dict) -> int | None:
    """MACs of one MatMul/Gemm/Conv node, or None when a shape is unknown."""
    ins = [shapes.get(i) for i in node.input[:2]]
    out = shapes.get(node.output[0])
    if any(s is None or None in s for s in ins + [out]):
        return None
    if node.op_type == "MatMul":
        a = ins[0]
        k = a[-1] if len(a) >= 1 else 1
        return int(np.prod(out)) * k  # every output element is a K-long dot product
    if node.op_type == "Gemm":
        a = ins[0]
        k = a[0] if _attr(node, "transA", 0) else a[1]
        return int(np.prod(out)) * k
    if node.op_type == "Conv":
        w = ins[1]
        return int(np.prod(out)) * int(np.prod(w[1:]))  # C_in/groups · kH · kW per output element
    if node.op_type == "Einsum":
        return _einsum_macs(_attr_str(node, "equation"), ins)
    return 0


def _attr_str(node, name: str) -> str:
    return next(a.s.decode() for a in node.attribute if a.name == name)


def _einsum_macs(equation: str, shapes: list[list[int]]) -> int | None:
    """A two-operand contraction: one multiply-add per combination of all its indices (`bd,bcd->bc`: b*c*d)."""
    lhs = equation.replace(" ", "").split("->")[0].split(",")
    if len(lhs) != 2 or "..." in equation:
        return None
    sizes = {}
    for letters, shape in zip(lhs, shapes):
        sizes.update(zip(letters, shape))
    return int(np.prod([sizes[c] for c in sizes]))


def graph_cost(path_or_model) -> GraphCost:
    """MACs (batch 1) and parameter count of an ONNX model, with a per-block breakdown."""
    model = load_model(path_or_model) if isinstance(path_or_model, (str, Path)) else path_or_model
    shapes = _shapes(model)
    nodes = list(model.graph.node)
    mac_nodes = [n for n in nodes if n.op_type in MAC_OPS]
    missing = {t for n in mac_nodes for t in [*n.input[:2], n.output[0]]
               if shapes.get(t) is None or None in shapes[t]}
    if missing:  # dynamic slicing (per-layer prompt counts) defeats static inference: measure instead
        shapes.update(_shapes_by_running(model, missing))
    named = any(_scope(n) not in (None, "head") for n in mac_nodes)  # some node names its block
    structure = None if named else structural_scopes(nodes)
    per_block: dict[str, int] = OrderedDict()
    unknown, total = [], 0
    for i, node in enumerate(nodes):
        if node.op_type not in MAC_OPS:
            continue
        m = node_macs(node, shapes)
        if m is None:
            unknown.append(node.name)
            continue
        total += m
        key = (_scope(node) or "stem") if structure is None else structure[i]
        per_block[key] = per_block.get(key, 0) + m
    params = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    return GraphCost(total, params, dict(per_block), unknown)
