"""Files that make a TensorRT device bundle drop into the device's own tooling (torch-free, text only).

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


def nvinfer_config(*, onnx: str, engine: str, labels: str, chw: list[int], batch: int, precision: str, data: dict,
                   output: str) -> str:
    """A Gst-nvinfer `[property]` config for a primary classifier; paths are relative to the config's folder."""
    scale, offsets, exact = nvinfer_scale(data)
    resize = data.get("resize", "direct")
    lines = [
        "# Gst-nvinfer config written by edgevp: a primary classifier on full frames.",
        "# y = net-scale-factor * (x - offsets[c]) on 0..255 RGB pixels reproduces the model's preprocessing"
        + ("" if exact else " APPROXIMATELY (per-channel std differs; nvinfer has one scale)") + ".",
        "# The model outputs logits (no softmax): classifier-threshold is compared with a logit, so it is set far "
        "below any logit to always report the arg-max class.",
        "# build_engine.sh rewrites model-engine-file to the engine it builds for this TensorRT and GPU.",
        "[property]",
        "gpu-id=0",
        f"net-scale-factor={scale!r}",
        "offsets=" + ";".join(f"{o:g}" for o in offsets),
        "model-color-format=0",
        f"onnx-file={onnx}",
        f"model-engine-file={engine}",
        f"labelfile-path={labels}",
        "infer-dims=" + ";".join(map(str, chw)),
        "network-input-order=0",
        f"batch-size={batch}",
        f"network-mode={NETWORK_MODE[precision]}",
        "network-type=1",
        "process-mode=1",
        "gie-unique-id=1",
        f"output-blob-names={output}",
        f"maintain-aspect-ratio={0 if resize == 'direct' else 1}",
        "classifier-threshold=-1e30",
        "",
    ]
    return "\n".join(lines)


def triton_config(*, name: str, platform: str, input_name: str, input_dtype: str, chw: list[int], output: str,
                  num_classes: int, max_batch_size: int, label_file: str = "labels.txt") -> str:
    """A Triton `config.pbtxt`. `max_batch_size` 0 (a fixed batch-1 engine): dims carry the batch axis."""
    in_dims = list(chw) if max_batch_size > 0 else [1, *chw]
    out_dims = [num_classes] if max_batch_size > 0 else [1, num_classes]
    text = [f'name: "{name}"', f'platform: "{platform}"', f"max_batch_size: {max_batch_size}",
            "input [", "  {", f'    name: "{input_name}"', f"    data_type: {TRITON_DTYPE[input_dtype]}",
            "    format: FORMAT_NCHW" if max_batch_size > 0 else "    format: FORMAT_NONE",
            f"    dims: [ {', '.join(map(str, in_dims))} ]", "  }", "]",
            "output [", "  {", f'    name: "{output}"', "    data_type: TYPE_FP32",
            f"    dims: [ {', '.join(map(str, out_dims))} ]", f'    label_filename: "{label_file}"', "  }", "]",
            "instance_group [", "  {", "    count: 1", "    kind: KIND_GPU" if platform == "tensorrt_plan" else
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
