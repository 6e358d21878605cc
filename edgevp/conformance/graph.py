"""Graph rewrites that make an exported ONNX import on every supported TensorRT (torch-free, `onnx` only).

- `lower_shape_slices`: torch's dynamo exporter takes the batch as `Shape(x, start=0, end=1)` (opset 15+
  attributes, also at opset 17). TensorRT's importers before 10.0 ignore start/end (onnx-tensorrt 8.5/8.6
  `builtin_op_importers.cpp`, DEFINE_BUILTIN_OP_IMPORTER(Shape) is `addShape(input)`), and so do onnx-graphsurgeon's
  `fold_shapes` (0.6) and onnx-tool: the cls-token `Expand` after it gets the wrong rank. Rewritten as `Shape(x)`
  followed by `Slice`, it means the same to every reader.
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


def for_tensorrt(path: str | Path, probabilities: bool = False) -> dict:
    """Rewrite ONNX file `path` in place for every supported TensorRT; returns what changed."""
    import onnx

    model = onnx.load(str(path))
    changed = {"shape_slices_lowered": lower_shape_slices(model), "opset_domains_dropped": prune_opset_imports(model)}
    if probabilities:
        add_probabilities(model)
        changed["probabilities_output"] = PROBS
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return changed
