"""Check device configs against the tools' documented rules (torch-free): a DeepStream Gst-nvinfer config file
(read as GLib's GKeyFile reads it, see `keyfile`) and a Triton config.pbtxt.

The rules live in `edgevp.conformance.rules`, read from DeepStream 6.2's gst-nvinfer / nvdsinfer sources and
Triton's model-configuration docs (not by running them: neither runs here). `onnx`, `tritonclient` and `protobuf`
are imported inside the functions that need them.
"""
from __future__ import annotations

from . import rules as R
from .findings import Finding

_SAME_VALUES = {"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze"}  # keep a Softmax's values as they are
TRITON_DOC = "triton-inference-server/server docs/user_guide/model_configuration.md"


# --- DeepStream Gst-nvinfer ------------------------------------------------------------------------------------
def check_nvinfer_config(text: str, onnx_model=None) -> list[Finding]:
    """What DeepStream 6.2's nvinfer refuses or silently changes in a config file's text; with `onnx_model` (a
    ModelProto or path) also whether a classifier's outputs are probabilities and the offsets match its channels."""
    from . import keyfile

    try:
        groups = keyfile.parse(text)
    except keyfile.KeyFileError as exc:
        return [Finding("nvinfer-syntax", "error", "config", f"GLib cannot load it ({exc}): the element does not "
                        "start; write `key=value` lines under [property], comments on their own `#` lines.",
                        f"{R.PP} ~l.1141-1144")]
    if "property" not in groups:
        return [Finding("nvinfer-syntax", "error", "[property]", "no [property] group: the element does not start; "
                        "put the keys under [property].", f"{R.PP} ~l.1147-1150")]
    props, out = _read_group(groups["property"], R.NVINFER_PROPERTY, "property")
    net_type = props.get("network-type", 1 if props.get("is-classifier") else 0)
    if net_type in (0, 3):  # class-attrs groups are parsed for detectors only (~l.1160)
        for name in (g for g in groups if g.startswith("class-attrs-")):
            out += _read_group(groups[name], R.NVINFER_CLASS_ATTRS, name)[1]
    model = _load_model(onnx_model)
    return out + _nvinfer_semantics(props, net_type, model)


def _read_group(values: dict[str, str], specs: dict, group: str) -> tuple[dict, list[Finding]]:
    """Parse every key of a group as nvinfer does; the values that parsed, and the findings."""
    from . import keyfile

    props, out = {}, []
    for key, raw in values.items():
        spec = specs.get(key)
        if spec is None:
            out.append(_unknown_key(key, group))
            continue
        src = f"{R.PP} ~l.{spec.line}"
        try:
            props[key] = value = keyfile.read(spec.kind, raw)
        except ValueError as exc:
            out.append(Finding("nvinfer-value-kind", "error", key, f"{exc}: nvinfer reads {key} as {spec.kind}, "
                               "fails to parse the config and the element does not start.", f"{src}, ~l.20-24"))
            continue
        out += _key_range(key, spec, value, src)
    return props, out


def _unknown_key(key: str, group: str) -> Finding:
    if key in R.NVINFER_LATER:
        return Finding("nvinfer-unknown-key", "warning", key, f"DeepStream 6.2 does not know [{group}] {key} (a "
                       "later release does) and ignores it; leave it out for JetPack 5.1.", f"{R.PP} ~l.481")
    if key in R.NVINFER_UNREAD:
        return Finding("nvinfer-unknown-key", "error", key, f"{key} is defined in gstnvinfer_property_parser.h "
                       f"(l.{R.NVINFER_UNREAD[key]}) but DeepStream 6.2 never reads it: the setting has no effect; "
                       "remove it.", f"{R.PP} ~l.481")
    line = 276 if group.startswith("class-attrs-") else 481
    return Finding("nvinfer-unknown-key", "error", key, f"nvinfer does not read [{group}] {key}: it prints 'Unknown "
                   "key' and ignores the setting; fix the spelling or remove it.", f"{R.PP} ~l.{line}")


