"""TensorRT targets: a self-contained device bundle always, and an engine where TensorRT and a GPU are present.

The bundle directory `trt-<precision>/` (`trt_bundle.py`) holds the precision-explicit ONNX (fp32, fp16 with
LayerNorm/Softmax in fp32, or symmetric int8 Q/DQ) with a `probs` Softmax output beside the logits, reference I/O, a
`build_engine.sh` with trtexec flags per TensorRT version of `--platform`, `verify.sh`, and the DeepStream and Triton
files. A Jetson has TensorRT but not our training stack, so the engine is normally built there.

The Python-API build is strongly typed where the STRONGLY_TYPED flag exists (10.x); on 8.x the FP16 / INT8 builder
flags are set (weak typing). A timing cache is kept in the bundle; the engine is fixed-shape (batch 1) unless a
dynamic batch profile is asked for.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from ..conformance.bundle import gate_bundle
from ..conformance.graph import for_tensorrt
from ..errors import MissingError, VerificationError
from ..io import sha256_file as sha256, write_json
from ..optional import require
from .onnx import INPUT, build_fp32
from .ort import _accuracy_gate, agreement_images, gate_vs_fp32, gated_int8, to_fp16
from .targets import register_target
from .trt_bundle import engine_shapes, write_bundle

WORKSPACE = 1 << 30  # 1 GiB: memory is shared with the CPU on 8 GB Jetsons


def _trt():
    return require("tensorrt", "building a TensorRT engine")


def gpu() -> tuple[str, str] | None:
    """(name, compute capability) of CUDA device 0, or None. Name and capability come from the runtime's probe,
    the one the device and `edgevp profile` compare an engine's file name and sidecar with; PyTorch's answer only
    where the probe has none."""
    import torch

    if not torch.cuda.is_available():
        return None
    from ..runtime.gpu import compute_capability, gpu_name

    cc = compute_capability()
    if cc is None:
        major, minor = torch.cuda.get_device_capability(0)
        cc = f"{major}.{minor}"
    return gpu_name() or torch.cuda.get_device_name(0), cc


def engine_logits(engine_path: Path, x: np.ndarray, batch: int) -> np.ndarray:
    """Run a built engine on `x` (as the ONNX takes it) and return its float32 logits."""
    from ..runtime.engine import TrtEngineRunner

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
    if not strongly and precision in ("fp16", "int8"):  # 8.x weak typing: the precision is a builder flag
        config.set_flag(trt.BuilderFlag.FP16 if precision == "fp16" else trt.BuilderFlag.INT8)
        legacy_fp16 = precision == "fp16"
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


def build_trt(ctx, precision: str) -> dict:
    """Gate the ONNX, write the bundle, then build the engine if TensorRT and a GPU are here."""

    # DeepStream's classifier parser reads probabilities: a `probs` Softmax output, added to the artifact in its
    # final precision (fp32, on the fp32 logits) before it is gated
    result = build_fp32(ctx, probabilities=precision == "fp32")
    if result["status"] == "ok" and precision == "fp16":
        to_fp16(ctx.work / "model.onnx", ctx.work / "model.fp16.onnx")
        for_tensorrt(ctx.work / "model.fp16.onnx", probabilities=True)
        result = _accuracy_gate(ctx, "model.fp16.onnx", result)
    elif result["status"] == "ok" and precision == "int8":
        result = gated_int8(ctx, result, "static", probabilities=True)  # TensorRT takes explicit Q/DQ only
    if result["status"] == "ok":
        agreement_images(ctx)  # the engine's gate needs the fp32 logits, and the bundle takes the fp32 file
    bundle, onnx_name = write_bundle(ctx, precision, result)
    result = gate_bundle(bundle, result)  # every file against the device tools' rules (edgevp check)
    result.pop("sha256", None)
    result.update(files=[bundle.name], sidecar=f"trt-{precision}.json", bundle=bundle.name, precision=precision)
    if result["status"] != "ok":
        return result
    shapes = engine_shapes(ctx)
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
    from ..runtime.formats import engine_name, model_name

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
    """Gate the engine against the ORT fp32 logits as the reduced-precision ONNX files are (`ort.gate_vs_fp32`)."""
    return gate_vs_fp32(ctx, lambda x: engine_logits(engine_path, x, batch), result, key="engine_vs_fp32",
                        what="the TensorRT engine's ")


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
