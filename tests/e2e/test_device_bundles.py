"""Device bundles against the real tools' rules (issue 18): every bundle form for every supported TensorRT passes the
conformance check; Q/DQ symmetric with no INT32 DequantizeLinear; no `Shape` start/end for TensorRT < 10; Polygraphy
(the real CLI, on ONNX Runtime) verifies every bundle's reference I/O; the sanitize-with-static-shape round trip loads
and matches; DeepStream configs pass nvinfer's rules; and each defect found against the tools has a test here."""
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from edgevp.cli import app
from edgevp.conformance.bundle import check_bundle
from edgevp.conformance.checks import check_nvinfer_config, check_onnx, errors
from edgevp.export.pipeline import ExportOptions, export_run
from edgevp.multitask.pipeline import PackOptions, pack

from ..conftest import tiny_config

runner = CliRunner()
TRT_VERSIONS = ["8.5.2", "8.6.2", "10.3.0", "10.8.0"]  # JetPack 5.1, 6.0, 6.1/6.2, desktop 10.x
# the real Polygraphy CLI (a dev dependency: CI runs it on every bundle form, so it is not skipped when missing):
# next to this Python first, where pip puts it even when no shim on PATH knows it yet
_BESIDE = os.path.join(os.path.dirname(sys.executable), "polygraphy")
POLYGRAPHY = _BESIDE if os.path.exists(_BESIDE) else shutil.which("polygraphy") or "polygraphy"


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, run_cache):
    """Tiny VPT and LoR-VP runs, their TensorRT bundles (fp32, fp16, int8; --platform all) and a trt-fp32 pack."""
    root = tmp_path_factory.mktemp("bundles")
    runs = {"vpt": run_cache.get("vpt4", root / "vpt"), "lorvp": run_cache.get("lorvp_r2", root / "lorvp")}
    out = {"runs": runs}
    sys.modules.setdefault("tensorrt", None)  # as on a machine without TensorRT: bundles only
    for precision in ("fp32", "fp16", "int8"):
        with pytest.raises(Exception) as e:  # MissingError (exit 4): no TensorRT here, the bundle is written
            export_run(runs["vpt"], ExportOptions(target=f"trt-{precision}", out=root / "export", max_drop=100))
        assert getattr(e.value, "exit_code", None) == 4, e.value
        out[precision] = root / "export" / f"trt-{precision}"
    with pytest.raises(Exception) as e:
        pack([runs["vpt"], runs["lorvp"]], root / "pack", PackOptions(target="trt-fp32"))
    assert getattr(e.value, "exit_code", None) == 4, e.value
    out["pack"] = root / "pack" / "trt-fp32"
    export_run(runs["vpt"], ExportOptions(out=root / "onnx"))
    out["onnx"] = root / "onnx" / "model.onnx"
    out["root"] = root
    return out


FORMS = ["fp32", "fp16", "int8", "pack"]


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("version", TRT_VERSIONS)
def test_every_bundle_form_conforms_on_every_supported_tensorrt(bundles, form, version):
    report = check_bundle(bundles[form], version)
    assert report.ok, [str(f) for f in errors(report.findings)]
    assert json.loads((bundles[form] / "model.json").read_text())["platforms"] == ["jp5.1", "jp6.0", "jp6.1",
                                                                                   "jp6.2", "trt10"]


