"""TensorRT targets: a self-contained device bundle always, and an engine where TensorRT and a GPU are present.

The bundle directory `trt-<precision>/` holds the precision-explicit ONNX (fp32, fp16 with LayerNorm/Softmax in fp32,
or int8 Q/DQ), reference inputs/outputs (`reference_input.npy`, `reference_output.npy`: ORT fp32 logits), a
`build_engine.sh` with trtexec lines for TensorRT 10 and 11, and a README. A Jetson has TensorRT but not our training
stack, so the engine is normally built there.

The Python-API build is strongly typed (precision comes from the ONNX; required on TensorRT 11, available on 10.x);
only where the STRONGLY_TYPED flag does not exist (TensorRT < 9) the legacy FP16 builder flag is used. A timing cache
is kept in the bundle; the engine is fixed-shape (batch 1) unless a dynamic batch profile is asked for.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from ..errors import MissingError, VerificationError
from ..io import sha256_file as sha256, write_json
from ..optional import require
from .onnx import INPUT, build_fp32
from .ort import RANGES_FILE, _accuracy_gate, gate_vs_fp32, gated_int8, to_fp16
from .targets import register_target

WORKSPACE = 1 << 30  # 1 GiB: memory is shared with the CPU on 8 GB Jetsons

SCRIPT = """#!/usr/bin/env bash
# Build a TensorRT engine from {onnx} on this device (engines are tied to the GPU and the TensorRT version) and put
# it where DeepStream (deepstream/config_infer_primary.txt) and Triton (triton/{model}/1/model.plan) look for it.
# The engine is named after what it is tied to:
#   model.trt<TensorRT major.minor>-sm<compute capability>-{precision}.engine
# (e.g. model.trt10.3-sm87-{precision}.engine), with a sidecar JSON of the same stem that edgevp eval/predict/profile
# check before loading it. Override the detection with TRT_VERSION=10.3 and SM=87.
# Usage: ./build_engine.sh [trtexec args...]   e.g. TRT_MAJOR=10 ./build_engine.sh --verbose
set -euo pipefail
cd "$(dirname "$0")"
TRTEXEC=${{TRTEXEC:-$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)}}
PYVER='import tensorrt; print(".".join(tensorrt.__version__.split(".")[:2]))'
TRT_VERSION=${{TRT_VERSION:-$(python3 -c "$PYVER" 2>/dev/null || true)}}
if [ -z "$TRT_VERSION" ]; then  # trtexec prints "[TensorRT v100300]" (10.3) or "[TensorRT v8601]" (8.6)
  V=$("$TRTEXEC" --help 2>&1 | grep -o 'TensorRT v[0-9]*' | head -1 | tr -dc '0-9' || true)
  if [ -n "$V" ] && [ "$V" -ge 100000 ]; then TRT_VERSION="$((V / 10000)).$((V / 100 % 100))";
  elif [ -n "$V" ]; then TRT_VERSION="$((V / 1000)).$((V / 100 % 10))"; fi
fi
[ -n "$TRT_VERSION" ] || {{ echo "cannot tell the TensorRT version here: set TRT_VERSION=10.3" >&2; exit 4; }}
SM=${{SM:-$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d ' .' || true)}}
case "$SM" in ''|*[!0-9]*)  # Jetson: nvidia-smi may not know compute_cap; the SoC tells it
  case "$(tr -d '\\0' < /proc/device-tree/compatible 2>/dev/null || true)" in
    *tegra234*) SM=87 ;; *tegra194*) SM=72 ;; *tegra186*) SM=62 ;; *tegra210*) SM=53 ;; *) SM="" ;;
  esac ;;
esac
[ -n "$SM" ] || {{ echo "cannot tell the GPU's compute capability here: set SM=87" >&2; exit 4; }}
MAJOR=${{TRT_MAJOR:-${{TRT_VERSION%%.*}}}}
ENGINE="model.trt${{TRT_VERSION}}-sm${{SM}}-{precision}.engine"
SHAPES="{shapes}"
if [ "$MAJOR" -ge 11 ]; then
  # TensorRT 11: strong typing is the only mode; precision is in the ONNX, no precision flags exist.
  "$TRTEXEC" --onnx={onnx} --saveEngine="$ENGINE" --timingCacheFile=timing.cache $SHAPES \\
    --memPoolSize=workspace:1024M --skipInference "$@"
