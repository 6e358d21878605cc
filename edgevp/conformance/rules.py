"""What NVIDIA's device tools accept, as data (torch-free): the TensorRT ONNX importer, trtexec's option parser and
DeepStream Gst-nvinfer's config parser.

Every rule was read from the tool's own source, not learned by running it (TensorRT and DeepStream cannot run
here). Each entry cites `repo path ~line`; where no source was found the comment says so and names the document the
rule comes from instead. Sources read:

- onnx/onnx-tensorrt branches 8.5-GA, 8.6-GA (builtin_op_importers.cpp, ModelImporter.cpp, onnx2trt_utils.cpp),
  10.0-GA and 10.1-GA (onnxOpImporters.cpp, importerUtils.cpp), and docs/operators.md of each. No 10.3 branch is
  stored: NVIDIA/TensorRT release/10.3 pins parsers/onnx at 62bdde2, which no mirror holds, so 10.3 uses 10.1-GA;
  docs/Changelog.md (newest stored) lists no new operator and no Q/DQ or `Shape` change for 10.2 or 10.3.
- NVIDIA/TensorRT release/8.5, release/8.6, release/10.3: samples/common/sampleOptions.cpp, samples/trtexec/trtexec.cpp.
- DeepStream 6.2 (JetPack 5.1) gst-nvinfer and libs/nvdsinfer, read from hiennguyen9874/deepstream-sources branch 6.2,
  a clang-formatted copy of the SDK's sources: line numbers are that copy's.
"""
from __future__ import annotations

from dataclasses import dataclass, field

OT = "onnx/onnx-tensorrt"
TRT = "NVIDIA/TensorRT"
DS = "DeepStream 6.2 (hiennguyen9874/deepstream-sources@6.2)"

# --- TensorRT ONNX importer ------------------------------------------------------------------------------------
# Operators marked `Y` in docs/operators.md; each list equals the DEFINE_BUILTIN_OP_IMPORTER set of its branch
# (minus TRT_* private ops), checked when this file was written. Any other op goes to the plugin fallback
# (ModelImporter.cpp 8.6-GA ~l.161-168, 10.1-GA ~l.155-167) and fails without a plugin of that name.
_OPS_85 = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast Ceil Celu Clip
Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DepthToSpace DequantizeLinear Div Dropout
Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements GatherND Gemm GlobalAveragePool
GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample GRU HardSwish HardSigmoid Identity If ImageScaler
InstanceNormalization IsNaN LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool
MatMul Max MaxPool Mean MeanVarianceNormalization Min Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad
ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform RandomUniformLike Range
Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum
ReduceSumSquare Relu Reshape Resize ReverseSequence RNN RoiAlign Round ScaledTanh Scan Scatter ScatterElements
ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt
Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
""".split())  # onnx-tensorrt@8.5-GA docs/operators.md l.17-196: 142 ops
_OPS_86 = _OPS_85 | {"GroupNormalization", "IsInf", "LayerNormalization"}  # @8.6-GA docs/operators.md l.17-197: 145
_OPS_100 = _OPS_86 | {"CastLike", "Gelu", "Hardmax", "Mish"}  # @10.0-GA docs/operators.md l.17-211: 149
_OPS_101 = _OPS_100 | {"DeformConv"}  # @10.1-GA docs/operators.md l.19-214: 150 (10.2/10.3 add none: Changelog.md)

# ONNX element type names (onnx.TensorProto.DataType.Name) the importer's convertDtype maps; "cast" ones are
# narrowed with a warning (8.x: INT64 -> INT32, DOUBLE -> FLOAT).
_DTYPES_8 = frozenset({"FLOAT", "FLOAT16", "DOUBLE", "INT8", "UINT8", "BOOL", "INT32", "INT64"})
_DTYPES_10 = _DTYPES_8 | {"BFLOAT16", "FLOAT8E4M3FN", "INT4"}
# No tool refuses an opset_import nobody uses (the importer registers every entry); edgevp's bundles carry none.
_UNUSED = "edgevp policy, no tool source"


@dataclass(frozen=True)
class ImporterRules:
    """One TensorRT release's ONNX importer, as far as a graph check needs it."""

    trt: str
    opset_min: int  # older opsets: "not guaranteed to work" (warning)
    opset_max: int  # newest opset the release documents
    ops: frozenset[str]
    shape_start_end: bool  # `Shape` honours opset-15 start/end
    qdq_types: frozenset[str]  # element types a Q/DQ may quantize to / dequantize from
    zero_point_required: bool  # the importer asserts 3 inputs on Q/DQ
    local_functions: bool  # a node naming a model-local function is imported as that function (10.x)
    input_dtypes: frozenset[str]
    input_dtypes_cast: frozenset[str]
    sources: dict[str, str] = field(default_factory=dict, compare=False, hash=False)  # rule id -> citation