def test_int8_qdq_is_symmetric_with_no_int32_dequantize(bundles):
    """An audit straight off the graph (not through the checker): TensorRT refuses non-zero zero points and takes
    INT8 DequantizeLinear inputs only; quantize_static's defaults gave 336 of 344 non-zero and INT32 biases."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(bundles["int8"] / "model.int8.onnx"))
    init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    zero_points = [init[n.input[2]] for n in qdq if len(n.input) > 2]
    assert len(qdq) > 20 and len(zero_points) == len(qdq) and all((z == 0).all() for z in zero_points)
    dq_inputs = [init[n.input[0]].dtype for n in qdq if n.op_type == "DequantizeLinear" and n.input[0] in init]
    assert dq_inputs and set(dq_inputs) == {np.dtype(np.int8)}
    assert [o.domain for o in model.opset_import] == [""]  # quantize_static declared unused domains


@pytest.mark.parametrize("form", FORMS)
def test_no_shape_start_end_and_opset_17_for_tensorrt_8(bundles, form):
    import onnx

    meta = json.loads((bundles[form] / "model.json").read_text())
    model = onnx.load(str(bundles[form] / meta["onnx"]))
    shapes = [n for n in model.graph.node if n.op_type == "Shape"]
    assert shapes and not [a.name for n in shapes for a in n.attribute if a.name in ("start", "end")]
    assert [o.version for o in model.opset_import if o.domain == ""] == [17]
    assert "LayerNormalization" not in {n.op_type for n in model.graph.node}  # 8.5's importer has none


def _dynamo_batch_shape(src, dst):
    """What today's export would have shipped: the dynamo exporter's `Shape(x, start=0, end=1)` put back."""
    import onnx
    from onnx import helper

    model = onnx.load(str(src))
    nodes = list(model.graph.node)
    for i, n in enumerate(nodes):
        if n.op_type == "Slice" and n.name.endswith("__slice"):
            shape = next(s for s in nodes if s.output[0] == n.input[0])
            shape.output[0] = n.output[0]
            shape.attribute.extend([helper.make_attribute("start", 0), helper.make_attribute("end", 1)])
            nodes.remove(n)
            break
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.save(model, str(dst))


def test_the_old_shape_form_is_refused_for_tensorrt_8_only(bundles, tmp_path):
    _dynamo_batch_shape(bundles["onnx"], tmp_path / "old.onnx")
    rules = {v: {f.rule for f in errors(check_onnx(tmp_path / "old.onnx", v))} for v in TRT_VERSIONS}
    assert "shape-start-end" in rules["8.5.2"] and "shape-start-end" in rules["8.6.2"]
    assert "shape-start-end" not in rules["10.3.0"]


def test_polygraphy_sanitize_with_a_static_shape_loads_and_matches(bundles, tmp_path):
    """`polygraphy surgeon sanitize --override-input-shapes ... --fold-constants`, the usual step before a static
    engine: on today's export it gives a graph that still loads and matches; on the old Shape form (graphsurgeon
    ignores start/end) it did not."""
    import onnxruntime as ort

    x = np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32)
    ref = ort.InferenceSession(str(bundles["onnx"]), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]

    def sanitize(src, dst):
        subprocess.run([POLYGRAPHY, "surgeon", "sanitize", str(src), "--override-input-shapes", "input:[1,3,32,32]",
                        "--fold-constants", "-o", str(dst)], check=True, capture_output=True)
        try:
            sess = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"])
            return float(np.abs(sess.run(None, {"input": x})[0] - ref).max())
        except Exception:  # noqa: BLE001 (ORT refuses the broken graph with its own exception types)
            return None

    assert sanitize(bundles["onnx"], tmp_path / "new.onnx") <= 1e-5
    _dynamo_batch_shape(bundles["onnx"], tmp_path / "old.onnx")
    broken = sanitize(tmp_path / "old.onnx", tmp_path / "old-sanitized.onnx")
    assert broken is None or broken > 1e-3  # the old form does not survive the round trip


@pytest.mark.parametrize("form", FORMS)
def test_polygraphy_verifies_every_bundles_reference_io(bundles, form):
    """The real `polygraphy run --onnxrt --load-inputs --load-outputs` reads the bundle's reference files and the
    bundle's own ONNX matches them within the bundle's tolerances; verify.sh runs the same."""
    bundle = bundles[form]
    meta = json.loads((bundle / "model.json").read_text())
    tol = meta["reference"]["tolerances"]
    p = subprocess.run([POLYGRAPHY, "run", meta["onnx"], "--onnxrt", "--load-inputs", "reference/inputs.json",
                        "--load-outputs", "reference/outputs.json", "--atol", str(tol["atol"]), "--rtol",
                        str(tol["rtol"])], cwd=bundle, capture_output=True, text=True)
    assert p.returncode == 0 and "PASSED" in p.stdout + p.stderr, p.stdout[-2000:] + p.stderr[-2000:]
    env = {**os.environ, "PATH": f"{os.path.dirname(POLYGRAPHY)}:{os.environ['PATH']}"}
    v = subprocess.run(["./verify.sh", meta["onnx"]], cwd=bundle, capture_output=True, text=True, env=env)
    assert v.returncode == 0, v.stdout[-2000:] + v.stderr[-2000:]


def test_reference_io_is_shaped_for_trtexec_and_tolerant_enough_for_int8(bundles):
    """trtexec's --loadInputs reads raw binary shaped like the engine's profile (batch 1 here); the int8 bundle's
    reference is its own int8 outputs, with a tolerance that covers what int8 moved from fp32."""
    from edgevp.export.bundle import read_polygraphy_inputs, read_polygraphy_outputs

    for form in ("fp32", "int8"):
        bundle = bundles[form]
        meta = json.loads((bundle / "model.json").read_text())
        feeds = read_polygraphy_inputs(bundle)
        assert len(feeds) == 8 and feeds[0]["input"].shape == tuple(meta["shapes"]["opt"]) == (1, 3, 32, 32)
        raw = np.fromfile(bundle / "reference" / "input_3.input.bin", dtype=np.float32).reshape(1, 3, 32, 32)
        assert np.array_equal(raw, feeds[3]["input"])
    fp32 = np.concatenate([o["logits"] for o in read_polygraphy_outputs(bundles["fp32"])])
    int8 = np.concatenate([o["logits"] for o in read_polygraphy_outputs(bundles["int8"])])
    tol = json.loads((bundles["int8"] / "model.json").read_text())["reference"]["tolerances"]
    assert np.abs(int8 - fp32).max() <= tol["atol"] + tol["rtol"] * np.abs(int8).max()
    pack_feeds = read_polygraphy_inputs(bundles["pack"])
    assert [int(f["task"][0]) for f in pack_feeds] == [0, 1] * 4  # mixed task ids
    task = np.fromfile(bundles["pack"] / "reference" / "input_1.task.i32.bin", dtype=np.int32)
    assert task.tolist() == [1]  # TensorRT 8.x binds the INT64 task input as INT32


@pytest.mark.parametrize("form", ["fp32", "fp16", "int8"])
def test_deepstream_config_passes_nvinfer_rules_and_preprocesses_like_training(bundles, form):
    import onnx

    bundle = bundles[form]
    meta = json.loads((bundle / "model.json").read_text())
    text = (bundle / "deepstream" / "config_infer_primary.txt").read_text()
    assert check_nvinfer_config(text, onnx.load(str(bundle / meta["onnx"]))) == []
    props = dict(line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))
    assert float(props["classifier-threshold"]) >= 0 and props["output-blob-names"] == "probs"
    assert props["scaling-filter"] == "2"  # the run trained with bicubic; unset would be nearest
    assert ("onnx-file" in props) == (form != "int8")  # int8: no silent FP16 fallback build
    assert meta["deepstream"]["exact"] is True


def test_old_deepstream_config_defects_are_caught(bundles):
    """What the config used to say: a negative threshold (nvinfer does not start), logits for the classifier parser,
    no scaling filter, int8 built from onnx-file without a calibration file."""
    import onnx

    bundle = bundles["int8"]
    text = (bundle / "deepstream" / "config_infer_primary.txt").read_text()
    old = (text.replace("classifier-threshold=0", "classifier-threshold=-1e30").replace("output-blob-names=probs",
           "output-blob-names=logits").replace("scaling-filter=2\n", "")
           .replace("model-engine-file=", "onnx-file=../model.int8.onnx\nmodel-engine-file="))
    rules = {f.rule for f in check_nvinfer_config(old, onnx.load(str(bundle / "model.int8.onnx")))}
    assert {"nvinfer-range", "nvinfer-classifier-probabilities", "nvinfer-scaling-filter-default",
            "nvinfer-int8-no-calib"} <= rules


def test_deepstream_states_what_it_cannot_reproduce():
    """--no-preprocess with per-channel std: one nvinfer scale, the largest error stated; a centre-crop run: warned."""
    from edgevp.runtime.formats import deepstream_fidelity

    imagenet = {"include_preprocess": False, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                "resize": "timm", "crop_pct": 0.875, "interpolation": "bicubic"}
    fid = deepstream_fidelity(imagenet)
    assert not fid["exact"] and fid["scale_error"] == pytest.approx(0.0299, abs=5e-4) and len(fid["differences"]) == 2
    from edgevp.runtime.formats import nvinfer_config

    text = nvinfer_config(onnx="m.onnx", engine="m.engine", labels="l.txt", chw=[3, 224, 224], batch=1,
                          precision="fp16", data=imagenet, output="probs")
    assert "DIFFERS" in text and "0.0299" in text and "maintain-aspect-ratio=1" in text and "symmetric-padding=1" in text
    assert not errors(check_nvinfer_config(text))


def test_pack_bundle_is_as_complete_as_an_export_bundle(bundles):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    bundle = bundles["pack"]
    names = {p.name for p in bundle.iterdir()}
    assert {"model.onnx", "tasks.json", "labels", "reference", "triton", "build_engine.sh", "verify.sh", "README.md",
            "model.json"} <= names
    assert (bundle / "labels" / "1.txt").read_text().splitlines() == [str(i) for i in range(10)]
    cfg = text_format.Parse((bundle / "triton" / "pack" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert [i.name for i in cfg.input] == ["images", "task"] and cfg.HasField("dynamic_batching")
    assert cfg.max_batch_size == 8 and list(cfg.input[1].reshape.shape) == []
    meta = json.loads((bundle / "model.json").read_text())
    assert meta["deepstream"]["config"] is None and "task" in meta["deepstream"]["reason"]
    assert "model_fp32.onnx" not in (bundle / "build_engine.sh").read_text()
    # one writer (export/device_bundle.py): the same common record, and the gate names the installed folder
    single = json.loads((bundles["fp32"] / "model.json").read_text())
    common = {"onnx", "onnx_sha256", "precision", "platform", "platforms", "trtexec_flags", "reference", "triton",
              "deepstream", "built_by"}
    assert common <= set(meta) and common <= set(single)
    for sidecar in (bundles["root"] / "export" / "trt-fp32.json", bundles["root"] / "pack" / "pack.json"):
        assert json.loads(sidecar.read_text())["conformance"]["bundle"] == "trt-fp32"


def test_sidecars_are_readable_and_no_lock_is_left(bundles):
    mask = os.umask(0)
    os.umask(mask)
    root = bundles["root"]
    for f in [*(root / "export").rglob("*.json"), *(root / "pack").rglob("*.json")]:
        assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~mask, f
    assert not list(root.rglob(".edgevp.lock"))


def test_per_block_macs_of_a_dynamo_export_and_a_pack_head(bundles):
    """The dynamo exporter leaves no scope names: blocks come from the pre-norm structure (decomposed LayerNorm
    included) and equal the analytic per-block count; a pack's Einsum head is counted."""
    from edgevp.cost import vit_macs
    from edgevp.model import load_run
    from edgevp.profile.onnx_macs import graph_cost

    _, model, _ = load_run(bundles["runs"]["vpt"], "best")
    analytic = vit_macs(model.info, 10, [(0, 4)] * 6)  # folded VPT-deep-4: 4 constant keys/values per block
    cost = graph_cost(bundles["onnx"])
    assert list(cost.per_block) == ["stem", *(f"blocks.{i}" for i in range(6)), "head"]
    assert [cost.per_block[f"blocks.{i}"] for i in range(6)] == analytic.per_block
    assert cost.per_block["stem"] == analytic.patch_embed and cost.per_block["head"] == analytic.head
    packed = graph_cost(bundles["pack"] / "model.onnx")
    assert packed.per_block["head"] == analytic.head and packed.macs >= cost.macs


