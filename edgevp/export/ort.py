"""Reduced-precision ONNX Runtime targets built from the gated fp32 export.

- `ort-fp16`: onnxconverter-common's float16 conversion with fp32 inputs/outputs and LayerNormalization, Softmax
  (and the reductions a decomposed LayerNorm uses) kept in fp32 (ViT LayerNorm/Softmax overflow in fp16;
  docs/exporting.md).
- `ort-int8`: ONNX Runtime static quantisation in QDQ format (int8 activations and weights, per-channel weights),
  calibrated on the run's training images; `int8_mode="dynamic"` quantises weights only, activations at run time.
  Static Q/DQ is what TensorRT's importer takes (`edgevp.conformance.rules`): symmetric activations and weights
  (every zero point 0) and biases left in fp32 (no INT32 DequantizeLinear); quantize_static's defaults are neither.

Both are gated against the fp32 model (`precision.py`): top-1 agreement on every gate image and the labelled val
top-1 drop, each with an exact one-sided bound; the artifact fails only when the evidence says it is worse than
`min_agreement` / `max_drop`.
"""
from __future__ import annotations

import logging
import warnings

import numpy as np

from ..conformance.graph import for_tensorrt
from ..errors import MissingError
from .onnx import build_fp32, compare, run_ort, session
from .precision import precision_gate, top_up
from .targets import register_target

FP32_OPS = ["LayerNormalization", "Softmax", "ReduceMean", "Pow", "Sqrt", "Erf"]


def to_fp16(src, dst) -> None:
    import onnx

    try:
        from onnxconverter_common import float16
    except ImportError:
        raise MissingError("ort-fp16 needs onnxconverter-common", "pip install onnxconverter-common") from None
    with warnings.catch_warnings():  # "truncated to 1e-07" notes for tiny weights
        warnings.simplefilter("ignore")
        model = float16.convert_float_to_float16(onnx.load(str(src)), keep_io_types=True, op_block_list=FP32_OPS)
    onnx.save(model, str(dst))
    for_tensorrt(dst)


# Activation-range calibration per method. ORT's `quantize_static` builds its entropy calibrator with 128 histogram
# bins and 128 quantized bins, which leaves a single candidate threshold: the full range, i.e. MinMax (measured:
# identical scales). Ranges are therefore computed here with TensorRT's entropy settings (2048 bins, 128 quantized)
# and handed to `quantize_static` as its calibration cache.
MATMUL_OPS = ["MatMul", "Gemm", "Conv"]  # int8_ops="matmul": those with a constant weight are quantised
# TensorRT's Q/DQ rules: zero points all 0 (symmetric activations and weights), no INT32 bias DequantizeLinear
TENSORRT_QDQ = {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False}
RANGES_FILE = "model.int8.ranges.json"  # the activation ranges the Q/DQ scales came from (ORT calibration cache)
CALIBRATION = {"minmax": ("MinMax", {}),
               "percentile": ("Percentile", {"num_bins": 2048, "percentile": 99.999, "symmetric": True}),
               "entropy": ("Entropy", {"num_bins": 2048, "num_quantized_bins": 128})}


def calibrate(model, calib: np.ndarray, method: str, ranges_path, op_types: list[str] | None = None) -> None:
    """Activation ranges of the float tensors of ONNX file `model` (those around nodes of `op_types`; None: all)
    over the images `calib` (one at a time), by `method`, saved as ONNX Runtime's calibration cache (JSON) at
    `ranges_path`."""
    import tempfile
    from pathlib import Path

    from onnxruntime.quantization.calibrate import (CalibrationDataReader, CalibrationMethod, create_calibrator,
                                                    save_tensors_data)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"input": calib[i:i + 1]} for i in range(len(calib))])

        def get_next(self):
            return next(self.batches, None)

    kind, options = CALIBRATION[method]
    with tempfile.TemporaryDirectory(prefix="edgevp-calib-") as tmp:
        calibrator = create_calibrator(Path(model), op_types, augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                                       calibrate_method=getattr(CalibrationMethod, kind), extra_options=options)
        calibrator.collect_data(Reader())
        save_tensors_data(entropy_ranges(calibrator) if method == "entropy" else calibrator.compute_data(),
                          ranges_path)