def _importer_8(trt: str, branch: str, ops: frozenset[str], ops_at: str, helper: int, assert_3: int,
                zero: int, shape: int, dtype: int, lookup: str, opsets: str) -> ImporterRules:
    bi = f"{OT}@{branch} builtin_op_importers.cpp"
    return ImporterRules(
        trt, 7, 17, ops, False, frozenset({"INT8"}), True, False, _DTYPES_8, frozenset({"INT64", "DOUBLE"}), {
            "opset-range": f"{OT}@{branch} docs/operators.md l.5 ('up to Opset 17'); ModelImporter.cpp warns below 7",
            "op-unsupported": f"{OT}@{branch} docs/operators.md l.{ops_at}",
            "custom-domain": f"{OT}@{branch} ModelImporter.cpp ~l.{lookup} (op looked up by name, domain ignored)",
            "unused-opset-domain": f"{_UNUSED} ({OT}@{branch} ModelImporter.cpp ~l.{opsets} addOpset)",
            "shape-start-end": f"{bi} ~l.{shape} (Shape importer is addShape(input), reads no attribute)",
            "qdq-symmetric": f"{bi} ~l.{zero} (ASSERT shiftIsAllZeros(zeroPoint))",
            "qdq-type": f"{bi} ~l.{helper} (notInvalidType UINT8); docs/operators.md l.50 (DequantizeLinear: INT8)",
            "qdq-zero-point-missing": f"{bi} ~l.{assert_3} (ASSERT inputs.size() == 3)",
            "input-dtype": f"{OT}@{branch} onnx2trt_utils.cpp ~l.{dtype} convertDtype (INT64 -> kINT32)",
        })


def _importer_10(trt: str, branch: str, ops: frozenset[str], ops_at: str, helper: int, default: int, zero: int,
                 allowed: int, shape: int, lookup: str, opsets: str, dq_doc: int, note: str = "") -> ImporterRules:
    oi = f"{OT}@{branch}{note} onnxOpImporters.cpp"
    return ImporterRules(
        trt, 9, 20, ops, True, frozenset({"INT8", "FLOAT8E4M3FN", "INT4"}), False, True, _DTYPES_10,
        frozenset({"DOUBLE"}), {
            "opset-range": f"{OT}@{branch}{note} docs/operators.md l.5 ('opset 9 to opset 20')",
            "op-unsupported": f"{OT}@{branch}{note} docs/operators.md l.{ops_at}",
            "custom-domain": f"{OT}@{branch}{note} ModelImporter.cpp ~l.{lookup} (op looked up by name, then "
                             "local functions, then plugins)",
            "unused-opset-domain": f"{_UNUSED} ({OT}@{branch} ModelImporter.cpp ~l.{opsets} addOpset)",
            "shape-start-end": f"{oi} ~l.{shape} (Shape reads start/end, adds a Slice)",
            "qdq-symmetric": f"{oi} ~l.{zero} (ASSERT_NODE shiftIsAllZeros(zeroPoint))",
            "qdq-type": f"{oi} ~l.{helper} (UINT8 refused), ~l.{allowed} ('only allows FP8, INT8, and INT4'); "
                        f"docs/operators.md l.{dq_doc} (DequantizeLinear: INT8, FP8, INT4)",
            "qdq-zero-point-missing": f"{oi} ~l.{default} (no zero point: INT8, where ONNX means UINT8)",
            "input-dtype": f"{OT}@{branch}{note} importerUtils.cpp ~l.314 convertDtype",
        })


IMPORTERS: dict[str, ImporterRules] = {
    "8.5": _importer_8("8.5", "8.5-GA", _OPS_85, "17-196", 1187, 1206, 1240, 4478, 349, "151-158", "526-536"),
    "8.6": _importer_8("8.6", "8.6-GA", _OPS_86, "17-197", 1160, 1216, 1220, 4434, 346, "161-168", "538-550"),
    "10.3": _importer_10("10.3", "10.1-GA", _OPS_101, "19-214", 1349, 1426, 1491, 1594, 5224, "155-167", "729-742",
                         61, " (stand-in for 10.3)"),
    "10": _importer_10("10", "10.0-GA", _OPS_100, "17-211", 1312, 1389, 1454, 1557, 5188, "154-166", "612-625", 58),
}