def test_edgevp_check_cli(bundles, tmp_path):
    ok = runner.invoke(app, ["check", str(bundles["fp16"])])
    assert ok.exit_code == 0 and "conforms for jp5.1, jp6.0, jp6.1, jp6.2, trt10" in ok.output
    broken = tmp_path / "broken"
    shutil.copytree(bundles["fp16"], broken)
    cfg = broken / "deepstream" / "config_infer_primary.txt"
    cfg.write_text(cfg.read_text().replace("classifier-threshold=0", "classifier-threshold=-1"))
    r = runner.invoke(app, ["check", str(broken), "--trt-version", "8.6.2"])
    assert r.exit_code == 3 and "nvinfer-range" in r.output and "classifier-threshold" in r.output
    jp61 = tmp_path / "jp61"
    export_run(bundles["runs"]["vpt"], ExportOptions(target="onnx", out=jp61, platform="jp6.1"))
    import onnx

    assert [o.version for o in onnx.load(str(jp61 / "model.onnx")).opset_import if o.domain == ""] == [18]
    r = runner.invoke(app, ["export", str(bundles["runs"]["vpt"]), "--platform", "jp6.0", "--opset", "18"])
    assert r.exit_code == 2 and "imports ONNX opsets up to 17" in r.output


FAKE_TRTEXEC = """#!{python}
# trtexec stand-in for verify.sh's fallback: `--help` names the TensorRT version; a run loads the raw inputs, runs the
# bundle's ONNX on ONNX Runtime (the 'engine' file names it) and writes --exportOutput in trtexec's own JSON layout
# (samples/common/sampleReporting.cpp dumpOutputs: name, dimensions "AxB", values)
import json, sys
import numpy as np
import onnxruntime as ort
args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if "=" in a)
if "--help" in sys.argv:
    print("&&&& RUNNING TensorRT.trtexec [TensorRT v{version}]")
    sys.exit(0)
sess = ort.InferenceSession(open(args["loadEngine"]).read().strip(), providers=["CPUExecutionProvider"])
types = {{i.name: (np.int64 if "int64" in i.type else np.float32) for i in sess.get_inputs()}}
shapes = {{i.name: i.shape for i in sess.get_inputs()}}
feed = {{}}
for spec in args["loadInputs"].split(","):
    name, path = spec.split(":", 1)
    dtype = np.int32 if path.endswith(".i32.bin") else types[name]
    arr = np.fromfile(path, dtype=dtype).astype(types[name])
    shape = [d if isinstance(d, int) else -1 for d in shapes[name]]
    feed[name] = arr.reshape(shape if shape.count(-1) <= 1 else [1, *shape[1:]])
outs = sess.run(None, feed)
scale = {scale}
json.dump([{{"name": o.name, "dimensions": "x".join(map(str, v.shape)), "values": (v * scale).ravel().tolist()}}
           for o, v in zip(sess.get_outputs(), outs)], open(args["exportOutput"], "w"))
"""


