"""The TensorRT device bundle's file formats (torch-free, text only), written by export and pack, read by the device.

A `trt-<precision>/` bundle carries all three forms, because a Jetson user picks one serving stack and the files are
small:

- `labels.txt`: one class per line (jetson-inference `--labels`, Triton `label_filename`, our own tools).
- `deepstream/config_infer_primary.txt`: a Gst-nvinfer config (classifier, `network-type=1`) whose
  `net-scale-factor`/`offsets` reproduce the model's own preprocessing (`y = net-scale-factor * (x - offsets[c])`
  on 0..255 RGB pixels), with `deepstream/labels.txt` in nvinfer's classifier form (all labels of the one output
  layer on one line, separated by ';').
- `triton/<model>/config.pbtxt` (platform `tensorrt_plan`, `1/model.plan` placed there by build_engine.sh) and an
  ONNX Runtime fallback `triton/<model>_onnx/` (platform `onnxruntime_onnx`, `1/model.onnx`), each with labels.txt.

Engines built on the device are named after what they are tied to: `model.trt<major.minor>-sm<cc>-<precision>.engine`
(e.g. `model.trt10.3-sm87-fp16.engine`), with a sidecar JSON of the same stem that `check_sidecar` reads.
"""
from __future__ import annotations

import re
from pathlib import Path

from ..errors import IncompatibleError

NETWORK_MODE = {"fp32": 0, "int8": 1, "fp16": 2}  # nvinfer network-mode
TRITON_DTYPE = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64", "int32": "TYPE_INT32",
                "uint8": "TYPE_UINT8", "int8": "TYPE_INT8"}
ENGINE_RE = re.compile(r"^(?P<stem>.+)\.trt(?P<trt>\d+\.\d+)-sm(?P<sm>\d+)-(?P<precision>[a-z0-9]+)\.(engine|plan)$")


def model_name(run: str, precision: str) -> str:
    """A Triton model name (directory name) from the run's name and the precision."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", f"{run}_{precision}").strip("_") or "model"


def labels_txt(classes: list[str]) -> str:
    return "".join(f"{c}\n" for c in classes)


def deepstream_labels(classes: list[str]) -> str:
    """nvinfer's classifier label file: the labels of the (single) output layer on one line, ';'-separated."""
    return ";".join(c.replace(";", ",") for c in classes) + "\n"


def preprocessing(data: dict) -> dict:
    """What a client must do to an RGB image before the model, from the artifact's `data_config` metadata."""
    size = list(data["input_size"])
    inside = bool(data.get("include_preprocess", True))
    return {"color_order": "RGB", "layout": "NCHW", "input_size": size, "resize": data.get("resize", "direct"),
            "interpolation": data.get("interpolation", "bicubic"), "crop_pct": data.get("crop_pct", 1.0),
            "scale": 1 / 255, "range": "[0, 1] after scale",
            "normalisation": "inside the model" if inside else "outside: (x * scale - mean) / std",
            "mean": list(data["mean"]), "std": list(data["std"])}


def nvinfer_scale(data: dict) -> tuple[float, list[float], bool]:
    """(net-scale-factor, offsets, exact) so that nvinfer's `s * (x - offsets[c])` on 0..255 pixels gives what the
    model takes. With normalisation inside the model: 1/255 and zero offsets. Outside: offsets 255*mean and
    1/(255*std), exact only when std is the same for every channel (nvinfer has one scalar scale), else the mean std."""
    if data.get("include_preprocess", True):
        return 1 / 255, [0.0, 0.0, 0.0], True
    mean, std = [float(v) for v in data["mean"]], [float(v) for v in data["std"]]
    s = sum(std) / len(std)
    return 1 / (255 * s), [255 * m for m in mean], max(std) - min(std) < 1e-9