else
  # TensorRT 10.x (JetPack 6): build strongly typed from the precision-explicit ONNX.
  "$TRTEXEC" --onnx={onnx} --saveEngine="$ENGINE" --timingCacheFile=timing.cache $SHAPES \\
    --memPoolSize=workspace:1024M --stronglyTyped --skipInference "$@"
  # Legacy weak-typing fallback (TensorRT 8.6/10.x only, removed in 11): build from an fp32 ONNX with
  #   "$TRTEXEC" --onnx=model_fp32.onnx --saveEngine="$ENGINE" --fp16 $SHAPES
fi
# the engine's sidecar (<engine stem>.json, also model.json): the TensorRT version and GPU it was built for, which
# edgevp eval / predict / profile check before loading it
python3 - "$ENGINE" "$TRT_VERSION" "$SM" <<'PY' || echo "note: python3 could not write the engine's sidecar" >&2
import json
import subprocess
import sys

engine, version, sm = sys.argv[1:4]
try:
    import tensorrt
    version = tensorrt.__version__
except ImportError:
    pass


def gpu():
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=5).stdout.strip()
        if out:
            return out.splitlines()[0].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        model = open("/proc/device-tree/model").read().strip().rstrip("\\x00")
    except OSError:
        return None
    return model if "jetson" in model.lower() else None


meta = json.load(open("model.json"))
meta.update(tensorrt_version=version, gpu=gpu(), compute_capability=sm[:-1] + "." + sm[-1], engine=engine,
            built_by="build_engine.sh")
json.dump(meta, open(engine.rsplit(".", 1)[0] + ".json", "w"), indent=1)
json.dump(meta, open("model.json", "w"), indent=1)
PY
"""

# the single-model bundle's tail: the engine where Triton and DeepStream look for it
TOOLING_SCRIPT = """# Triton: the plan where the model repository expects it; DeepStream: the engine nvinfer should load
mkdir -p "triton/{model}/1"
cp -f "$ENGINE" "triton/{model}/1/model.plan"
sed -i "s|^model-engine-file=.*|model-engine-file=../$ENGINE|" deepstream/config_infer_primary.txt
echo "engine: $(pwd)/$ENGINE (compare its outputs with reference_output.npy on reference_input.npy;"
echo "        accuracy on the bundled test split: edgevp eval $ENGINE)"
"""

INT8_NOTE = f"""- int8 is explicit: Q/DQ nodes in the ONNX carry the scales (TensorRT 10/11 build it strongly typed; no calibrator
  or calibration cache is needed on the device: implicit calibration is deprecated in TensorRT 10, gone in 11).
  `{RANGES_FILE}`: the activation ranges the scales came from (ONNX Runtime calibration cache), to re-quantise
  a new fp32 export exactly: `edgevp.export.ort.to_int8(fp32, out, None, ranges=...)`.
"""

README = """# TensorRT device bundle ({precision})

Built by edgevp {version} from run `{run}` ({method} on {backbone}).

- `{onnx}`: the precision-explicit ONNX (input `{input}` {shape} float32 RGB, output `{output}` logits over
  {classes} classes); sha256 {sha}. Preprocessing: resize ({resize}) to {h}x{w}, scale pixels by 1/255,
  {norm}.
{int8}- `labels.txt`: one class per line (jetson-inference `--labels`, Triton). `model.json`: tensor names, shapes,
  preprocessing, class names, the source run.
- `test.npz`: {test} test images already resized for this model, with labels: `edgevp eval model.<...>.engine`
  gives the engine's own top-1/top-5 and confusion matrix (compare with the run's PyTorch test top-1).
- `reference_input.npy` / `reference_output.npy`: {n} validation images as the artifact takes them and the
  ONNX Runtime fp32 logits; an engine should agree to about 1e-3 (fp32), 1e-2 (fp16) in max abs logits.
- `build_engine.sh`: `./build_engine.sh` runs trtexec (TensorRT 10.x: `--stronglyTyped`; 11.x: no precision flags)
  and names the engine after the TensorRT version, GPU and precision (`model.trt10.3-sm87-{precision}.engine`),
  then copies it to `triton/{model}/1/model.plan` and points the DeepStream config at it. An engine from another
  TensorRT version or GPU is refused by `edgevp eval/predict/profile`: rebuild it with build_engine.sh.
  Set `TRT_MAJOR` to force the branch, `TRTEXEC` to point at trtexec, `TRT_VERSION`/`SM` to override detection.
- `deepstream/config_infer_primary.txt`: Gst-nvinfer primary classifier (`network-type=1`, `net-scale-factor`
  {scale:.17g}, offsets {offsets}, RGB); `deepstream/labels.txt` is nvinfer's classifier label form (one line,
  ';'-separated). The model outputs logits, not probabilities.