@pytest.mark.parametrize("form, version", [("fp32", "100300"), ("pack", "8601")])
def test_verify_sh_without_polygraphy_uses_trtexec_and_numpy(bundles, form, version, tmp_path):
    """The trtexec fallback: raw --loadInputs per feed (int32 task ids on 8.x), --exportOutput in trtexec's JSON
    layout, compared within the tolerances; outputs that drift beyond them exit 3."""
    bundle = tmp_path / form
    shutil.copytree(bundles[form], bundle)
    meta = json.loads((bundle / "model.json").read_text())
    (bundle / "model.trt10.3-sm87-fake.engine").write_text(str(bundle / meta["onnx"]))
    fake = tmp_path / "bin"
    fake.mkdir()
    os.symlink(sys.executable, fake / "python3")
    results = {}
    for scale in ("1.0", "1.5"):
        (fake / "trtexec").write_text(FAKE_TRTEXEC.format(python=sys.executable, version=version, scale=scale))
        (fake / "trtexec").chmod(0o755)
        env = {"PATH": f"{fake}:/usr/bin:/bin", "HOME": str(tmp_path)}  # no polygraphy on this PATH
        results[scale] = subprocess.run(["./verify.sh", "model.trt10.3-sm87-fake.engine"], cwd=bundle, env=env,
                                        capture_output=True, text=True, timeout=300)
    assert results["1.0"].returncode == 0 and "PASSED: 8 reference feeds" in results["1.0"].stdout, \
        results["1.0"].stderr[-2000:]
    assert results["1.5"].returncode == 3 and "FAILED" in results["1.5"].stdout


