"""Check artifacts against the device tools' documented rules (torch-free): an ONNX graph against a TensorRT
release's ONNX importer and a trtexec command line here; a DeepStream Gst-nvinfer config and a Triton config.pbtxt
in `configs` (re-exported below).

The rules live in `edgevp.conformance.rules`, read from the tools' own sources (not by running them: TensorRT and
DeepStream cannot run here); every `Finding` carries the citation of the rule it breaks. `onnx` and `numpy` are
imported inside the functions that need them.
"""
from __future__ import annotations

from collections import Counter

from . import rules as R
from .configs import check_nvinfer_config, check_triton_config
from .findings import Finding, errors
from .platforms import Platform, resolve

__all__ = ["Finding", "check_nvinfer_config", "check_onnx", "check_triton_config", "check_trtexec_args", "errors"]
_DEFAULT = ("", "ai.onnx")


# --- ONNX -> TensorRT importer ---------------------------------------------------------------------------------
def check_onnx(model, platform: Platform | str) -> list[Finding]:
    """What `platform`'s ONNX importer refuses (or silently changes) in `model` (a ModelProto or a path)."""
    import onnx

    model = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
    platform = platform if isinstance(platform, Platform) else resolve(platform)[0]
    rules = R.importer_rules(platform.trt)
    graphs = list(_graphs(model.graph))
    every = [n for g in graphs for n in g.node] + [n for f in model.functions for n in f.node]
    consts = _constants(graphs)

    def find(rule: str, severity: str, where: str, message: str) -> Finding:
        return Finding(rule, severity, where, message, rules.sources[rule])

    local = {f.name for f in model.functions} if rules.local_functions else set()
    nodes = [n for n in every if n.op_type not in local]  # a local-function call imports as the function's body
    out = _opset(model, rules, platform, find) + _domains(model, every, nodes, find)
    out += _ops(nodes, rules, platform, find)
    out += _shape_attrs(nodes, rules, platform, find)
    out += _qdq(nodes, consts, _elem_types(model, consts), rules, platform, find)
    return out + _input_dtypes(model.graph, rules, platform, find)


def _graphs(graph):
    """`graph` and every subgraph (If / Loop / Scan bodies)."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _graphs(sub)


def _constants(graphs) -> dict:
    """Tensor name -> TensorProto for initializers, Constant outputs and Identity of either."""
    out = {}
    for g in graphs:
        out.update({t.name: t for t in g.initializer})
        for n in g.node:
            value = next((a.t for a in n.attribute if a.name == "value"), None)
            if n.op_type == "Constant" and n.domain in _DEFAULT and value is not None:
                out[n.output[0]] = value
            elif n.op_type == "Identity" and n.input and n.input[0] in out:
                out[n.output[0]] = out[n.input[0]]
    return out


def _elem_types(model, consts) -> dict[str, str]:
    """Tensor name -> ONNX element type name, from constants, declared value infos and shape inference."""
    import onnx

    name = onnx.TensorProto.DataType.Name
    types = {k: name(t.data_type) for k, t in consts.items()}
    try:
        model = onnx.shape_inference.infer_shapes(model)
    except (onnx.shape_inference.InferenceError, ValueError, RuntimeError):  # custom domains, broken graph
        pass  # use what is declared
    for g in _graphs(model.graph):
        for vi in list(g.input) + list(g.output) + list(g.value_info):
            if vi.type.tensor_type.elem_type:
                types.setdefault(vi.name, name(vi.type.tensor_type.elem_type))
    return types


def _opset(model, rules, platform, find) -> list[Finding]:
    version = next((o.version for o in model.opset_import if o.domain in _DEFAULT), None)
    if version is None or rules.opset_min <= version <= rules.opset_max:
        return []
    span = f"{rules.opset_min} to {rules.opset_max}"
    if version > rules.opset_max:
        return [find("opset-range", "error", f"opset {version}", f"{platform.describe()} imports ONNX opsets {span}; "
                     f"export at opset {rules.opset_max} or lower.")]
    return [find("opset-range", "warning", f"opset {version}", f"opsets below {rules.opset_min} are not guaranteed "
                 f"on {platform.describe()}; export at opset {rules.opset_min} to {rules.opset_max}.")]


def _domains(model, every, nodes, find) -> list[Finding]:
    used = {("" if n.domain in _DEFAULT else n.domain) for n in every}
    out = [find("unused-opset-domain", "error", f"opset_import '{o.domain}'", f"the model imports domain "
                f"'{o.domain}' but no node uses it; drop the opset_import entry.")
           for o in model.opset_import if o.domain not in _DEFAULT and o.domain not in used]
    custom = Counter((n.domain, n.op_type) for n in nodes if n.domain not in _DEFAULT)
    return out + [find("custom-domain", "error", f"{d}::{op}", f"{count} node(s) in custom domain '{d}': TensorRT "
                       f"ignores the domain and looks '{op}' up by name (a builtin of that name or a plugin); "
                       "replace them with standard ONNX ops.") for (d, op), count in sorted(custom.items())]


def _ops(nodes, rules, platform, find) -> list[Finding]:
    missing = Counter(n.op_type for n in nodes if n.domain in _DEFAULT and n.op_type not in rules.ops)
    return [find("op-unsupported", "error", op, f"{count} '{op}' node(s): {platform.describe()}'s importer has no "
                 f"'{op}' and would need a plugin; rewrite it with supported ops or target a newer TensorRT.")
            for op, count in sorted(missing.items())]


def _shape_attrs(nodes, rules, platform, find) -> list[Finding]:
    if rules.shape_start_end:
        return []
    out = []
    for n in nodes:
        attrs = {a.name: a.i for a in n.attribute}
        if n.op_type == "Shape" and ("end" in attrs or attrs.get("start", 0) != 0):
            out.append(find("shape-start-end", "error", n.name or n.output[0], f"Shape with start/end {attrs}: "
                            f"{platform.describe()} ignores them and returns the whole shape; lower it to "
                            "Shape + Slice (edgevp.conformance.graph.lower_shape_slices)."))
    return out


def _qdq(nodes, consts, types, rules, platform, find) -> list[Finding]:
    from onnx import numpy_helper

    out = []
    for n in nodes:
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear") or n.domain not in _DEFAULT:
            continue
        where, zp = n.name or n.output[0], (n.input[2] if len(n.input) > 2 and n.input[2] else None)
        if zp is None:
            out.append(find("qdq-zero-point-missing", "error" if rules.zero_point_required else "warning", where,
                            f"{n.op_type} without a zero point: {platform.describe()} "
                            + ("requires it; add an all-zero INT8 zero point." if rules.zero_point_required else
                               "quantizes to INT8 where ONNX means UINT8; add an all-zero INT8 zero point.")))
        elem = _qdq_type(n, zp, types, consts)
        if elem and elem not in rules.qdq_types and (zp or n.op_type == "DequantizeLinear"):
            hint = "keep biases in float (ORT: QuantizeBias=False)" if elem == "INT32" else "quantize to INT8"
            out.append(find("qdq-type", "error", where, f"{n.op_type} on {elem} data: {platform.describe()} "
                            f"quantizes only to {', '.join(sorted(rules.qdq_types))}; {hint}."))
        if zp in consts and elem != "FLOAT8E4M3FN":
            try:
                values = numpy_helper.to_array(consts[zp]).astype("int64")
            except (TypeError, ValueError):  # a type numpy cannot hold: not checkable here
                continue
            if values.any():
                out.append(find("qdq-symmetric", "error", where, f"{n.op_type} zero point {values.ravel()[:4].tolist()}"
                                f" is not zero: TensorRT supports only symmetric quantization; quantize with zero "
                                "points 0 (ORT: ActivationSymmetric=True, WeightSymmetric=True)."))
    return out


def _qdq_type(node, zp, types, consts) -> str | None:
    """The quantized element type of a Q/DQ: its zero point's, else output_dtype / UINT8 (Q) or, for a DQ of a
    constant, the constant's (a DQ of a computed tensor gets the type TensorRT gave its producer)."""
    if zp:
        return types.get(zp)
    if node.op_type == "QuantizeLinear":
        from onnx import TensorProto

        dtype = next((a.i for a in node.attribute if a.name == "output_dtype"), 0)
        return TensorProto.DataType.Name(dtype) if dtype else "UINT8"
    return types.get(node.input[0]) if node.input[0] in consts else None