def importer_rules(trt: str) -> ImporterRules:
    """The importer rules for a TensorRT version as `Platform.trt` spells it (`8.5`, `8.6`, `10.3`, `10`)."""
    if trt in IMPORTERS:
        return IMPORTERS[trt]
    if trt.split(".")[0] == "10":
        return IMPORTERS["10"]
    raise KeyError(f"no ONNX importer rules for TensorRT {trt}; known: {', '.join(IMPORTERS)}")


# --- trtexec ---------------------------------------------------------------------------------------------------
# Options consumed by AllOptions::parse (every getAndDelOption literal of the Model/Build/System/Inference/
# Reporting parsers); anything left over is printed as "Unknown option: ..." and trtexec exits.
_TRTEXEC_85 = frozenset("""
allowGPUFallback avgRuns avgTiming batch best buildOnly calib consistency deploy device directIO dumpLayerInfo
dumpOutput dumpProfile dumpRefit duration explicitBatch explicitPrecision exportLayerInfo exportOutput
exportProfile exportTimes exposeDMA fp16 help heuristic idleTime inputIOFormats int8 iterations layerOutputTypes
layerPrecisions loadEngine loadInputs maxBatch maxShapes maxShapesCalib memPoolSize minShapes minShapesCalib
minTiming model noBuilderCache noDataTransfers noTF32 nvtxMode onnx optShapes optShapesCalib output
outputIOFormats percentile persistentCacheRatio plugins precisionConstraints preview profilingVerbosity refit
restricted safe saveEngine separateProfileRun shapes sleepTime sparsity streams tacticSources threads
timeDeserialize timeRefit timingCacheFile uff uffInput uffNHWC useCudaGraph useDLACore useManagedMemory
useSpinWait verbose warmUp workspace""".split())  # 81; no --skipInference in 8.5 (it has --buildOnly)
_TRTEXEC_86 = _TRTEXEC_85 | set("""
buildDLAStandalone builderOptimizationLevel dumpRawBindingsToFile dynamicPlugins excludeLeanRuntime fp8
hardwareCompatibilityLevel ignoreParsedPluginLibs infStreams layerDeviceTypes leanDLLPath maxAuxStreams
nativeInstanceNorm ni setPluginsToSerialize skipInference staticPlugins tempdir tempfileControls useRuntime vc
versionCompatible""".split())  # 103
_TRTEXEC_103 = (_TRTEXEC_86 - set("""
batch buildOnly deploy explicitBatch explicitPrecision heuristic maxBatch minTiming model nativeInstanceNorm ni
nvtxMode output uff uffInput uffNHWC workspace""".split())) | set("""
allocationStrategy allowWeightStreaming bf16 calibProfile dumpOptimizationProfile errorOnTimingCacheMiss
getPlanVersionOnly int4 markDebug noCompilationCache pi pluginInstanceNorm profile runtimePlatform saveDebugTensors
stripAllWeights stripWeights stronglyTyped useProfile weightStreamingBudget weightless""".split())  # 107


@dataclass(frozen=True)
class TrtexecRules:
    version: str
    options: frozenset[str]  # names without the leading `--`; `-h` is also accepted
    deprecated: dict[str, tuple[int, str]]  # option -> (sampleOptions.cpp line of the warning, replacement)
    source: str


TRTEXEC: dict[str, TrtexecRules] = {
    "8.5": TrtexecRules("8.5", _TRTEXEC_85, {
        "explicitBatch": (767, "nothing (no effect)"), "explicitPrecision": (788, "nothing (no effect)"),
        "workspace": (793, "--memPoolSize=workspace:<MiB>"), "nvtxMode": (899, "--profilingVerbosity")},
        f"{TRT}@release/8.5 samples/common/sampleOptions.cpp ~l.651-1156 (parsers), trtexec.cpp ~l.150"),
    "8.6": TrtexecRules("8.6", _TRTEXEC_86, {
        "explicitBatch": (865, "nothing (no effect)"), "explicitPrecision": (886, "nothing (no effect)"),
        "workspace": (891, "--memPoolSize=workspace:<MiB>"), "buildOnly": (973, "--skipInference"),
        "nvtxMode": (1025, "--profilingVerbosity"), "heuristic": (1159, "--builderOptimizationLevel"),
        "plugins": (1265, "--staticPlugins"), "streams": (1288, "--infStreams")},
        f"{TRT}@release/8.6 samples/common/sampleOptions.cpp ~l.701-1365 (parsers), trtexec.cpp ~l.311"),
    "10.3": TrtexecRules("10.3", _TRTEXEC_103, {
        "plugins": (1573, "--staticPlugins"), "streams": (1600, "--infStreams")},
        f"{TRT}@release/10.3 samples/common/sampleOptions.cpp ~l.975-1717 (parsers; --stronglyTyped ~l.1231), "
        "trtexec.cpp ~l.242"),
}