def entropy_ranges(calibrator):
    """ONNX Runtime's entropy calibrator's result (`compute_data`: the threshold and the histogram per tensor),
    with the thresholds from the vectorised `entropy_threshold` in place of its O(bins²) Python loop."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorsData

    from .entropy import entropy_threshold

    collector = calibrator.collector
    return TensorsData(CalibrationMethod.Entropy, {
        name: (*entropy_threshold(hist, collector.num_quantized_bins), *hist[:2])
        for name, hist in collector.histogram_dict.items()})


def weight_gemms(path) -> list[str]:
    """The MatMul/Gemm/Conv nodes of ONNX file `path` with a constant weight: the layers `int8_ops="matmul"`
    quantises. Products of two activations (attention's Q·Kᵀ and P·V) stay in float: symmetric int8, the only form
    TensorRT takes, spends half its codes on negative values softmax probabilities never have, and quantising them
    cost the demo's LoR-VP 3.0 test points (0.4 without them; tools/bench_int8.py)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    constants = {t.name for t in graph.initializer} | {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    return [n.name for n in graph.node if n.op_type in MATMUL_OPS and len(n.input) > 1 and n.input[1] in constants]


def to_int8(src, dst, calib: np.ndarray | None, mode: str = "static", method: str = "minmax", ops: str = "matmul",
            ranges=None, platform: str | None = None) -> None:
    """int8 ONNX: static QDQ (activation ranges from `calib` by `method`, saved to `ranges` when given;
    `ops="matmul"` quantises only MatMul/Gemm/Conv with a constant weight (`weight_gemms`), `"all"` ORT's default
    op set) or dynamic (weights only).
    An existing `ranges` file is reused as it is (no calibration images needed); it must hold the tensors `ops`
    quantises (ranges calibrated for `"all"` serve `"matmul"` too). `platform`: the TensorRT platforms the static
    graph must import on (`edgevp export --platform`)."""
    import inspect

    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if mode == "dynamic":
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
        return
    if "calibration_cache_path" not in inspect.signature(quantize_static).parameters:
        raise MissingError("static int8 needs an onnxruntime whose quantize_static takes a calibration cache",
                           "pip install -U onnxruntime")
    pre = dst.with_name(dst.name + ".pre.onnx")
    cache = ranges or dst.with_name(dst.name + ".ranges.json")
    logging.disable(logging.WARNING)  # per-channel axis notes for every LayerNorm weight
    try:
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        op_types = MATMUL_OPS if ops == "matmul" else None
        if ranges is None or not cache.is_file():
            calibrate(pre, calib, method, cache, op_types)
        quantize_static(str(pre), str(dst), None, quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8,
                        weight_type=QuantType.QInt8, per_channel=True,
                        calibrate_method=getattr(CalibrationMethod, CALIBRATION[method][0]),
                        op_types_to_quantize=op_types, extra_options=TENSORRT_QDQ,
                        nodes_to_quantize=weight_gemms(pre) if ops == "matmul" else None,
                        calibration_cache_path=str(cache))
        # quantize_static declares opset domains its nodes do not use, and its pre-processing fuses a decomposed
        # LayerNormalization back (TensorRT 8.5 has none)
        for_tensorrt(dst, platform=platform)
    finally:
        logging.disable(logging.NOTSET)
        pre.unlink(missing_ok=True)
        if ranges is None:
            cache.unlink(missing_ok=True)


def gate_vs_fp32(ctx, logits, result: dict, key: str = "accuracy_vs_fp32", what: str = "") -> dict:
    """Gate a reduced-precision model, `logits(x)` its logits on deploy inputs `x`, against the fp32 ONNX on the
    val images and the training images that top them up (`precision.py`): the record goes under `result[key]`,
    and `result` is marked failed (its error prefixed by `what`) when the evidence says it is worse than the
    options allow."""
    x, y = ctx.val
    extra, fp32_extra = agreement_images(ctx)
    got = logits(ctx.deploy_input(x))
    if len(extra):
        got = np.concatenate([got, logits(ctx.deploy_input(extra))])
    ref = np.concatenate([ctx.fp32_logits, fp32_extra]) if len(extra) else ctx.fp32_logits
    rep = {**compare(ref, got), **precision_gate(ref, got, y, ctx.opts.max_drop, ctx.opts.min_agreement,
                                                 ctx.opts.gate_confidence)}
    failed = rep.pop("failed")
    result[key] = rep
    if result["status"] == "ok" and failed:
        result.update(status="failed", error=what + failed)
    return result


def agreement_images(ctx) -> tuple[np.ndarray, np.ndarray]:
    """The training images that top the val images up to `gate_images` (none when validation has enough) and the
    fp32 ONNX's logits on them; computed once per export."""
    if ctx.agreement is None:
        x_val, _ = ctx.val
        x = top_up(ctx.splits().train, len(x_val), ctx.opts.gate_images, ctx.opts.calib_images)
        fp32 = run_ort(session(ctx.work / "model.onnx"), ctx.deploy_input(x), ctx.batch) if len(x) else None
        ctx.agreement = (x, fp32)
    return ctx.agreement


def _accuracy_gate(ctx, name: str, result: dict) -> dict:
    """Gate ONNX file `name` against the fp32 ONNX; it becomes the target's only file."""
    from ..io import sha256_file as sha256

    sess = session(ctx.work / name)
    result["files"] = [name]  # the fp32 file is the `onnx` target's artifact; it stays out of this one
    result["sha256"] = {n: sha256(ctx.work / n) for n in result["files"]}
    return gate_vs_fp32(ctx, lambda x: run_ort(sess, x, ctx.batch), result)


@register_target("ort-fp16", help="fp16 ONNX (LayerNorm/Softmax in fp32) for ONNX Runtime / TensorRT strong typing")
def build_fp16(ctx) -> dict:
    """fp16 ONNX with LayerNorm/Softmax kept in fp32, accuracy vs fp32 reported."""
    result = build_fp32(ctx)
    if result["status"] != "ok":
        return result
    to_fp16(ctx.work / "model.onnx", ctx.work / "model.fp16.onnx")
    return {**_accuracy_gate(ctx, "model.fp16.onnx", result), "sidecar": "model.fp16.json"}


@register_target("ort-int8", help="int8 QDQ ONNX calibrated on training images (static; dynamic as option)")
def build_int8(ctx) -> dict:
    """int8 QDQ ONNX calibrated on training images, accuracy vs fp32 reported."""
    result = build_fp32(ctx)
    if result["status"] != "ok":
        return result
    return {**gated_int8(ctx, result, ctx.opts.int8_mode), "sidecar": "model.int8.json"}


def gated_int8(ctx, result: dict, mode: str, probabilities: bool = False) -> dict:
    """`model.int8.onnx` from the staged fp32 `model.onnx` (static: ranges from the first training images, shipped as
    RANGES_FILE; dynamic: weights only), described under `result["int8"]` and gated against fp32 on the val images
    (with a `probs` Softmax output after the logits when `probabilities`)."""
    static = mode == "static"
    calib = ctx.deploy_input(ctx.images("train", ctx.opts.calib_images)[0]) if static else None
    to_int8(ctx.work / "model.onnx", ctx.work / "model.int8.onnx", calib, mode, ctx.opts.calib_method,
            ctx.opts.int8_ops, ranges=ctx.work / RANGES_FILE if static else None, platform=ctx.opts.platform)
    if probabilities:
        for_tensorrt(ctx.work / "model.int8.onnx", probabilities=True)
    result["int8"] = {"mode": mode, "format": "QDQ" if static else "dynamic",
                      "calib_method": ctx.opts.calib_method if static else None,
                      "calibrator": dict(CALIBRATION[ctx.opts.calib_method][1]) if static else None,
                      "ops": ctx.opts.int8_ops, "calibration_images": 0 if calib is None else len(calib),
                      "quantizer_options": dict(TENSORRT_QDQ) if static else None,
                      "ranges": RANGES_FILE if static else None}
    result = _accuracy_gate(ctx, "model.int8.onnx", result)
    if static:
        result["files"].append(RANGES_FILE)
    return result
