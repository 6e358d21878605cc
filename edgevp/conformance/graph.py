"""Graph rewrites that make an exported ONNX import on every supported TensorRT (torch-free, `onnx` only).

- `lower_shape_slices`: torch's dynamo exporter takes the batch as `Shape(x, start=0, end=1)` (opset 15+
  attributes, also at opset 17). TensorRT's importers before 10.0 ignore start/end (onnx-tensorrt 8.5/8.6
  `builtin_op_importers.cpp`, DEFINE_BUILTIN_OP_IMPORTER(Shape) is `addShape(input)`), and so do onnx-graphsurgeon's
  `fold_shapes` (0.6) and onnx-tool: the cls-token `Expand` after it gets the wrong rank. Rewritten as `Shape(x)`
  followed by `Slice`, it means the same to every reader.
- `decompose_layernorm`: TensorRT 8.5's importer has no `LayerNormalization` (onnx-tensorrt 8.5-GA docs/operators.md;
  it came in 8.6), which the exporter emits at opset 17/18: for a platform set that includes 8.5 it becomes
  ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div/Mul/Add, the pattern ONNX Runtime's LayerNormFusion and TensorRT's
  normalization fusion recognise.
- `to_opset_17`: the dynamo exporter writes opset 18 and converts down with onnx's version converter, which has no
  adapter for `Pad` (18 added an `axes` input): a Swin graph stayed at 18, which TensorRT 8.x refuses. The ops our
  graphs use that changed in 18 are rewritten to their 13/17 forms here (Pad without axes, Reduce* axes back to an
  attribute, Split's num_outputs); any other is refused rather than guessed.
- `prune_opset_imports`: opset domains no node uses (ONNX Runtime's quantiser declares several).
- `add_probabilities`: a `Softmax` output beside the logits, what DeepStream's built-in classifier parser expects.
"""
from __future__ import annotations

from pathlib import Path

INT64_MAX = (1 << 63) - 1
DEFAULT_DOMAINS = ("", "ai.onnx")
PROBS = "probs"


def _attr(node, name: str):
    import onnx

    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return None


