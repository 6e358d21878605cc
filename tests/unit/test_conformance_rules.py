"""The device-tool rules (edgevp.conformance.rules/checks): each rule catches its failing case with the right id,
and a clean artifact passes. TensorRT / DeepStream / Triton do not run here; the rules were read from their sources."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgevp.conformance import rules
from edgevp.conformance.checks import (
    Finding,
    check_nvinfer_config,
    check_onnx,
    check_triton_config,
    check_trtexec_args,
    errors,
)
from edgevp.conformance.platforms import PLATFORMS

JP51, JP60, JP61 = PLATFORMS["jp5.1"], PLATFORMS["jp6.0"], PLATFORMS["jp6.1"]


def _model(nodes, inputs=None, outputs=None, inits=(), opset=17, domains=()):
    inputs = inputs or [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])]
    outputs = outputs or [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    imports = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, 1) for d in domains]
    return helper.make_model(graph, opset_imports=imports, ir_version=8)


def _rules(findings: list[Finding], severity: str | None = None) -> set[str]:
    return {f.rule for f in findings if severity is None or f.severity == severity}


def _classifier(last_op: str = "Softmax") -> onnx.ModelProto:
    w = numpy_helper.from_array(np.ones((1, 3, 3, 3), np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("GlobalAveragePool", ["c"], ["p"]),
             helper.make_node("Flatten", ["p"], ["logits"])]
    nodes += [helper.make_node("Softmax", ["logits"], ["y"])] if last_op == "Softmax" else \
        [helper.make_node("Identity", ["logits"], ["y"])]
    return _model(nodes, inits=[w])


def _qdq(zero_point: int = 0, dtype=TensorProto.INT8, op: str = "QuantizeLinear", with_zp: bool = True):
    """x -> Q -> DQ -> y (op='QuantizeLinear'), or a DQ of a constant of `dtype` added to x."""
    scale = numpy_helper.from_array(np.array(0.1, np.float32), "s")
    zp = helper.make_tensor("zp", dtype, [], [zero_point])
    if op == "QuantizeLinear":
        nodes = [helper.make_node("QuantizeLinear", ["x", "s"] + (["zp"] if with_zp else []), ["q"], name="q"),
                 helper.make_node("DequantizeLinear", ["q", "s"] + (["zp"] if with_zp else []), ["y"], name="dq")]
    else:
        data = helper.make_tensor("b", dtype, [8], list(range(8)))
        nodes = [helper.make_node("DequantizeLinear", ["b", "s", "zp"], ["bf"], name="bias_dq"),
                 helper.make_node("Add", ["x", "bf"], ["y"])]
        return _model(nodes, inits=[scale, zp, data])
    return _model(nodes, inits=[scale, zp] if with_zp else [scale])


# --- ONNX importer ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("platform", list(PLATFORMS.values()), ids=list(PLATFORMS))
def test_clean_models_pass_every_platform(platform):
    assert check_onnx(_classifier(), platform) == []
    assert check_onnx(_qdq(0), platform) == []


@pytest.mark.parametrize("platform", [JP51, JP60, JP61])
def test_asymmetric_zero_point_is_refused(platform):
    found = check_onnx(_qdq(3), platform)
    assert _rules(found, "error") == {"qdq-symmetric"} and "symmetric" in found[0].message
    assert "onnxOpImporters.cpp" in found[0].source or "builtin_op_importers.cpp" in found[0].source


@pytest.mark.parametrize("platform", [JP60, JP61])
def test_int32_dequantize_is_refused(platform):
    found = check_onnx(_qdq(0, TensorProto.INT32, op="DequantizeLinear"), platform)
    assert _rules(found, "error") == {"qdq-type"} and "INT32" in found[0].message


def test_uint8_quantize_is_refused():
    assert _rules(check_onnx(_qdq(0, TensorProto.UINT8), JP61), "error") == {"qdq-type"}


def test_missing_zero_point_fails_8x_and_warns_10x():
    assert "qdq-zero-point-missing" in _rules(check_onnx(_qdq(with_zp=False), JP60), "error")
    assert _rules(check_onnx(_qdq(with_zp=False), JP61)) == {"qdq-zero-point-missing"}
    assert errors(check_onnx(_qdq(with_zp=False), JP61)) == []


def test_shape_start_end_refused_on_86_and_kept_on_103():
    nodes = [helper.make_node("Shape", ["x"], ["y"], name="batch", start=0, end=1)]
    model = _model(nodes, outputs=[helper.make_tensor_value_info("y", TensorProto.INT64, [1])])
    found = check_onnx(model, JP60)
    assert [(f.rule, f.where) for f in found] == [("shape-start-end", "batch")]
    assert "addShape" in found[0].source and check_onnx(model, JP61) == []
    assert check_onnx(model, "8.5")[0].rule == "shape-start-end"


def test_opset_18_is_refused_by_85():
    model = _model([helper.make_node("Relu", ["x"], ["y"])], opset=18)
    assert _rules(check_onnx(model, JP51)) == {"opset-range"} and check_onnx(model, JP61) == []
    assert _rules(check_onnx(_model([helper.make_node("Relu", ["x"], ["y"])], opset=21), JP61)) == {"opset-range"}


def test_op_not_on_85_list():
    model = _model([helper.make_node("LayerNormalization", ["x", "g"], ["y"], axis=-1)],
                   inits=[numpy_helper.from_array(np.ones(8, np.float32), "g")])
    found = check_onnx(model, JP51)
    assert [(f.rule, f.where) for f in found] == [("op-unsupported", "LayerNormalization")]
    assert "docs/operators.md" in found[0].source and check_onnx(model, JP60) == []


def test_unused_opset_domain():
    model = _model([helper.make_node("Relu", ["x"], ["y"])], domains=["com.microsoft"])
    assert [(f.rule, f.severity) for f in check_onnx(model, JP61)] == [("unused-opset-domain", "error")]


def test_custom_domain_node():
    model = _model([helper.make_node("Gelu", ["x"], ["y"], domain="com.microsoft")], domains=["com.microsoft"])
    assert _rules(check_onnx(model, JP61)) == {"custom-domain"}


def test_graph_input_dtypes():
    text_in = [helper.make_tensor_value_info("x", TensorProto.STRING, [1])]
    model = _model([helper.make_node("Identity", ["x"], ["y"])], inputs=text_in)
    assert _rules(check_onnx(model, JP60), "error") == {"input-dtype"}
    int64_in = [helper.make_tensor_value_info("x", TensorProto.INT64, [1])]
    model = _model([helper.make_node("Identity", ["x"], ["y"])], inputs=int64_in)
    assert _rules(check_onnx(model, JP60), "warning") == {"input-dtype"} and check_onnx(model, JP61) == []


def _two_layer_model():
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=shape).astype(np.float32), name)
             for name, shape in (("w1", (8, 16)), ("b1", (16,)), ("w2", (16, 4)), ("b2", (4,)))]
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["y"])]  # MatMul + bias layers: ORT quantizes the bias
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], inits)


def _ort_quantize(tmp_path, extra_options=None):
    quant = pytest.importorskip("onnxruntime.quantization")
    rng = np.random.default_rng(1)

    class Reader(quant.CalibrationDataReader):
        def __init__(self):
            self.feeds = iter([{"x": rng.normal(size=(1, 8)).astype(np.float32) + 1} for _ in range(8)])

        def get_next(self):
            return next(self.feeds, None)

    onnx.save(_two_layer_model(), tmp_path / "f.onnx")
    quant.quantize_static(str(tmp_path / "f.onnx"), str(tmp_path / "q.onnx"), Reader(),
                          quant_format=quant.QuantFormat.QDQ, extra_options=extra_options or {})
    return onnx.load(tmp_path / "q.onnx")


QDQ_RULES = {"qdq-symmetric", "qdq-type", "qdq-zero-point-missing"}


@pytest.mark.parametrize("platform", [JP60, JP61])
def test_ort_quantize_static_defaults_are_refused(tmp_path, platform):
    found = check_onnx(_ort_quantize(tmp_path), platform)
    assert {"qdq-symmetric", "qdq-type"} <= _rules(found, "error")  # asymmetric activations, INT32 bias
    symmetric = _ort_quantize(tmp_path, {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False})
    assert not _rules(check_onnx(symmetric, platform)) & QDQ_RULES


# --- trtexec ---------------------------------------------------------------------------------------------------
BUILD = ["trtexec", "--onnx=m.onnx", "--saveEngine=m.plan", "--minShapes=x:1x3x8x8", "--optShapes=x:4x3x8x8",
         "--maxShapes=x:8x3x8x8", "--timingCacheFile=t.cache", "--memPoolSize=workspace:1024", "--verbose"]


def test_strongly_typed_only_on_10():
    found = check_trtexec_args(BUILD + ["--stronglyTyped"], "8.6")
    assert [(f.rule, f.where) for f in found] == [("trtexec-unknown-option", "--stronglyTyped")]
    assert "--fp16" in found[0].message and "trtexec.cpp" in found[0].source
    assert check_trtexec_args(BUILD + ["--stronglyTyped", "--skipInference"], "10.3") == []
    assert check_trtexec_args(BUILD + ["--fp16", "--int8", "--skipInference"], "8.6.2.3") == []


def test_trtexec_version_differences():
    assert _rules(check_trtexec_args(BUILD + ["--skipInference"], "8.5")) == {"trtexec-unknown-option"}
    assert check_trtexec_args(BUILD + ["--buildOnly", "--fp16"], "8.5") == []
    assert _rules(check_trtexec_args(["--workspace=1024"], "8.6")) == {"trtexec-deprecated-option"}
    assert _rules(check_trtexec_args(["--workspace=1024"], "10.3")) == {"trtexec-unknown-option"}
    run = ["--loadEngine=m.plan", "--loadInputs=x:x.bin", "--exportOutput=o.json", "--shapes=x:1x3x8x8"]
    assert all(check_trtexec_args(run, v) == [] for v in ("8.5", "8.6", "10.3"))
    assert _rules(check_trtexec_args(["--onnx=m.onnx", "stray"], "10.3")) == {"trtexec-unknown-option"}


# --- DeepStream nvinfer ----------------------------------------------------------------------------------------
GOOD = """# edgevp classifier
[property]
gpu-id=0
net-scale-factor=0.0039215686
offsets=123.675;116.28;103.53
model-color-format=0
onnx-file=model.onnx
model-engine-file=model.plan
labelfile-path=labels.txt
batch-size=1
network-mode=2
network-type=1
process-mode=1
infer-dims=3;8;8
output-blob-names=y
classifier-threshold=0.2
scaling-filter=1
maintain-aspect-ratio=0
"""


def _nvinfer(change: dict[str, str | None], model=None) -> list[Finding]:
    lines = [line for line in GOOD.splitlines() if line.split("=")[0] not in change]
    lines += [f"{k}={v}" for k, v in change.items() if v is not None]
    return check_nvinfer_config("\n".join(lines) + "\n", model)


def test_good_nvinfer_config_passes():
    assert check_nvinfer_config(GOOD, _classifier()) == []


@pytest.mark.parametrize(("change", "rule", "severity"), [
    ({"classifier-threshold": "-1e30"}, "nvinfer-range", "error"),
    ({"network-mode": "1"}, "nvinfer-int8-no-calib", "error"),
    ({"scaling-filter": None}, "nvinfer-scaling-filter-default", "warning"),
    ({"scaling_filter": "1"}, "nvinfer-unknown-key", "error"),
    ({"disable-output-host-copy": "1"}, "nvinfer-unknown-key", "error"),
    ({"dump-input-tensor": "1"}, "nvinfer-unknown-key", "warning"),
    ({"network-mode": "fp16"}, "nvinfer-value-kind", "error"),
    ({"net-scale-factor": "0.0039 # 1/255"}, "nvinfer-value-kind", "error"),
    ({"network-mode": "7"}, "nvinfer-range", "error"),
    ({"network-mode": "3"}, "nvinfer-range", "warning"),
    ({"infer-dims": "8;8"}, "nvinfer-infer-dims", "error"),
    ({"offsets": "123.675;116.28"}, "nvinfer-offsets", "error"),
    ({"batch-size": "0"}, "nvinfer-range", "error"),
    ({"maintain-aspect-ratio": "True"}, "nvinfer-value-kind", "error"),
    ({"net-scale-factor": "0"}, "nvinfer-range", "error"),
])
def test_nvinfer_rule_catches(change, rule, severity):
    found = _nvinfer(change)
    assert [(f.rule, f.severity) for f in found] == [(rule, severity)], found
    assert found[0].source.startswith("DeepStream 6.2")


def test_int8_with_calibration_file_is_fine():
    assert _nvinfer({"network-mode": "1", "int8-calib-file": "calib.bin"}) == []


def test_classifier_without_softmax_is_refused():
    found = _nvinfer({}, _classifier("Identity"))
    assert [(f.rule, f.where) for f in found] == [("nvinfer-classifier-probabilities", "y")]
    assert "maxProbability" in found[0].source
    assert _nvinfer({"parse-classifier-func-name": "NvDsInferParseCustom"}, _classifier("Identity")) == []


def test_nvinfer_syntax_and_class_attrs():
    assert _rules(check_nvinfer_config("network-mode=2\n[property]\n")) == {"nvinfer-syntax"}
    assert _rules(check_nvinfer_config("[other]\nk=1\n")) == {"nvinfer-syntax"}
    detector = GOOD.replace("network-type=1", "network-type=0") + "[class-attrs-all]\nnms-iou-threshold=2\n"
    assert _rules(check_nvinfer_config(detector)) == {"nvinfer-range"}


# --- Triton ----------------------------------------------------------------------------------------------------
TRITON = """name: "clf"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "x" data_type: TYPE_FP32 dims: [ 3, 8, 8 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ -1 ] } ]
dynamic_batching { }
"""


def _batched_classifier():
    model = _classifier()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    return model


def test_triton_config_checks():
    pytest.importorskip("tritonclient.grpc.model_config_pb2")
    assert check_triton_config(TRITON, _batched_classifier()) == []
    assert _rules(check_triton_config("max_batch_size: eight\n")) == {"triton-parse"}
    assert _rules(check_triton_config(TRITON.replace("dims: [ 3, 8, 8 ]", "dims: [ 1, 3, 8, 8 ]"),
                                      _batched_classifier())) == {"triton-dims"}
    assert _rules(check_triton_config(TRITON.replace('"x"', '"input"'), _batched_classifier())) == {"triton-io-names"}
    assert _rules(check_triton_config(TRITON.replace("TYPE_FP32 dims: [ 3", "TYPE_FP16 dims: [ 3"),
                                      _batched_classifier())) == {"triton-dtype"}
    assert _rules(check_triton_config(TRITON, _classifier())) == {"triton-dims"}  # batch fixed at 1, max 8
    no_batcher = check_triton_config(TRITON.replace("dynamic_batching { }", ""))
    assert [(f.rule, f.severity) for f in no_batcher] == [("triton-dynamic-batching", "warning")]


def test_triton_without_tritonclient_is_one_warning(monkeypatch):
    monkeypatch.setitem(sys.modules, "tritonclient.grpc", None)
    assert [(f.rule, f.severity) for f in check_triton_config(TRITON)] == [("triton-unchecked", "warning")]


# --- the data itself -------------------------------------------------------------------------------------------
def test_rules_data():
    counts = {trt: len(r.ops) for trt, r in rules.IMPORTERS.items()}
    assert counts == {"8.5": 142, "8.6": 145, "10.3": 150, "10": 149}
    ids = {"opset-range", "op-unsupported", "custom-domain", "shape-start-end", "qdq-symmetric", "qdq-type",
           "qdq-zero-point-missing", "input-dtype", "unused-opset-domain"}
    assert all(set(r.sources) == ids for r in rules.IMPORTERS.values())
    assert "INT32" not in rules.IMPORTERS["10.3"].qdq_types and rules.IMPORTERS["8.6"].qdq_types == {"INT8"}
    assert rules.importer_rules("10.5") is rules.IMPORTERS["10"]
    assert [("stronglyTyped" in rules.trtexec_rules(v).options) for v in ("8.5", "8.6", "10.3")] == [0, 0, 1]
    assert rules.NVINFER_PROPERTY["network-mode"].values == (0, 1, 2)


def test_conformance_is_torch_free():
    code = ("import sys, edgevp.conformance.checks, edgevp.conformance.rules; "
            "assert not {'torch', 'edgevp.export', 'edgevp.multitask'} & set(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_local_function_call_imports_on_10_only():
    body = [helper.make_node("Relu", ["a"], ["b"])]
    fn = helper.make_function("edgevp.fn", "Block", ["a"], ["b"], body, [helper.make_opsetid("", 17)])
    model = _model([helper.make_node("Block", ["x"], ["y"], domain="edgevp.fn")], domains=["edgevp.fn"])
    model.functions.append(fn)
    assert check_onnx(model, JP61) == []
    assert _rules(check_onnx(model, JP60)) == {"custom-domain"}


def test_keyfile_reads_values_like_glib():
    """The GKeyFile emulation against the real libglib, where this machine has it."""
    import ctypes
    import ctypes.util

    from edgevp.conformance import keyfile

    path = ctypes.util.find_library("glib-2.0")
    if not path:
        pytest.skip("no libglib-2.0 here")
    glib = ctypes.CDLL(path)
    glib.g_key_file_new.restype = ctypes.c_void_p
    readers = {"int": (glib.g_key_file_get_integer, ctypes.c_int), "bool": (glib.g_key_file_get_boolean, ctypes.c_int),
               "float": (glib.g_key_file_get_double, ctypes.c_double)}

    def real(kind, raw):
        kf, err = ctypes.c_void_p(glib.g_key_file_new()), ctypes.c_void_p()
        assert glib.g_key_file_load_from_data(kf, f"[p]\nk={raw}\n".encode(), ctypes.c_ssize_t(-1), 0, None)
        fn, restype = readers[kind]
        fn.restype = restype
        value = fn(kf, b"p", b"k", ctypes.byref(err))
        return "error" if err.value else value

    def ours(kind, raw):
        try:
            return keyfile.read(kind, keyfile.parse(f"[p]\nk={raw}\n")["p"]["k"])
        except ValueError:
            return "error"

    for kind, raws in {"int": ["1", " 7 ", "1 # c", "0x10", "1.0", "", "2147483648", "-5"],
                       "float": ["-1e30", "1.5 ", "1.5 # c", ".5", "nan", "1_0", "0x10"],
                       "bool": ["true", "True", "1", "true ", "yes", "0"]}.items():
        for raw in raws:
            got, want = ours(kind, raw), real(kind, raw)
            both_nan = kind == "float" and "error" not in (got, want) and np.isnan(got) and np.isnan(want)
            assert got == want or both_nan, (kind, raw, got, want)