def nvinfer_scale_error(data: dict) -> float:
    """The largest error, in normalised units, of nvinfer's one scalar scale against the per-channel std: over pixels
    x in [0, 1], |x - m_c| * |1/s - 1/s_c| peaks at max(m_c, 1 - m_c) * |1/s - 1/s_c| (0 when exact)."""
    scale, _, exact = nvinfer_scale(data)
    if exact:
        return 0.0
    s = 1 / (255 * scale)
    return max(max(m, 1 - m) * abs(1 / s - 1 / sc) for m, sc in zip(map(float, data["mean"]), map(float, data["std"])))


# nvinfer scaling-filter (NvBufSurfTransform_Inter, nvbufsurftransform.h): unset is Default = nearest
SCALING_FILTER = {"nearest": 0, "bilinear": 1, "bicubic": 2}  # 2: GPU cubic / VIC 5-tap


def deepstream_fidelity(data: dict) -> dict:
    """How exactly nvinfer's preprocessing reproduces training's, and what differs."""
    interp = data.get("interpolation", "bicubic")
    differs = []
    if interp not in SCALING_FILTER:
        differs.append(f"training interpolation '{interp}' has no nvinfer filter; bicubic (scaling-filter=2) used")
    if data.get("resize", "direct") != "direct":
        differs.append(f"training resized the shorter side to size/crop_pct ({data.get('crop_pct')}) and centre-"
                       "cropped; nvinfer has no centre crop: it letterboxes the whole frame (maintain-aspect-ratio=1, "
                       "symmetric-padding=1). Crop the ROI upstream (nvdspreprocess or nvvideoconvert src-crop) to "
                       "match, or train with data.resize=direct")
    error = nvinfer_scale_error(data)
    if error:
        differs.append(f"per-channel std differs and nvinfer has one scale: up to {error:.3g} error in normalised "
                       "units (export with --include-preprocess for an exact config)")
    return {"exact": not differs, "scaling_filter": SCALING_FILTER.get(interp, 2), "scale_error": error,
            "differences": differs}


def nvinfer_config(*, onnx: str | None, engine: str, labels: str, chw: list[int], batch: int, precision: str,
                   data: dict, output: str) -> str:
    """A Gst-nvinfer `[property]` config for a primary classifier on the model's `probs` (Softmax) output; paths are
    relative to the config's folder. `onnx` None (int8): nvinfer may only load the engine build_engine.sh made,
    since its own onnx-file build without a calibration file silently builds FP16."""
    scale, offsets, _ = nvinfer_scale(data)
    fidelity = deepstream_fidelity(data)
    resize = data.get("resize", "direct")
    notes = ["# Gst-nvinfer config written by edgevp: a primary classifier on full frames.",
             "# y = net-scale-factor * (x - offsets[c]) on 0..255 RGB pixels is the model's preprocessing"
             + (" exactly." if fidelity["exact"] else "; it DIFFERS from training:")]
    notes += [f"#   - {d}" for d in fidelity["differences"]]
    notes += [f"# The classifier reads `{output}` (a Softmax of the logits): nvinfer's built-in classifier parser "
              "expects probabilities; classifier-threshold=0 reports the arg-max class of every frame (raise it to "
              "drop uncertain ones).",
              "# build_engine.sh rewrites model-engine-file to the engine it builds for this TensorRT and GPU."]
    if onnx is None:
        notes.append("# int8: no onnx-file on purpose; nvinfer's own build would silently be FP16 without a "
                     "calibration file. Run build_engine.sh first.")
    keys = [("gpu-id", 0), ("net-scale-factor", repr(scale)), ("offsets", ";".join(f"{o:g}" for o in offsets)),
            ("model-color-format", 0), *([("onnx-file", onnx)] if onnx else []), ("model-engine-file", engine),
            ("labelfile-path", labels), ("infer-dims", ";".join(map(str, chw))), ("network-input-order", 0),
            ("batch-size", batch), ("network-mode", NETWORK_MODE[precision]), ("network-type", 1),
            ("process-mode", 1), ("gie-unique-id", 1), ("output-blob-names", output),
            ("maintain-aspect-ratio", 0 if resize == "direct" else 1),
            *([] if resize == "direct" else [("symmetric-padding", 1)]),
            ("scaling-filter", fidelity["scaling_filter"]), ("classifier-threshold", 0)]
    return "\n".join([*notes, "[property]", *(f"{k}={v}" for k, v in keys), ""])