def _key_range(key: str, spec, value, src: str) -> list[Finding]:
    values = value if isinstance(value, list) else [value]
    rule = {"infer-dims": "nvinfer-infer-dims", "offsets": "nvinfer-offsets"}.get(key, "nvinfer-range")
    if spec.length is not None and len(values) != spec.length:
        return [Finding(rule, "error", key, f"{key} has {len(values)} values, nvinfer needs {spec.length} "
                        f"({'c;h;w' if key == 'infer-dims' else 'exactly'}): the element does not start.", src)]
    if key == "offsets" and len(values) > 4:
        return [Finding(rule, "error", key, "offsets has more than 4 values (_MAX_CHANNELS): the element does not "
                        "start; give one offset per input channel.", f"{src}-760")]
    if key == "network-mode" and value == 3:
        return [Finding(rule, "warning", key, "network-mode=3 (BEST) exists only in newer DeepStream; 6.2 rejects "
                        "it: use 0 (FP32), 1 (INT8) or 2 (FP16).", src)]
    bad = [v for v in values if (spec.values and v not in spec.values) or (spec.low is not None and v < spec.low)
           or (spec.high is not None and v > spec.high)]
    if not bad:
        return []
    allowed = (f"one of {list(spec.values)}" if spec.values else
               " and ".join(s for s in (spec.low is not None and f">= {spec.low}",
                                        spec.high is not None and f"<= {spec.high}") if s))
    return [Finding(rule, "error", key, f"{key}={bad[0]} is out of range (nvinfer accepts {allowed}): the config "
                    "fails to parse and the element does not start.", src)]


def _nvinfer_semantics(props: dict, net_type: int, model) -> list[Finding]:
    out = []
    if "scaling-filter" not in props:
        out.append(Finding("nvinfer-scaling-filter-default", "warning", "scaling-filter", "scaling-filter is unset, "
                           "so frames are resized with nearest neighbour; set scaling-filter=1 (bilinear) to match "
                           "training-time resizing.", R.NVINFER_FACTS["scaling-filter-default"]))
    if props.get("network-mode") == 1 and props.get("onnx-file") and not props.get("int8-calib-file"):
        out.append(Finding("nvinfer-int8-no-calib", "error", "network-mode", "network-mode=1 (INT8) with onnx-file "
                           "and no int8-calib-file: nvinfer silently builds an FP16 engine; add int8-calib-file or "
                           "set network-mode=2 (FP16).", R.NVINFER_FACTS["int8-no-calib"]))
    scale = props.get("net-scale-factor", 1.0)
    if scale <= 0:
        out.append(Finding("nvinfer-range", "error", "net-scale-factor", f"net-scale-factor={scale}: nvinfer applies "
                           "scale and offsets only when it is > 0, so the input is not normalised; set the scale "
                           "(e.g. 1/255).", R.NVINFER_FACTS["offsets"]))
    offsets, channels = props.get("offsets") or [], _channels(props, model)
    if offsets and scale > 0 and len(offsets) <= 4 and len(offsets) != channels:
        out.append(Finding("nvinfer-offsets", "error", "offsets", f"{len(offsets)} offsets for a {channels}-channel "
                           "input: nvinfer fails to set up pre-processing ('Preprocessor set scale and offsets "
                           "failed'); give one offset per channel.", R.NVINFER_FACTS["offsets"]))
    if net_type == 1 and model is not None and not props.get("parse-classifier-func-name"):
        for name in props.get("output-blob-names") or [o.name for o in model.graph.output]:
            producer = _producer(model, name)
            if producer != "Softmax":
                made = f"comes from {producer}" if producer else "is made by no node"
                out.append(Finding("nvinfer-classifier-probabilities", "error", name, f"classifier output '{name}' "
                                   f"{made}, not a Softmax: nvinfer's built-in parser "
                                   "expects probabilities and never reports a class whose score is <= 0; end the "
                                   "model with Softmax or set parse-classifier-func-name.",
                                   R.NVINFER_FACTS["classifier-probabilities"]))
    return out


def _load_model(model):
    if model is None:
        return None
    import onnx

    return model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))


def _channels(props: dict, model) -> int:
    """The input's channel count as nvinfer sees it: infer-dims, else the ONNX input, else the colour format."""
    dims = props.get("infer-dims")
    if dims and len(dims) == 3:
        return dims[0]
    if model is not None:
        inits = {t.name for t in model.graph.initializer}
        shape = next((vi.type.tensor_type.shape.dim for vi in model.graph.input if vi.name not in inits), [])
        if len(shape) == 4 and shape[1].dim_value:
            return shape[1].dim_value
    return 1 if props.get("model-color-format") == 2 else 3


def _producer(model, tensor: str) -> str | None:
    """The op that computes `tensor`, looking through ops that keep values (Identity, Reshape, ...)."""
    made_by = {out: n for n in model.graph.node for out in n.output}
    node = made_by.get(tensor)
    while node is not None and node.op_type in _SAME_VALUES and node.input:
        node = made_by.get(node.input[0])
    return node.op_type if node is not None else None


