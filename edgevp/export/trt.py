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

import shutil
from pathlib import Path

import numpy as np

from ..errors import MissingError, VerificationError
from ..io import sha256_file as sha256, write_json
from ..optional import require
from .onnx import INPUT, build_fp32
from .ort import _accuracy_gate, gate_vs_fp32, to_fp16, to_int8
from .targets import register_target

WORKSPACE = 1 << 30  # 1 GiB: memory is shared with the CPU on 8 GB Jetsons

SCRIPT = """#!/usr/bin/env bash
# Build a TensorRT engine from {onnx} on this device (engines are tied to the GPU and the TensorRT version).
# Usage: ./build_engine.sh [trtexec args...]   e.g. TRT_MAJOR=10 ./build_engine.sh --verbose
set -euo pipefail
cd "$(dirname "$0")"
TRTEXEC=${{TRTEXEC:-$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)}}
MAJOR=${{TRT_MAJOR:-$(python3 -c 'import tensorrt; print(tensorrt.__version__.split(".")[0])' 2>/dev/null || echo 10)}}
SHAPES="{shapes}"
if [ "$MAJOR" -ge 11 ]; then
  # TensorRT 11: strong typing is the only mode; precision is in the ONNX, no precision flags exist.
  "$TRTEXEC" --onnx={onnx} --saveEngine=model.engine --timingCacheFile=timing.cache $SHAPES \\
    --memPoolSize=workspace:1024M --skipInference "$@"
else
  # TensorRT 10.x (JetPack 6): build strongly typed from the precision-explicit ONNX.
  "$TRTEXEC" --onnx={onnx} --saveEngine=model.engine --timingCacheFile=timing.cache $SHAPES \\
    --memPoolSize=workspace:1024M --stronglyTyped --skipInference "$@"
  # Legacy weak-typing fallback (TensorRT 8.6/10.x only, removed in 11): build from an fp32 ONNX with
  #   "$TRTEXEC" --onnx=model_fp32.onnx --saveEngine=model.engine --fp16 $SHAPES
fi
# record the TensorRT version in the engine's sidecar (model.json), which `edgevp profile` checks before loading
python3 - <<'PY' 2>/dev/null || true
import json
import tensorrt
meta = json.load(open("model.json"))
meta["tensorrt_version"] = tensorrt.__version__
json.dump(meta, open("model.json", "w"), indent=1)
PY
echo "engine: $(pwd)/model.engine (compare its outputs with reference_output.npy on reference_input.npy)"
"""

README = """# TensorRT device bundle ({precision})

Built by edgevp {version} from run `{run}` ({method} on {backbone}).

- `{onnx}`: the precision-explicit ONNX (input `{input}` {shape}, output `logits`); sha256 {sha}.
- `reference_input.npy` / `reference_output.npy`: {n} validation images as the artifact takes them and the
  ONNX Runtime fp32 logits; an engine should agree to about 1e-3 (fp32), 1e-2 (fp16) in max abs logits.
- `build_engine.sh`: `./build_engine.sh` runs trtexec (TensorRT 10.x: `--stronglyTyped`; 11.x: no precision flags).
  Set `TRT_MAJOR` to force the branch and `TRTEXEC` to point at trtexec.

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
    """Create `trt-<precision>/` in the staging dir from the gated ONNX files; returns (dir, onnx name)."""
    from .. import __version__

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
    shp = _shapes(ctx)
    dims = {k: "x".join(map(str, v)) for k, v in shp.items()}
    shapes = (f"--shapes={INPUT}:{dims['opt']}" if shp["min"] == shp["max"] else
              f"--minShapes={INPUT}:{dims['min']} --optShapes={INPUT}:{dims['opt']} --maxShapes={INPUT}:{dims['max']}")
    script = bundle / "build_engine.sh"
    script.write_text(SCRIPT.format(onnx=onnx_name, shapes=shapes))
    script.chmod(0o755)
    # the engine's sidecar as the device build leaves it: the source ONNX's hash lets a profile taken on the device
    # find this run again (`edgevp report --profile`); build_engine.sh adds the TensorRT version
    write_json(bundle / "model.json", {"onnx": onnx_name, "onnx_sha256": sha256(bundle / onnx_name),
                                       "precision": precision, "input": INPUT,
                                       "shapes": {k: list(v) for k, v in shp.items()}, "built_by": "build_engine.sh"})
    (bundle / "README.md").write_text(README.format(
        precision=precision, version=__version__, run=ctx.run.path.name, method=ctx.cfg.method,
        backbone=ctx.cfg.backbone.name, onnx=onnx_name, input=INPUT, shape=dims["opt"],
        sha=sha256(bundle / onnx_name), n=n))
    return bundle, onnx_name


def build_trt(ctx, precision: str) -> dict:
    """Gate the ONNX, write the bundle, then build the engine if TensorRT and a GPU are here."""

    result = build_fp32(ctx)
    if result["status"] == "ok" and precision == "fp16":
        to_fp16(ctx.work / "model.onnx", ctx.work / "model.fp16.onnx")
        result = _accuracy_gate(ctx, "model.fp16.onnx", result)
    elif result["status"] == "ok" and precision == "int8":
        calib = ctx.deploy_input(ctx.images("train", ctx.opts.calib_images)[0])
        to_int8(ctx.work / "model.onnx", ctx.work / "model.int8.onnx", calib, "static", ctx.opts.calib_method,
                ctx.opts.int8_ops)
        result = _accuracy_gate(ctx, "model.int8.onnx", result)
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
    engine.update(used, gpu=dev[0], compute_capability=dev[1], engine="model.engine")
    write_json(bundle / "model.json", engine)  # beside model.engine, where `edgevp profile` checks it
    result["engine"] = engine
    return _engine_gate(ctx, bundle / "model.engine", shapes["opt"][0], result)


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