def _input_dtypes(graph, rules, platform, find) -> list[Finding]:
    from onnx import TensorProto

    out, inits = [], {t.name for t in graph.initializer}
    for vi in graph.input:
        if vi.name in inits:
            continue
        dtype = TensorProto.DataType.Name(vi.type.tensor_type.elem_type)
        if dtype not in rules.input_dtypes:
            out.append(find("input-dtype", "error", vi.name, f"input of type {dtype}: {platform.describe()} cannot "
                            f"bind it; use one of {', '.join(sorted(rules.input_dtypes))}."))
        elif dtype in rules.input_dtypes_cast:
            out.append(find("input-dtype", "warning", vi.name, f"input of type {dtype} is narrowed by "
                            f"{platform.describe()} (INT64 -> INT32, DOUBLE -> FLOAT); feed the narrower type."))
    return out


# --- trtexec ---------------------------------------------------------------------------------------------------
_TRTEXEC_HINTS = {"stronglyTyped": "on TensorRT 8.x build with --fp16 / --int8 (weak typing)",
                  "skipInference": "use --buildOnly on 8.5", "workspace": "use --memPoolSize=workspace:<MiB>",
                  "buildOnly": "use --skipInference", "explicitBatch": "drop it (explicit batch is the only mode)"}


def check_trtexec_args(args: list[str], trt_version: str) -> list[Finding]:
    """Options of a trtexec command line (`args`, with or without `trtexec` first) its version does not know."""
    rules, out = R.trtexec_rules(trt_version), []
    for i, arg in enumerate(args):
        if (i == 0 and arg.rsplit("/", 1)[-1].startswith("trtexec")) or arg == "-h":
            continue
        name = arg.split("=", 1)[0]
        opt = name[2:] if name.startswith("--") else None
        if opt not in rules.options:
            hint = _TRTEXEC_HINTS.get(opt or "", "remove it")
            out.append(Finding("trtexec-unknown-option", "error", name, f"trtexec {rules.version} has no {name}: it "
                               f"prints 'Unknown option' and exits; {hint}.", rules.source))
        elif opt in rules.deprecated:
            line, instead = rules.deprecated[opt]
            out.append(Finding("trtexec-deprecated-option", "warning", name, f"trtexec {rules.version} warns that "
                               f"{name} is deprecated; use {instead}.", f"{rules.source.split(' ~')[0]} ~l.{line}"))
    return out