# --- Triton ----------------------------------------------------------------------------------------------------
_TRITON_TYPES = {"FLOAT": "TYPE_FP32", "FLOAT16": "TYPE_FP16", "DOUBLE": "TYPE_FP64", "BFLOAT16": "TYPE_BF16",
                 "INT8": "TYPE_INT8", "INT16": "TYPE_INT16", "INT32": "TYPE_INT32", "INT64": "TYPE_INT64",
                 "UINT8": "TYPE_UINT8", "UINT16": "TYPE_UINT16", "UINT32": "TYPE_UINT32", "UINT64": "TYPE_UINT64",
                 "BOOL": "TYPE_BOOL", "STRING": "TYPE_STRING"}


def check_triton_config(text: str, onnx_model=None) -> list[Finding]:
    """Whether `text` is a valid Triton config.pbtxt and, with `onnx_model`, matches the graph's inputs/outputs."""
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        return [Finding("triton-unchecked", "warning", "config.pbtxt", "tritonclient is not installed, so the "
                        "config was not checked; pip install 'tritonclient[grpc]'.", TRITON_DOC)]
    cfg = model_config_pb2.ModelConfig()
    try:
        text_format.Parse(text, cfg)
    except text_format.ParseError as exc:
        return [Finding("triton-parse", "error", "config.pbtxt", f"not a ModelConfig ({exc}); Triton will not load "
                        "the model.", "triton-inference-server/common protobuf/model_config.proto")]
    out = []
    if cfg.max_batch_size > 1 and not cfg.HasField("dynamic_batching"):
        out.append(Finding("triton-dynamic-batching", "warning", "dynamic_batching", f"max_batch_size="
                           f"{cfg.max_batch_size} without dynamic_batching: Triton never merges requests; add "
                           "`dynamic_batching {}`.", f"{TRITON_DOC} (Dynamic Batcher)"))
    model = _load_model(onnx_model)
    return out + (_triton_vs_onnx(cfg, model) if model is not None else [])


def _triton_vs_onnx(cfg, model) -> list[Finding]:
    from onnx import TensorProto
    from tritonclient.grpc import model_config_pb2

    src = f"{TRITON_DOC} (Maximum Batch Size; Inputs and Outputs)"
    inits = {t.name for t in model.graph.initializer}
    graph = {vi.name: vi for vi in list(model.graph.input) + list(model.graph.output) if vi.name not in inits}
    names = {vi.name for vi in model.graph.input if vi.name not in inits}
    out = [Finding("triton-io-names", "error", name, f"graph input '{name}' is missing from config.pbtxt; Triton "
                   "cannot feed it: add an input entry.", src) for name in sorted(names - {i.name for i in cfg.input})]
    for io in list(cfg.input) + list(cfg.output):
        vi = graph.get(io.name)
        if vi is None:
            out.append(Finding("triton-io-names", "error", io.name, f"'{io.name}' is not an input or output of the "
                               f"graph ({', '.join(sorted(graph))}); use the graph's tensor names.", src))
            continue
        if vi.type.tensor_type.HasField("shape"):  # an unknown rank matches any dims
            onnx_dims = [d.dim_value or -1 for d in vi.type.tensor_type.shape.dim]
            out += _triton_dims(io, onnx_dims, cfg.max_batch_size, src)
        want = _TRITON_TYPES.get(TensorProto.DataType.Name(vi.type.tensor_type.elem_type))
        got = model_config_pb2.DataType.Name(io.data_type)
        if want and got != want:
            out.append(Finding("triton-dtype", "error", io.name, f"data_type {got}, but the graph has {want}; "
                               f"set data_type: {want}.", f"{TRITON_DOC} (Datatypes)"))
    return out


def _triton_dims(io, onnx_dims: list[int], max_batch: int, src: str) -> list[Finding]:
    # a `reshape` is what the model gets (e.g. dims [1] reshaped to [] for a per-sample scalar, which plain dims
    # cannot express: Triton requires non-empty dims)
    shape = list(io.reshape.shape) if io.HasField("reshape") else list(io.dims)
    dims, expected = shape, onnx_dims[1:] if max_batch > 0 else onnx_dims
    if max_batch > 0 and onnx_dims and onnx_dims[0] != -1 and onnx_dims[0] < max_batch:
        return [Finding("triton-dims", "error", io.name, f"the graph's batch dimension is fixed at {onnx_dims[0]} "
                        f"but max_batch_size is {max_batch}; export a dynamic batch or lower max_batch_size.", src)]
    if len(dims) != len(expected) or any(d != e and e != -1 and d != -1 for d, e in zip(dims, expected)):
        batch = " (with max_batch_size > 0, dims exclude the batch)" if max_batch > 0 else ""
        return [Finding("triton-dims", "error", io.name, f"dims {dims} do not match the graph's {onnx_dims}"
                        f"{batch}; set dims: {expected}.", src)]
    return []
