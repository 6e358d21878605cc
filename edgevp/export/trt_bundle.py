"""The TensorRT device bundle of one export: `trt-<precision>/` with the precision-explicit ONNX, build and verify
scripts, reference I/O, and the files the device's tooling reads (labels.txt, model.json, a DeepStream nvinfer config,
a Triton model repository, the test split). A Jetson has TensorRT but not our training stack, so the engine is
normally built there; every file is checked by `edgevp.conformance` before it ships."""
from __future__ import annotations

import json
import shutil
from pathlib import Path


from ..conformance.graph import PROBS
from ..conformance.platforms import resolve
from ..io import write_text
from ..runtime import formats
from .bundle import bundle_versions
from .device_bundle import BundleSpec, TritonModel, stage_bundle, write_device_bundle
from .onnx import INPUT, OUTPUT
from .ort import RANGES_FILE

ONNX_NAME = {"fp32": "model.onnx", "fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}
REFERENCE_IMAGES = 8

# the single-model bundle's tail: the engine where Triton and DeepStream look for it
TOOLING_SCRIPT = """# Triton: the plan where the model repository expects it; DeepStream: the engine nvinfer should load
mkdir -p "triton/{model}/1"
cp -f "$ENGINE" "triton/{model}/1/model.plan"
sed -i "s|^model-engine-file=.*|model-engine-file=../$ENGINE|" deepstream/config_infer_primary.txt
echo "engine: $(pwd)/$ENGINE; check it: ./verify.sh $ENGINE; accuracy on the bundled test split: edgevp eval $ENGINE"
"""

INT8_NOTE = f"""- int8 is explicit: symmetric Q/DQ nodes in the ONNX carry the scales (zero points 0, biases fp32: what
  TensorRT's importer takes); no calibrator or calibration cache is needed on the device. `{RANGES_FILE}`: the
  activation ranges the scales came from (ONNX Runtime calibration cache), to re-quantise a new fp32 export exactly:
  `edgevp.export.ort.to_int8(fp32, out, None, ranges=...)`.
"""

README = """# TensorRT device bundle ({precision})

Built by edgevp {version} from run `{run}` ({method} on {backbone}) for TensorRT {versions} (`--platform
{platform}`). On the device: `./build_engine.sh && ./verify.sh` (`edgevp check .` first, where edgevp is installed).

- `{onnx}`: the precision-explicit ONNX (input `{input}` {shape} float32 RGB; outputs `{output}`, logits over
  {classes} classes, and `{probs}`, their Softmax); sha256 {sha}. Preprocessing: resize ({resize}) to {h}x{w}, scale
  pixels by 1/255, {norm}.
{int8}- `labels.txt`: one class per line (jetson-inference `--labels`, Triton). `model.json`: tensor names, shapes,
  preprocessing, class names, the platforms and trtexec flags, the source run.
- `test.npz`: {test} test images already resized for this model, with labels: `edgevp eval model.<...>.engine`
  gives the engine's own top-1/top-5 and confusion matrix (compare with the run's PyTorch test top-1).
- `reference/`: {n} validation images and the outputs of `{onnx}` on ONNX Runtime, as Polygraphy JSON
  (`inputs.json`, `outputs.json`) and trtexec raw inputs (`input_<k>.input.bin`, batch {batch}); tolerances for
  {precision} in `tolerances.json` (atol {atol:.3g}, rtol {rtol:.3g}). `./verify.sh [ENGINE]` compares an engine with
  them (Polygraphy if installed, else trtexec + numpy); `./verify.sh {onnx}` checks the ONNX itself.
- `build_engine.sh`: reads the device's TensorRT version, refuses one this bundle was not made for, runs trtexec with
  that version's flags (8.x: `--fp16`/`--int8`; 10.x: `--stronglyTyped`), names the engine after the TensorRT
  version, GPU and precision (`model.trt10.3-sm87-{precision}.engine`), then copies it to
  `triton/{model}/1/model.plan` and points the DeepStream config at it. Set `TRTEXEC` to point at trtexec,
  `TRT_VERSION`/`SM` to override detection.
- `deepstream/config_infer_primary.txt`: Gst-nvinfer primary classifier on `{probs}` (`net-scale-factor`
  {scale:.17g}, offsets {offsets}, RGB, scaling-filter {filter}); `deepstream/labels.txt` is nvinfer's classifier
  label form. {fidelity}
- `triton/{model}/` (TensorRT plan, after build_engine.sh) and `triton/{model}_onnx/` (ONNX Runtime fallback):
  a Triton model repository, `tritonserver --model-repository=$PWD/triton`.

Lock the clocks for timing on a Jetson (`sudo nvpmodel -m <mode>`, `sudo jetson_clocks`).
"""


def engine_shapes(ctx) -> dict[str, tuple[int, ...]]:
    chw = tuple(ctx.model.info.input_size)
    if ctx.opts.trt_dynamic_batch and ctx.opts.dynamic_batch:
        return {"min": (1, *chw), "opt": (1, *chw), "max": (ctx.opts.trt_max_batch, *chw)}
    return {"min": (1, *chw), "opt": (1, *chw), "max": (1, *chw)}


def _dims(shp: dict) -> dict[str, dict[str, str]]:
    return {INPUT: {k: "x".join(map(str, v)) for k, v in shp.items()}}


def write_bundle(ctx, precision: str, result: dict) -> tuple[Path, str]:
    """Create `trt-<precision>/` in the staging dir from the gated ONNX files; returns (dir, onnx name)."""
    from .onnx import metadata

    bundle = stage_bundle(ctx.work, precision, result["files"])
    onnx_name = ONNX_NAME[precision]
    shp = engine_shapes(ctx)
    x, _ = ctx.val
    n = min(REFERENCE_IMAGES, len(x))
    batch = shp["opt"][0]
    if (ctx.work / "test.npz").is_file():  # written by the export pipeline before the target ran
        shutil.copyfile(ctx.work / "test.npz", bundle / "test.npz")
    classes = ctx.classes()
    model = formats.model_name(ctx.run.path.name, precision)
    data = json.loads(metadata(ctx, result.get("onnx") or {"exporter": ctx.opts.exporter, "opset": ctx.opts.opset})
                      ["data_config"])
    chw = list(ctx.model.info.input_size)
    deepstream = _write_deepstream(bundle, onnx_name, chw, shp["max"][0], precision, data, classes)
    dynamic = shp["min"] != shp["max"]
    spec = BundleSpec(
        onnx=onnx_name, precision=precision, platform=ctx.opts.platform, dims=_dims(shp),
        feeds=[{INPUT: ctx.deploy_input(x[i:i + batch])} for i in range(0, n - n % batch, batch)],
        fp32_logits=ctx.fp32_logits[:n], tail=TOOLING_SCRIPT.format(model=model),
        labels={"labels.txt": classes}, triton=_triton_models(bundle / onnx_name, model, chw, classes, shp, ctx.opts),
        record={
            "input": INPUT, "output": OUTPUT, "outputs": [OUTPUT, PROBS], "input_dtype": "float32",
            "output_dtype": "float32", "input_shape": ["batch" if dynamic else 1, *chw],
            "output_shape": ["batch" if dynamic else 1, len(classes)], "shapes": {k: list(v) for k, v in shp.items()},
            "class_names": classes, "labels": "labels.txt", "preprocessing": formats.preprocessing(data),
            "data_config": data, "source_run": ctx.run.path.name, "source_checkpoint_sha256": ctx.checkpoint_sha256,
            "method": ctx.cfg.method, "backbone": ctx.cfg.backbone.name,
            "test_split": "test.npz" if (bundle / "test.npz").is_file() else None,
            "engine_name": "model.trt<TensorRT major.minor>-sm<compute capability>-" + precision + ".engine",
            "deepstream": deepstream,
            "triton": {"repository": "triton", "tensorrt": model, "onnxruntime": f"{model}_onnx"}},
        readme=lambda record: _readme(ctx, record, data, deepstream, shp, n))
    write_device_bundle(bundle, spec)
    return bundle, onnx_name


def _readme(ctx, record: dict, data: dict, deepstream: dict, shp: dict, n: int) -> str:
    scale, offsets, _ = formats.nvinfer_scale(data)
    test = ctx.test_split or {}
    chw, tol, precision = record["input_shape"][1:], record["reference"]["tolerances"], record["precision"]
    return README.format(
        precision=precision, version=_version(), run=ctx.run.path.name, method=ctx.cfg.method,
        backbone=ctx.cfg.backbone.name, onnx=record["onnx"], input=INPUT, output=OUTPUT, probs=PROBS,
        shape="x".join(map(str, shp["opt"])), classes=len(record["class_names"]), resize=data.get("resize", "direct"),
        h=chw[1], w=chw[2], norm="normalisation inside the model" if data.get("include_preprocess", True) else
        f"then (x - mean) / std with mean {data['mean']} and std {data['std']}", test=test.get("images", 0),
        sha=record["onnx_sha256"], n=n, batch=shp["opt"][0], atol=tol["atol"], rtol=tol["rtol"],
        model=record["triton"]["tensorrt"], scale=scale, offsets=offsets, filter=deepstream["scaling_filter"],
        versions=bundle_versions(resolve(ctx.opts.platform)), platform=ctx.opts.platform,
        fidelity="Preprocessing equals training's." if deepstream["exact"] else
        "Preprocessing DIFFERS from training's: " + " ".join(deepstream["differences"]),
        int8=INT8_NOTE if precision == "int8" else "")


def _version() -> str:
    from .. import __version__

    return __version__


def _write_deepstream(bundle: Path, onnx_name: str, chw: list[int], batch: int, precision: str, data: dict,
                      classes: list[str]) -> dict:
    """deepstream/: the nvinfer config (paths relative to its folder; build_engine.sh points model-engine-file at
    its engine) and labels; returns what model.json records of it."""
    ds = bundle / "deepstream"
    ds.mkdir()
    write_text(ds / "labels.txt", formats.deepstream_labels(classes))
    write_text(ds / "config_infer_primary.txt", formats.nvinfer_config(
        onnx=None if precision == "int8" else f"../{onnx_name}", engine="../model.engine", labels="labels.txt",
        chw=chw, batch=batch, precision=precision, data=data, output=PROBS))
    return {"config": "deepstream/config_infer_primary.txt", "output": PROBS, **formats.deepstream_fidelity(data)}


def _triton_models(onnx: Path, model: str, chw: list[int], classes: list[str], shp: dict,
                   opts) -> list[TritonModel]:
    """triton/: the TensorRT plan's model (1/model.plan, placed by build_engine.sh) and an ONNX Runtime fallback."""
    engine_batch = shp["max"][0] if shp["min"] != shp["max"] else 0
    onnx_batch = opts.trt_max_batch if opts.dynamic_batch else 0
    inputs, outputs = [(INPUT, "float32", chw)], [(OUTPUT, [len(classes)]), (PROBS, [len(classes)])]
    return [TritonModel(model, "tensorrt_plan", inputs, outputs, engine_batch, classes),
            TritonModel(f"{model}_onnx", "onnxruntime_onnx", inputs, outputs, onnx_batch, classes,
                        onnx_file=lambda dst: shutil.copyfile(onnx, dst))]