def trtexec_rules(version: str) -> TrtexecRules:
    """trtexec's rules for `8.5`, `8.6`, `10.3` (or a longer version string of one of them; other 10.x: 10.3)."""
    key = ".".join(version.split(".")[:2])
    if key in TRTEXEC:
        return TRTEXEC[key]
    if version.split(".")[0] == "10":
        return TRTEXEC["10.3"]
    raise KeyError(f"no trtexec rules for TensorRT {version}; known: {', '.join(TRTEXEC)}")


# --- DeepStream Gst-nvinfer ------------------------------------------------------------------------------------
# The config is a GKeyFile (g_key_file_load_from_file, gstnvinfer_property_parser.cpp ~l.1141); a value GLib cannot
# read as the key's type fails the element (CHECK_ERROR, ~l.20-24). Keys: gstnvinfer_property_parser.h l.29-151.
PP = f"{DS} sources/gst-plugins/gst-nvinfer/gstnvinfer_property_parser.cpp"


@dataclass(frozen=True)
class Key:
    """One config key: GLib type it is read as, the values nvinfer accepts, and the parser line that reads it."""

    kind: str  # int | float | bool | string | path | int-list | float-list | string-list
    line: int
    values: tuple[int, ...] = ()  # enum: the accepted integers
    low: float | None = None  # inclusive lower bound
    high: float | None = None  # inclusive upper bound
    length: int | None = None  # exact list length


def _enum(line: int, *values: int) -> Key:
    return Key("int", line, values=values)


NVINFER_PROPERTY: dict[str, Key] = {
    "gie-unique-id": Key("int", 534, low=1), "process-mode": _enum(301, 1, 2), "interval": Key("int", 328, low=0),
    "labelfile-path": Key("path", 548), "gpu-id": Key("int", 559, low=0), "enable-dla": Key("bool", 580),
    "secondary-reinfer-interval": Key("int", 348), "output-tensor-meta": Key("bool", 338),
    "use-dla-core": Key("int", 585), "tensor-meta-pool-size": Key("int", 589),
    "batch-size": Key("int", 593, low=1, high=1024),  # NVDSINFER_MAX_BATCH_SIZE, nvdsinfer_context.h l.106
    "force-implicit-batch-dim": Key("bool", 609), "workspace-size": Key("int", 614),
    "infer-dims": Key("int-list", 623, length=3),  # "Should be 3 as [c;h;w] order" ~l.631
    # NvDsInferNetworkMode FP32=0, INT8=1, FP16=2 (nvdsinfer_context.h l.116-118); newer DeepStream adds BEST=3.
    "network-mode": _enum(638, 0, 1, 2),
    "model-engine-file": Key("path", 655), "int8-calib-file": Key("path", 668),
    "output-blob-names": Key("string-list", 679), "output-io-formats": Key("string-list", 687),
    "layer-device-precision": Key("string-list", 694), "is-classifier": Key("bool", 510),  # legacy network-type
    # Detector=0, Classifier=1, Segmentation=2, InstanceSegmentation=3, Other=100 (nvdsinfer_context.h l.127-142)
    "network-type": _enum(701, 0, 1, 2, 3, 100),
    "model-color-format": _enum(720, 0, 1, 2),  # RGB, BGR, GRAY
    # Read with no check (~l.740); scale and offsets are applied only if > 0 (nvdsinfer_context_impl.cpp ~l.875).
    "net-scale-factor": Key("float", 740),
    "offsets": Key("float-list", 744),  # at most _MAX_CHANNELS=4 (~l.750); must equal the channel count
    "mean-file": Key("path", 761), "maintain-aspect-ratio": Key("bool", 352), "symmetric-padding": Key("bool", 357),
    # NvBufSurfTransformInter Nearest=0 Bilinear=1 Algo1..4=2..5 Default=6 (nvbufsurftransform.h l.77-89)
    "scaling-filter": _enum(455, 0, 1, 2, 3, 4, 5, 6),
    "scaling-compute-hw": _enum(437, 0, 1, 2),  # Default, GPU, VIC (VIC only on aarch64)
    "network-input-order": _enum(932, 0, 1), "input-tensor-from-meta": Key("bool", 1102),
    "custom-lib-path": Key("path", 772), "parse-bbox-func-name": Key("string", 783),
    "parse-bbox-instance-mask-func-name": Key("string", 789), "engine-create-func-name": Key("string", 796),
    "parse-classifier-func-name": Key("string", 803), "custom-network-config": Key("string", 810),
    "model-file": Key("path", 816), "proto-file": Key("path", 827), "uff-file": Key("path", 838),
    "input-dims": Key("int-list", 849, length=4), "uff-input-dims": Key("int-list", 890, length=4),
    "uff-input-order": _enum(950, 0, 1, 2), "uff-input-blob-name": Key("string", 971),
    "tlt-encoded-model": Key("path", 978), "tlt-model-key": Key("string", 989), "onnx-file": Key("path", 996),
    "num-detected-classes": Key("int", 1007, low=0), "enable-dbscan": Key("bool", 1018),
    "cluster-mode": _enum(1032, 0, 1, 2, 3, 4), "crop-objects-to-roi-boundary": Key("bool", 475),
    "classifier-type": Key("string", 324), "classifier-async-mode": Key("bool", 319),
    "classifier-threshold": Key("float", 1063, low=0),  # "Negative value specified" ~l.1068-1072: element fails
    "segmentation-threshold": Key("float", 1074, low=0), "segmentation-output-order": _enum(1085, 0, 1),
    "output-instance-mask": Key("bool", 343),
    "input-object-min-width": Key("int", 362, low=0), "input-object-min-height": Key("int", 371, low=0),
    "input-object-max-width": Key("int", 381, low=0), "input-object-max-height": Key("int", 390, low=0),
    "operate-on-gie-id": Key("int", 400), "operate-on-class-ids": Key("int-list", 407),
    "filter-out-class-ids": Key("int-list", 426),
}
# Defined in the 6.2 header (l.31, l.42) but never read by its parser: "Unknown or legacy key" (~l.481).
NVINFER_UNREAD = {"parse-func": 31, "disable-output-host-copy": 42}
# In the DeepStream 8.0 header (levipereira/deepstream_8.0_plugins gstnvinfer_property_parser.h), not in 6.2's.
NVINFER_LATER = frozenset({"auto-inc-mem", "max-gpu-mem-per", "dump-input-tensor", "dump-output-tensor",
                           "overwrite-input-tensor", "overwrite-output-tensor", "ip-tensor-file", "op-tensor-files",
                           "raw-output-file-write", "parse-segmentation-func-name"})