- `triton/{model}/` (TensorRT plan, after build_engine.sh) and `triton/{model}_onnx/` (ONNX Runtime fallback):
  a Triton model repository, `tritonserver --model-repository=$PWD/triton`.

Lock the clocks for timing on a Jetson (`sudo nvpmodel -m <mode>`, `sudo jetson_clocks`).
"""


def _trt():
    return require("tensorrt", "building a TensorRT engine")


def gpu() -> tuple[str, str] | None:
    """(name, compute capability) of CUDA device 0, or None."""
    import torch

    if not torch.cuda.is_available():
        return None
    from ..profile.device import gpu_name

    major, minor = torch.cuda.get_device_capability(0)
    # the name `edgevp profile` compares an engine's sidecar with (nvidia-smi / the Jetson board name)
    return gpu_name() or torch.cuda.get_device_name(0), f"{major}.{minor}"


def engine_logits(engine_path: Path, x: np.ndarray, batch: int) -> np.ndarray:
    """Run a built engine on `x` (as the ONNX takes it) and return its float32 logits."""
    from ..profile.trt_runtime import TrtEngineRunner

    runner = TrtEngineRunner(engine_path, batch)
    try:
        return runner.run(x)
    finally:
        runner.close()


def build_engine(onnx_path: Path, engine_path: Path, shapes: dict[str, tuple[int, ...]], precision: str,
                 cache_path: Path | None = None, trt=None) -> dict:
    """Build a serialized engine through the TensorRT Python API; returns what was used.

    Raises:
        MissingError: TensorRT is absent or cannot initialise CUDA.
        VerificationError: the parser or the builder rejected the network.
    """
    trt = trt or _trt()
    logger = trt.Logger(trt.Logger.WARNING)
    try:
        builder = trt.Builder(logger)
    except TypeError as e:  # pybind's "factory function returned nullptr" when CUDA cannot initialise
        raise MissingError(f"TensorRT could not initialise CUDA ({e})", "check the GPU driver") from None
    flag_enum = trt.NetworkDefinitionCreationFlag
    strongly = hasattr(flag_enum, "STRONGLY_TYPED")
    flags = 1 << int(flag_enum.STRONGLY_TYPED) if strongly else 0
    if hasattr(flag_enum, "EXPLICIT_BATCH") and int(trt.__version__.split(".")[0]) < 10:
        flags |= 1 << int(flag_enum.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise VerificationError(f"TensorRT could not parse {onnx_path.name}: {errs[:300]}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE)
    cache_bytes = cache_path.read_bytes() if cache_path is not None and cache_path.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, False)
    legacy_fp16 = False
    if not strongly and precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
        legacy_fp16 = True
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT, shapes["min"], shapes["opt"], shapes["max"])
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise VerificationError("TensorRT failed to build the engine (see the log above)")
    engine_path.write_bytes(bytes(plan))
    if cache_path is not None:
        cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    return {"tensorrt_version": trt.__version__, "strongly_typed": strongly, "legacy_fp16_flag": legacy_fp16}


def _shapes(ctx) -> dict[str, tuple[int, ...]]:
    chw = tuple(ctx.model.info.input_size)
    if ctx.opts.trt_dynamic_batch and ctx.opts.dynamic_batch:
        return {"min": (1, *chw), "opt": (1, *chw), "max": (ctx.opts.trt_max_batch, *chw)}
    return {"min": (1, *chw), "opt": (1, *chw), "max": (1, *chw)}


def write_bundle(ctx, precision: str, result: dict) -> tuple[Path, str]:
    """Create `trt-<precision>/` in the staging dir from the gated ONNX files; returns (dir, onnx name).

    Besides the ONNX, reference tensors, build_engine.sh and README, the bundle carries the forms the device's
    tooling reads (all three: they are small, and a Jetson user picks one serving stack): `labels.txt`, `model.json`
    with tensor names and preprocessing, a DeepStream nvinfer config and a Triton model repository (TensorRT plan +
    ONNX Runtime fallback), plus the test split (`test.npz`) for `edgevp eval` on the device."""
    from .. import __version__
    from ..device import formats
    from .onnx import OUTPUT, metadata

    bundle = ctx.work / f"trt-{precision}"
    bundle.mkdir()
    onnx_name = {"fp32": "model.onnx", "fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}[precision]
    for name in result["files"]:
        shutil.move(str(ctx.work / name), bundle / name)
    if precision != "fp32" and (ctx.work / "model.onnx").is_file():  # for the legacy --fp16 fallback
        shutil.move(str(ctx.work / "model.onnx"), bundle / "model_fp32.onnx")
    x, _ = ctx.info["val"]
    n = min(8, len(x))
    np.save(bundle / "reference_input.npy", ctx.deploy_input(x[:n]))
    np.save(bundle / "reference_output.npy", ctx.info["fp32_logits"][:n])
    if (ctx.work / "test.npz").is_file():  # written by the export pipeline before the target ran
        shutil.copyfile(ctx.work / "test.npz", bundle / "test.npz")
    shp = _shapes(ctx)
    dims = {k: "x".join(map(str, v)) for k, v in shp.items()}
    shapes = (f"--shapes={INPUT}:{dims['opt']}" if shp["min"] == shp["max"] else
              f"--minShapes={INPUT}:{dims['min']} --optShapes={INPUT}:{dims['opt']} --maxShapes={INPUT}:{dims['max']}")
    classes = ctx.classes()
    model = formats.model_name(ctx.run.path.name, precision)
    script = bundle / "build_engine.sh"
    script.write_text(SCRIPT.format(onnx=onnx_name, shapes=shapes, precision=precision, model=model)
                      + TOOLING_SCRIPT.format(model=model))
    script.chmod(0o755)
    data = json.loads(metadata(ctx, result.get("onnx") or {"exporter": ctx.opts.exporter, "opset": ctx.opts.opset})
                      ["data_config"])
    chw = list(ctx.model.info.input_size)
    (bundle / "labels.txt").write_text(formats.labels_txt(classes))
    # DeepStream: paths relative to the config's folder; build_engine.sh points model-engine-file at its engine
    ds = bundle / "deepstream"
    ds.mkdir()
    (ds / "labels.txt").write_text(formats.deepstream_labels(classes))
    (ds / "config_infer_primary.txt").write_text(formats.nvinfer_config(
        onnx=f"../{onnx_name}", engine="../model.engine", labels="labels.txt",
        chw=chw, batch=shp["max"][0], precision=precision, data=data, output=OUTPUT))
    # Triton: the TensorRT plan (1/model.plan, placed by build_engine.sh) and an ONNX Runtime fallback
    engine_batch = shp["max"][0] if shp["min"] != shp["max"] else 0
    onnx_batch = ctx.opts.trt_max_batch if ctx.opts.dynamic_batch else 0
    for name, platform, max_batch in ((model, "tensorrt_plan", engine_batch),
                                      (f"{model}_onnx", "onnxruntime_onnx", onnx_batch)):
        d = bundle / "triton" / name
        (d / "1").mkdir(parents=True)
        (d / "labels.txt").write_text(formats.labels_txt(classes))
        (d / "config.pbtxt").write_text(formats.triton_config(
            name=name, platform=platform, input_name=INPUT, input_dtype="float32", chw=chw, output=OUTPUT,
            num_classes=len(classes), max_batch_size=max_batch))
        if platform == "onnxruntime_onnx":
            shutil.copyfile(bundle / onnx_name, d / "1" / "model.onnx")
    # the engine's sidecar as the device build leaves it: the source ONNX's hash lets a profile taken on the device
    # find this run again (`edgevp report --profile`); build_engine.sh adds the TensorRT version, GPU and engine name
    write_json(bundle / "model.json", {
        "onnx": onnx_name, "onnx_sha256": sha256(bundle / onnx_name), "precision": precision, "input": INPUT,
        "output": OUTPUT, "input_dtype": "float32", "output_dtype": "float32",
        "input_shape": ["batch" if shp["min"] != shp["max"] else 1, *chw],
        "output_shape": ["batch" if shp["min"] != shp["max"] else 1, len(classes)],
        "shapes": {k: list(v) for k, v in shp.items()}, "class_names": classes, "labels": "labels.txt",
        "preprocessing": formats.preprocessing(data), "data_config": data,
        "source_run": ctx.run.path.name, "source_checkpoint_sha256": ctx.checkpoint_sha256,
        "method": ctx.cfg.method, "backbone": ctx.cfg.backbone.name,
        "test_split": "test.npz" if (bundle / "test.npz").is_file() else None,
        "engine_name": "model.trt<TensorRT major.minor>-sm<compute capability>-" + precision + ".engine",
        "deepstream": "deepstream/config_infer_primary.txt",
        "triton": {"repository": "triton", "tensorrt": model, "onnxruntime": f"{model}_onnx"},
        "built_by": "build_engine.sh"})
    scale, offsets, _ = formats.nvinfer_scale(data)
    test = ctx.info.get("test_split") or {}
    (bundle / "README.md").write_text(README.format(
        precision=precision, version=__version__, run=ctx.run.path.name, method=ctx.cfg.method,
        backbone=ctx.cfg.backbone.name, onnx=onnx_name, input=INPUT, output=OUTPUT, shape=dims["opt"],
        classes=len(classes), resize=data.get("resize", "direct"), h=chw[1], w=chw[2],
        norm="normalisation inside the model" if data.get("include_preprocess", True) else
        f"then (x - mean) / std with mean {data['mean']} and std {data['std']}", test=test.get("images", 0),
        sha=sha256(bundle / onnx_name), n=n, model=model, scale=scale, offsets=offsets,
        int8=INT8_NOTE if precision == "int8" else ""))
    return bundle, onnx_name


def build_trt(ctx, precision: str) -> dict:
    """Gate the ONNX, write the bundle, then build the engine if TensorRT and a GPU are here."""

    result = build_fp32(ctx)
    if result["status"] == "ok" and precision == "fp16":
        to_fp16(ctx.work / "model.onnx", ctx.work / "model.fp16.onnx")
        result = _accuracy_gate(ctx, "model.fp16.onnx", result)
    elif result["status"] == "ok" and precision == "int8":
        result = gated_int8(ctx, result, "static")  # TensorRT takes explicit Q/DQ only
    bundle, onnx_name = write_bundle(ctx, precision, result)
    result.pop("sha256", None)
    result.update(files=[bundle.name], sidecar=f"trt-{precision}.json", bundle=bundle.name, precision=precision)
    if result["status"] != "ok":
        return result
    shapes = _shapes(ctx)
    engine = {"onnx": onnx_name, "onnx_sha256": sha256(bundle / onnx_name), "precision": precision,
              "input": INPUT, "shapes": {k: list(v) for k, v in shapes.items()}}
    try:
        trt = _trt()
        dev = gpu()
        if dev is None:
            raise MissingError("no CUDA GPU is visible here")
        used = build_engine(bundle / onnx_name, bundle / "model.engine", shapes, precision,
                            bundle / "timing.cache", trt)
    except MissingError as e:
        result.update(status="missing", error=f"{e}; the device bundle is in {ctx.out / bundle.name}: copy it to "
                                              f"the device and run build_engine.sh there", engine=None)
        return result
    except VerificationError as e:
        result.update(status="failed", error=str(e), engine=None)
        return result
    from ..device.formats import engine_name, model_name

    name = engine_name(used["tensorrt_version"], dev[1], precision)
    (bundle / "model.engine").replace(bundle / name)
    meta = {**json.loads((bundle / "model.json").read_text()), **engine}
    meta.update(used, gpu=dev[0], compute_capability=dev[1], engine=name)
    write_json(bundle / "model.json", meta)
    write_json((bundle / name).with_suffix(".json"), meta)  # beside the engine, where eval/predict/profile check it
    plan = bundle / "triton" / model_name(ctx.run.path.name, precision) / "1" / "model.plan"
    shutil.copyfile(bundle / name, plan)
    ds = bundle / "deepstream" / "config_infer_primary.txt"
    ds.write_text("\n".join(f"model-engine-file=../{name}" if line.startswith("model-engine-file=") else line
                            for line in ds.read_text().split("\n")))
    result["engine"] = meta
    return _engine_gate(ctx, bundle / name, shapes["opt"][0], result)


def _engine_gate(ctx, engine_path: Path, batch: int, result: dict) -> dict:
    """Check the engine's logits on the validation images against the ORT fp32 logits (as the ONNX gates do)."""
    x, _ = ctx.info["val"]
    got = engine_logits(engine_path, ctx.deploy_input(x), batch)
    return gate_vs_fp32(ctx, got, result, key="engine_vs_fp32", what="the TensorRT engine's val top-1")


@register_target("trt-fp32", help="TensorRT fp32 engine (or a device bundle to build it on the device)")
def build_trt_fp32(ctx) -> dict:
    """TensorRT fp32 engine and device bundle."""
    return build_trt(ctx, "fp32")


@register_target("trt-fp16", help="TensorRT engine from the fp16 ONNX, strongly typed (or a device bundle)")
def build_trt_fp16(ctx) -> dict:
    """TensorRT fp16 (strongly typed) engine and device bundle."""
    return build_trt(ctx, "fp16")


@register_target("trt-int8", help="TensorRT engine from the int8 Q/DQ ONNX, strongly typed (or a device bundle)")
def build_trt_int8(ctx) -> dict:
    """TensorRT int8 (Q/DQ, strongly typed) engine and device bundle."""
    return build_trt(ctx, "int8")