def lower_shape_slices(model) -> int:
    """Replace every `Shape` with start/end by `Shape` + `Slice(axes=[0])` in place; returns how many."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    graph, nodes, count = model.graph, [], 0
    for node in graph.node:
        start, end = _attr(node, "start"), _attr(node, "end")
        if node.op_type != "Shape" or node.domain not in DEFAULT_DOMAINS or (start is None and end is None):
            nodes.append(node)
            continue
        if not start and end is None:  # the defaults spelled out (ONNX Runtime's quantiser writes start=0)
            for a in [a for a in node.attribute if a.name in ("start", "end")]:
                node.attribute.remove(a)
            nodes.append(node)
            count += 1
            continue
        count += 1
        full = f"{node.output[0]}__full_shape"
        names = [f"{node.output[0]}__{k}" for k in ("starts", "ends", "axes")]
        for name, value in zip(names, (start or 0, INT64_MAX if end is None else end, 0)):
            graph.initializer.append(numpy_helper.from_array(np.asarray([value], np.int64), name))
        bare = helper.make_node("Shape", list(node.input), [full], name=node.name or full)
        nodes += [bare, helper.make_node("Slice", [full, *names], list(node.output), name=f"{bare.name}__slice")]
    if count:
        del graph.node[:]
        graph.node.extend(nodes)
        onnx.checker.check_model(model)
    return count


def decompose_layernorm(model) -> int:
    """Replace every `LayerNormalization` (last axis) by primitive ops in place; returns how many."""
    import numpy as np
    from onnx import helper, numpy_helper

    graph = model.graph
    opset = next(o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS)
    nodes, count = [], 0
    for node in graph.node:
        if node.op_type != "LayerNormalization" or node.domain not in DEFAULT_DOMAINS:
            nodes.append(node)
            continue
        if (_attr(node, "axis") or -1) != -1 or any(o for o in node.output[1:]):
            raise ValueError(f"{node.name}: only last-axis LayerNormalization without mean/inv-std outputs "
                             "can be decomposed")
        count += 1
        p = f"{node.output[0]}__ln"
        eps = _attr(node, "epsilon")
        graph.initializer.extend([numpy_helper.from_array(np.asarray(1e-5 if eps is None else eps, np.float32),
                                                          f"{p}_eps"),
                                  numpy_helper.from_array(np.asarray(2.0, np.float32), f"{p}_two")])

        def mean(x: str, y: str):
            if opset >= 18:  # ReduceMean's axes became an input in opset 18
                graph.initializer.append(numpy_helper.from_array(np.asarray([-1], np.int64), f"{y}_axes"))
                return helper.make_node("ReduceMean", [x, f"{y}_axes"], [y], keepdims=1, name=y)
            return helper.make_node("ReduceMean", [x], [y], axes=[-1], keepdims=1, name=y)

        x, scale = node.input[0], node.input[1]
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        nodes += [mean(x, f"{p}_mean"),
                  helper.make_node("Sub", [x, f"{p}_mean"], [f"{p}_d"], name=f"{p}_d"),
                  helper.make_node("Pow", [f"{p}_d", f"{p}_two"], [f"{p}_sq"], name=f"{p}_sq"),
                  mean(f"{p}_sq", f"{p}_var"),
                  helper.make_node("Add", [f"{p}_var", f"{p}_eps"], [f"{p}_vareps"], name=f"{p}_vareps"),
                  helper.make_node("Sqrt", [f"{p}_vareps"], [f"{p}_std"], name=f"{p}_std"),
                  helper.make_node("Div", [f"{p}_d", f"{p}_std"], [f"{p}_norm"], name=f"{p}_norm"),
                  helper.make_node("Mul", [f"{p}_norm", scale], [f"{p}_scaled" if bias else node.output[0]],
                                   name=f"{p}_scaled")]
        if bias:
            nodes.append(helper.make_node("Add", [f"{p}_scaled", bias], [node.output[0]], name=f"{p}_bias"))
    if count:
        del graph.node[:]
        graph.node.extend(nodes)
    return count


def needs_layernorm_decomposed(platform: str | None) -> bool:
    """Whether some platform of `platform` (an `edgevp export --platform` value) lacks a LayerNormalization importer."""
    from .platforms import resolve
    from .rules import importer_rules

    return platform is not None and any("LayerNormalization" not in importer_rules(p.trt).ops
                                        for p in resolve(platform))


REDUCE_AXES_ATTR = ("ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceLogSum",
                    "ReduceLogSumExp", "ReduceSumSquare")  # axes moved from attribute to input in opset 18


def to_opset_17(model) -> int:
    """Rewrite an opset-18 graph as opset 17 in place; returns the nodes changed. ValueError for an op whose opset-18
    form has no opset-17 equivalent here."""
    from onnx import helper, numpy_helper

    if next(o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS) != 18:
        return 0
    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    changed = 0
    for node in model.graph.node:
        if node.domain not in DEFAULT_DOMAINS:
            continue
        if node.op_type == "Pad" and len(node.input) > 3 and node.input[3]:
            raise ValueError(f"{node.name}: Pad with axes has no opset-17 form")
        if node.op_type in REDUCE_AXES_ATTR and len(node.input) > 1 and node.input[1]:
            if node.input[1] not in consts:
                raise ValueError(f"{node.name}: {node.op_type} with computed axes has no opset-17 form")
            axes = [int(a) for a in consts[node.input[1]].ravel()]
            if not axes:
                raise ValueError(f"{node.name}: {node.op_type} with empty axes has no opset-17 form here")
            del node.input[1:]
            for a in [a for a in node.attribute if a.name == "noop_with_empty_axes"]:  # 18 only; moot with axes
                node.attribute.remove(a)
            node.attribute.append(helper.make_attribute("axes", axes))
            changed += 1
        elif node.op_type == "Split" and any(a.name == "num_outputs" for a in node.attribute):
            node.attribute.remove(next(a for a in node.attribute if a.name == "num_outputs"))  # 13: equal parts
            changed += 1
        elif node.op_type in ("Resize", "ScatterElements", "ScatterND", "Col2Im", "GroupNormalization", "LpPool",
                              "CenterCropPad", "Mish") or node.op_type.startswith(("Bitwise", "Optional")):
            raise ValueError(f"{node.name}: {node.op_type} changed in opset 18; no opset-17 rewrite here")
    for o in model.opset_import:
        if o.domain in DEFAULT_DOMAINS:
            o.version = 17
    return changed


def prune_opset_imports(model) -> list[str]:
    """Drop opset imports of domains no node uses (the default domain always stays); returns the dropped domains."""
    used = {n.domain for n in model.graph.node} | {f.domain for f in model.functions}
    keep = [o for o in model.opset_import if o.domain in DEFAULT_DOMAINS or o.domain in used]
    dropped = [o.domain for o in model.opset_import if o not in keep]
    if dropped:
        kept = [(o.domain, o.version) for o in keep]
        del model.opset_import[:]
        for domain, version in kept:
            model.opset_import.add(domain=domain, version=version)
    return dropped


def add_probabilities(model, logits: str = "logits") -> None:
    """Append a `probs` output = Softmax(logits, axis=-1) (fp32), leaving `logits` the first output."""
    from onnx import TensorProto, helper

    if any(o.name == PROBS for o in model.graph.output):
        return
    out = next(o for o in model.graph.output if o.name == logits)
    dims = [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim]
    model.graph.node.append(helper.make_node("Softmax", [logits], [PROBS], axis=-1, name="edgevp_probs"))
    model.graph.output.append(helper.make_tensor_value_info(PROBS, TensorProto.FLOAT, dims))


def for_tensorrt(path: str | Path, probabilities: bool = False, platform: str | None = None) -> dict:
    """Rewrite ONNX file `path` in place for the TensorRT platforms `platform` names (None: only the rewrites every
    platform needs); returns what changed."""
    import onnx

    model = onnx.load(str(path))
    changed = {"shape_slices_lowered": lower_shape_slices(model), "opset_domains_dropped": prune_opset_imports(model)}
    if needs_layernorm_decomposed(platform):
        changed["layernorm_decomposed"] = decompose_layernorm(model)
    if probabilities:
        add_probabilities(model)
        changed["probabilities_output"] = PROBS
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return changed