# [class-attrs-all] / [class-attrs-<id>]: parsed for detectors only (~l.1160); gst_nvinfer_parse_class_attrs ~l.81.
NVINFER_CLASS_ATTRS: dict[str, Key] = {
    "threshold": Key("float", 97, low=0), "pre-cluster-threshold": Key("float", 109, low=0),
    "post-cluster-threshold": Key("float", 118, low=0), "eps": Key("float", 127, low=0),
    "group-threshold": Key("int", 136, low=0), "minBoxes": Key("int", 145, low=0),
    "dbscan-min-score": Key("float", 154, low=0), "roi-top-offset": Key("int", 163, low=0),
    "roi-bottom-offset": Key("int", 172, low=0), "detected-min-w": Key("int", 181, low=0),
    "detected-min-h": Key("int", 190, low=0), "detected-max-w": Key("int", 199, low=0),
    "detected-max-h": Key("int", 208, low=0), "border-color": Key("float-list", 216, length=4),
    "bg-color": Key("float-list", 234, length=4), "nms-iou-threshold": Key("float", 253, low=0, high=1),
    "topk": Key("int", 264, low=0),
}

NVINFER_FACTS = {
    "classifier-probabilities": (
        f"{DS} sources/libs/nvdsinfer/nvdsinfer_context_impl_output_parsing.cpp ~l.588-597: the built-in "
        "classifier parser starts from maxProbability = 0 and keeps class c only if p > threshold && p > max"),
    "int8-no-calib": (
        f"{DS} sources/libs/nvdsinfer/nvdsinfer_model_builder.cpp ~l.1032-1042 (configCommonOptions: 'INT8 "
        "calibration file not specified. Trying FP16 mode.'); the calibrator exists only when int8-calib-file is "
        "readable (nvdsinfer_context_impl.cpp ~l.1709-1712)"),
    "scaling-filter-default": (
        f"{DS} sources/gst-plugins/gst-nvinfer/gstnvinfer.cpp ~l.414 (transform_filter = "
        "NvBufSurfTransformInter_Default) + sources/includes/nvbufsurftransform.h ~l.88-89 (Default = GPU-Nearest, "
        "VIC-Nearest)"),
    "offsets": (
        f"{DS} sources/libs/nvdsinfer/nvdsinfer_context_impl.cpp ~l.108-112 (offsets count must equal the input "
        "channels) and ~l.875-880 (scale/offsets applied only when net-scale-factor > 0)"),
}