def triton_config(*, name: str, platform: str, inputs: list[tuple[str, str, list[int]]],
                  outputs: list[tuple[str, list[int]]], max_batch_size: int, label_file: str = "labels.txt") -> str:
    """A Triton `config.pbtxt`. `inputs`: (name, dtype, dims without the batch); `outputs`: (name, dims without the
    batch), fp32 with the labels. `max_batch_size` 0 (a fixed batch-1 engine): dims carry the batch axis; above 1,
    `dynamic_batching` lets the server batch requests (of different tasks, for a pack)."""
    def dims(d: list[int]) -> str:
        return ", ".join(map(str, d if max_batch_size > 0 else [1, *d]))

    text = [f'name: "{name}"', f'platform: "{platform}"', f"max_batch_size: {max_batch_size}", "input ["]
    for i, (in_name, dtype, in_dims) in enumerate(inputs):
        image = len(in_dims) == 3
        fmt = "FORMAT_NCHW" if image and max_batch_size > 0 else "FORMAT_NONE"
        # a per-sample scalar (a pack's `task`): Triton wants non-empty dims, so [1] reshaped to [] in the model
        shape = [f"    dims: [ {dims(in_dims)} ]"] if in_dims or max_batch_size == 0 else \
            ["    dims: [ 1 ]", "    reshape: { shape: [ ] }"]
        text += ["  {", f'    name: "{in_name}"', f"    data_type: {TRITON_DTYPE[dtype]}", f"    format: {fmt}",
                 *shape, "  }" + ("," if i < len(inputs) - 1 else "")]
    text += ["]", "output ["]
    for i, (out_name, out_dims) in enumerate(outputs):
        text += ["  {", f'    name: "{out_name}"', "    data_type: TYPE_FP32", f"    dims: [ {dims(out_dims)} ]",
                 f'    label_filename: "{label_file}"', "  }" + ("," if i < len(outputs) - 1 else "")]
    text += ["]", "instance_group [", "  {", "    count: 1", "    kind: KIND_GPU" if platform == "tensorrt_plan" else
             "    kind: KIND_AUTO", "  }", "]"]
    if max_batch_size > 1:
        text += ["dynamic_batching { }"]
    return "\n".join(text) + "\n"


def engine_name(trt_version: str, compute_capability: str, precision: str, stem: str = "model") -> str:
    """`model.trt10.3-sm87-fp16.engine`: the TensorRT major.minor and the GPU's compute capability it is tied to."""
    major_minor = ".".join(trt_version.split(".")[:2])
    return f"{stem}.trt{major_minor}-sm{compute_capability.replace('.', '')}-{precision}.engine"


def parse_engine_name(name: str) -> dict | None:
    m = ENGINE_RE.match(Path(name).name)
    return None if m is None else {"trt": m["trt"], "sm": m["sm"], "precision": m["precision"]}


def check_engine_name(path: str | Path, trt_version: str | None, compute_capability: str | None) -> None:
    """Refuse an engine whose name says it was built for another TensorRT major.minor or GPU compute capability."""
    got = parse_engine_name(str(path))
    if got is None:
        return
    hint = "rebuild it here with the bundle's build_engine.sh"
    if trt_version and got["trt"] != ".".join(trt_version.split(".")[:2]):
        raise IncompatibleError(f"engine '{path}' was built for TensorRT {got['trt']}, this is {trt_version}", hint)
    if compute_capability and got["sm"] != compute_capability.replace(".", ""):
        raise IncompatibleError(f"engine '{path}' was built for sm{got['sm']}, this GPU is "
                                f"sm{compute_capability.replace('.', '')}", hint)