def test_check_runs_on_a_device_without_torch(bundles, no_torch_env):
    """`edgevp check` is what a Jetson user runs before build_engine.sh: numpy, onnx and the rules, no training stack."""
    r = subprocess.run([sys.executable, "-m", "edgevp", "check", str(bundles["pack"]), "--trt-version", "8.5.2",
                        "--json"], env=no_torch_env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["ok"] and report["platforms"] == ["jp5.1"] and report["warnings"]  # the INT64 task input note


@pytest.mark.trt
@pytest.mark.parametrize("form", FORMS)
def test_build_and_verify_each_bundle_on_a_device(bundles, form, tmp_path):
    """On a machine with TensorRT and a GPU: build_engine.sh builds the engine and verify.sh matches the reference
    outputs within the bundle's tolerances."""
    if shutil.which("trtexec") is None and not os.path.exists("/usr/src/tensorrt/bin/trtexec"):
        pytest.skip("trtexec is not installed")
    bundle = tmp_path / form
    shutil.copytree(bundles[form], bundle)
    build = subprocess.run(["./build_engine.sh"], cwd=bundle, capture_output=True, text=True, timeout=1800)
    assert build.returncode == 0, build.stderr[-3000:]
    verify = subprocess.run(["./verify.sh"], cwd=bundle, capture_output=True, text=True, timeout=600)
    assert verify.returncode == 0 and "PASSED" in verify.stdout + verify.stderr, verify.stdout[-3000:]


def test_a_swin_bundle_conforms_at_opset_17(tmp_path, monkeypatch):
    """Swin graphs have Pad, for which onnx's version converter has no 18 -> 17 adapter: torch left them at opset 18,
    which TensorRT 8.x refuses. edgevp rewrites the ops that changed in 18; the parity gate and the conformance
    check both pass, on every platform."""
    import onnx

    from edgevp.train import fit

    from ..unit.test_swin import SWIN

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    fit(tiny_config("vpt", {"num_tokens": 2}, backbone=SWIN, train={"epochs": 1}), out=tmp_path / "swin")
    with pytest.raises(Exception) as e:
        export_run(tmp_path / "swin", ExportOptions(target="trt-fp16", out=tmp_path / "e"))
    assert getattr(e.value, "exit_code", None) == 4, e.value  # gated and conforming; only TensorRT is missing
    side = json.loads((tmp_path / "e" / "trt-fp16.json").read_text())
    assert side["parity"]["max_abs"] <= 1e-4 and side["conformance"]["ok"]  # parity: the fp32 graph at opset 17
    model = onnx.load(str(tmp_path / "e" / "trt-fp16" / "model.fp16.onnx"))
    assert [o.version for o in model.opset_import if o.domain == ""] == [17]


def test_opset_18_ops_rewritten_for_17_compute_the_same():
    """Pad (no adapter in onnx's converter), ReduceMean with axes as an input and Split with num_outputs: the opset-17
    forms give ONNX Runtime the same outputs; an op with no rewrite is refused, not guessed."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from edgevp.conformance.graph import to_opset_17

    inits = [numpy_helper.from_array(np.asarray([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads"),
             numpy_helper.from_array(np.asarray([-1], np.int64), "axes")]
    nodes = [helper.make_node("Pad", ["x", "pads"], ["p"]),
             helper.make_node("ReduceMean", ["p", "axes"], ["m"], keepdims=1),
             helper.make_node("Split", ["p"], ["s0", "s1"], axis=1, num_outputs=2)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4, 3, 3])],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n, shape in
                               (("m", [2, 4, 5, 1]), ("s0", [2, 2, 5, 5]), ("s1", [2, 2, 5, 5]))],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    x = np.random.default_rng(0).random((2, 4, 3, 3), dtype=np.float32)

    def run(m):
        return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})

    want = run(model)
    assert to_opset_17(model) == 2
    onnx.checker.check_model(model, full_check=True)
    assert [o.version for o in model.opset_import] == [17]
    assert all(np.array_equal(a, b) for a, b in zip(want, run(model)))
    resize = helper.make_model(helper.make_graph([helper.make_node("Resize", ["x", "", "sc"], ["y"])], "r",
                                                 graph.input, [], [numpy_helper.from_array(np.ones(4, np.float32), "sc")]),
                               opset_imports=[helper.make_opsetid("", 18)])
    with pytest.raises(ValueError, match="Resize changed in opset 18"):
        to_opset_17(resize)
