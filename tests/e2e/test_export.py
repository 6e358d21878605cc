"""`edgevp export`: ONNX artifacts, parity gate, reduced precision, TensorRT bundle and control flow, bad input."""
from __future__ import annotations

import json
import shutil
import sys
import types

import numpy as np
import pytest
from typer.testing import CliRunner

from edgevp.cli import app
from edgevp.export.pipeline import ExportOptions, export_run
from edgevp.export.targets import get_target, list_targets, register_target
from edgevp.runs import RunDir


runner = CliRunner()


@pytest.fixture(scope="module")
def runs(tmp_path_factory, run_cache):
    """One-epoch tiny runs: VPT-deep and LoR-VP (ViT), by name."""
    root = tmp_path_factory.mktemp("runs")
    return {"vpt": run_cache.get("vpt4", root / "vpt"), "lorvp": run_cache.get("lorvp_r2", root / "lorvp")}


def _copy(run, tmp_path):
    dst = tmp_path / run.name
    shutil.copytree(run, dst)
    return dst


def test_targets_come_from_the_registry():
    assert list_targets() == ["onnx", "ort-fp16", "ort-int8", "trt-fp16", "trt-fp32", "trt-int8"]
    with pytest.raises(ValueError):
        register_target("onnx")(lambda ctx: {})
    assert get_target("trt-fp16").opsets == (17, 18)


def test_onnx_export_is_one_checked_file_with_metadata_and_parity(runs, tmp_path):
    import onnx

    run = _copy(runs["lorvp"], tmp_path)
    r = runner.invoke(app, ["export", str(run)])
    assert r.exit_code == 0, r.output
    assert "parity max abs" in r.output
    files = sorted(p.name for p in (run / "export").iterdir())  # no writer lock left behind
    # one self-contained file (no .onnx.data), its test split for `edgevp eval`, no staging leftovers
    assert files == ["model.json", "model.onnx", "test.npz"]
    side = json.loads((run / "export" / "model.json").read_text())
    assert side["status"] == "ok" and side["fold"]["pixel"] == "pos_embed"
    assert side["parity"]["images"] == 32 and side["parity"]["max_abs"] <= 1e-5
    assert side["parity"]["top1_agreement"] == 1.0 and side["parity"]["max_abs_batch1"] <= 1e-5
    # the default --platform all: opset 17 (TensorRT 8.5/8.6 import up to 17), no Shape start/end
    assert side["onnx"]["exporter"] == "dynamo" and side["onnx"]["opset"] == 17
    assert side["onnx"]["tensorrt_rewrites"]["shape_slices_lowered"] >= 1
    assert side["onnx"]["simplify"]["tool"] == "onnxsim"
    model = onnx.load(str(run / "export" / "model.onnx"))
    onnx.checker.check_model(model, full_check=True)
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["method"] == "lorvp" and meta["backbone"] == "test_vit"
    assert len(json.loads(meta["class_names"])) == 10
    assert json.loads(meta["data_config"])["input_size"] == [3, 32, 32]
    assert meta["source_checkpoint_sha256"] == side["source_checkpoint_sha256"]
    assert {"torch", "timm", "onnx", "onnxruntime"} <= set(json.loads(meta["versions"])) and meta["edgevp_version"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch
    stages = {s["name"]: s for s in RunDir(run).manifest()["stages"]}
    assert stages["export:onnx"]["status"] == "ok"


def test_opset17_legacy_static_export(runs, tmp_path):
    side = export_run(runs["vpt"], ExportOptions(opset=17, exporter="legacy", dynamic_batch=False,
                                                 include_preprocess=False, simplify="none", out=tmp_path / "e"))
    assert side["onnx"]["opset"] == 17 and side["onnx"]["exporter"] == "legacy"
    assert side["onnx"]["input"]["shape"] == [1, 3, 32, 32] and side["fold"]["tokens"] == "kv"
    assert side["parity"]["max_abs"] <= 1e-5 and "max_abs_batch1" not in side["parity"]


def test_parity_failure_exits_3_and_leaves_nothing_looking_valid(runs, tmp_path, monkeypatch):
    run = _copy(runs["vpt"], tmp_path)
    assert runner.invoke(app, ["export", str(run), "--with-references"]).exit_code == 0
    from edgevp.profile.onnx_macs import graph_cost
    from edgevp.profile.run import run_variants

    # profile's references come first: the bare backbone, then the unfolded prompted model
    assert [v.name for v in run_variants(run, "ort", "cpu")] == ["bare backbone", "unfolded prompts",
                                                                "folded (this run)"]
    bare, unfolded, folded = (graph_cost(run / "export" / f"{n}.onnx").macs for n in ("bare", "unfolded", "model"))
    assert bare < folded < unfolded  # KV folding removes the prompt rows' compute, not the attention columns
    assert json.loads((run / "export" / "model.json").read_text())["references"]["unfolded.onnx"].startswith("the")
    import edgevp.export.onnx as onnx_target

    real = onnx_target.torch_logits  # a PyTorch model that disagrees with its export by 1.0 in every logit
    monkeypatch.setattr(onnx_target, "torch_logits", lambda model, x, batch=32: real(model, x, batch) + 1.0)
    r = runner.invoke(app, ["export", str(run)])
    assert r.exit_code == 3 and "failed verification" in r.output
    names = {p.name for p in (run / "export").iterdir()}
    assert "model.onnx" not in names and "model.onnx.failed" in names  # the earlier good file is withdrawn too
    assert json.loads((run / "export" / "model.json").read_text())["status"] == "failed"
    assert RunDir(run).manifest()["stages"][-1]["status"] == "failed"


def test_bad_input_exit_codes(runs, tmp_path):
    assert runner.invoke(app, ["export", str(runs["vpt"]), "--target", "tflite"]).exit_code == 2
    assert runner.invoke(app, ["export", str(runs["vpt"]), "--opset", "13", "-o", str(tmp_path / "a")]).exit_code == 2
    r = runner.invoke(app, ["export", str(runs["vpt"]), "--atol", "-1", "-o", str(tmp_path / "a")])
    assert r.exit_code == 2 and "atol and max_drop must be >= 0" in r.output and not (tmp_path / "a").exists()
    r = runner.invoke(app, ["export", str(runs["vpt"]), "--int8-mode", "dynamc", "-o", str(tmp_path / "a")])
    assert r.exit_code == 2 and "'dynamc' is not one of static, dynamic" in r.output
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = runner.invoke(app, ["export", str(runs["vpt"]), "-o", str(blocker / "sub")])
    assert r.exit_code == 2 and "cannot write" in r.output
    broken = _copy(runs["vpt"], tmp_path)
    (broken / "config.yaml").unlink()
    r = runner.invoke(app, ["export", str(broken)])
    assert r.exit_code == 6 and not (broken / "export").exists()
    assert runner.invoke(app, ["export", str(tmp_path / "nothing")]).exit_code == 6
    newer = _copy(runs["lorvp"], tmp_path)  # a run written by a newer edgevp
    manifest = json.loads((newer / "manifest.json").read_text())
    (newer / "manifest.json").write_text(json.dumps({**manifest, "schema_version": 99}))
    r = runner.invoke(app, ["export", str(newer)])
    assert r.exit_code == 6 and "newer edgevp" in r.output and not (newer / "export").exists()


def test_ort_fp16_and_int8_report_accuracy(runs, tmp_path):
    import onnx

    side = export_run(runs["vpt"], ExportOptions(target="ort-fp16", out=tmp_path))
    acc = side["accuracy_vs_fp32"]
    assert side["status"] == "ok" and side["files"] == ["model.fp16.onnx", "test.npz"] and acc["labelled_images"] == 32
    assert acc["images"] == 32 + 64  # the agreement adds the training images after the 64 that calibrate int8
    assert acc["max_abs"] < 1e-2 and acc["top1_agreement"] >= 0.9
    ops = {n.op_type: n for n in onnx.load(str(tmp_path / "model.fp16.onnx")).graph.node}
    # --platform all: LayerNorm decomposed (TensorRT 8.5 has none), its reductions kept in fp32 between Casts
    assert "LayerNormalization" not in ops and "ReduceMean" in ops and "Cast" in ops
    for mode, op in (("static", "QuantizeLinear"), ("dynamic", "DynamicQuantizeLinear")):
        side = export_run(runs["vpt"], ExportOptions(target="ort-int8", out=tmp_path, int8_mode=mode,
                                                     max_drop=100.0))
        assert side["int8"]["mode"] == mode and {"top1", "top1_fp32", "top1_agreement"} <= set(side["accuracy_vs_fp32"])
        assert side["int8"]["calibration_images"] == (64 if mode == "static" else 0)  # of 128 training images
        nodes = onnx.load(str(tmp_path / "model.int8.onnx")).graph.node
        assert op in {n.op_type for n in nodes}
        if mode == "static":
            static_quantize_nodes = sum(n.op_type == "QuantizeLinear" for n in nodes)
            consumers = {n.op_type for n in nodes if any(i.endswith("_DequantizeLinear_Output") for i in n.input)}
            assert {"MatMul", "Gemm"} <= consumers and "LayerNormalization" not in consumers  # default: matmul
            # only layers with a constant weight: attention's activation products (Q·Kᵀ, P·V) stay float
            float_matmuls = [n for n in nodes if n.op_type == "MatMul"
                             and not any(i.endswith("_DequantizeLinear_Output") for i in n.input)]
            assert len(float_matmuls) == 12  # 2 per block, 6 blocks
    assert json.loads((tmp_path / "model.int8.json").read_text())["int8"]["mode"] == "dynamic"
    r = runner.invoke(app, ["export", str(runs["vpt"]), "--target", "ort-int8", "-o", str(tmp_path / "all"),
                            "--calib-method", "percentile", "--int8-ops", "all", "--max-drop", "100", "--min-agreement",
                            "0",  # every op in symmetric int8 on an untrained tiny ViT: this checks the options only
                            "--gate-images", "16"])
    assert r.exit_code == 0, r.output
    side = json.loads((tmp_path / "all" / "model.int8.json").read_text())
    assert side["int8"]["calib_method"] == "percentile" and side["int8"]["ops"] == "all"
    assert side["accuracy_vs_fp32"]["images"] == 16
    nodes = onnx.load(str(tmp_path / "all" / "model.int8.onnx")).graph.node
    consumers = {n.op_type for n in nodes if any(i.endswith("_DequantizeLinear_Output") for i in n.input)}
    # ORT's full op set quantises norm inputs too (the norm, decomposed for TensorRT 8.5, reads them in ReduceMean/Sub)
    assert {"ReduceMean", "Sub"} <= consumers
    assert sum(n.op_type == "QuantizeLinear" for n in nodes) > static_quantize_nodes
    r = runner.invoke(app, ["export", str(runs["vpt"]), "--target", "ort-int8", "--calib-method", "kl"])
    assert r.exit_code == 2 and "--calib-method" in r.output


def test_int8_calibration_ranges(runs, tmp_path):
    """A static int8 export ships the activation ranges its Q/DQ scales came from; quantising the fp32 ONNX again from
    that file gives the same scales and zero points, bit for bit (no calibration images needed). Entropy calibration
    is real: ORT's quantize_static builds its entropy calibrator with as many histogram bins as quantized bins, which
    makes it MinMax; edgevp uses TensorRT's 2048/128, so some ranges are narrower than MinMax's and none wider."""
    import onnx
    from onnx import numpy_helper
    from onnxruntime.quantization.calibrate import load_tensors_data

    from edgevp.export.ort import RANGES_FILE, calibrate, to_int8

    side = export_run(runs["vpt"], ExportOptions(target="ort-int8", out=tmp_path, max_drop=100.0))
    assert side["files"] == ["model.int8.onnx", RANGES_FILE, "test.npz"] and side["int8"]["ranges"] == RANGES_FILE
    assert len(load_tensors_data(tmp_path / RANGES_FILE).data) > 10
    fp32 = tmp_path / "fp32" / "model.onnx"
    export_run(runs["vpt"], ExportOptions(target="onnx", out=fp32.parent, test_images=0))
    again = tmp_path / "again.onnx"
    to_int8(fp32, again, None, "static", side["int8"]["calib_method"], side["int8"]["ops"], ranges=tmp_path / RANGES_FILE)

    def qparams(path):
        return {i.name: numpy_helper.to_array(i).tobytes() for i in onnx.load(str(path)).graph.initializer
                if i.name.endswith(("_scale", "_zero_point"))}

    shipped, rebuilt = qparams(tmp_path / "model.int8.onnx"), qparams(again)
    assert len(shipped) > 10 and shipped == rebuilt

    calib = np.random.default_rng(0).random((8, 3, 32, 32), dtype=np.float32)
    width = {}
    for method in ("minmax", "entropy"):
        calibrate(fp32, calib, method, tmp_path / f"{method}.json", ["MatMul"])  # few tensors: fast
        width[method] = {k: float(np.max(v.range_value[1]) - np.min(v.range_value[0]))
                         for k, v in load_tensors_data(tmp_path / f"{method}.json").data.items()}
    assert width["minmax"].keys() == width["entropy"].keys() and len(width["minmax"]) >= 10
    assert sum(width["entropy"][k] < 0.9 * width["minmax"][k] for k in width["minmax"]) >= 3
    assert all(width["entropy"][k] <= width["minmax"][k] * (1 + 1e-5) + 1e-6 for k in width["minmax"])


def test_trt_without_tensorrt_writes_the_bundle_and_exits_4(runs, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import fails as when it is not installed
    r = runner.invoke(app, ["export", str(runs["vpt"]), "--target", "trt-fp16", "-o", str(tmp_path)])
    assert r.exit_code == 4 and "TensorRT is not installed" in r.output and "build_engine.sh" in r.output
    bundle = tmp_path / "trt-fp16"
    assert {p.name for p in bundle.iterdir()} == {"model.fp16.onnx", "reference", "build_engine.sh", "verify.sh",
                                                  "README.md", "model.json", "labels.txt", "test.npz", "deepstream",
                                                  "triton"}
    script = (bundle / "build_engine.sh").read_text()
    assert "--stronglyTyped" in script and "--shapes=input:1x3x32x32" in script
    side = json.loads((tmp_path / "trt-fp16.json").read_text())
    assert side["status"] == "missing" and side["engine"] is None
    meta = json.loads((bundle / "model.json").read_text())  # the engine's sidecar-to-be, with the ONNX hash
    assert meta["onnx"] == "model.fp16.onnx" and len(meta["onnx_sha256"]) == 64 and "tensorrt_version" not in meta
    assert meta["outputs"] == ["logits", "probs"] and meta["reference"]["feeds"] == 8


def test_trt_int8_bundle_is_explicit_qdq_with_its_ranges(runs, tmp_path, monkeypatch):
    import onnx

    from edgevp.export.ort import RANGES_FILE

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    r = runner.invoke(app, ["export", str(runs["vpt"]), "--target", "trt-int8", "-o", str(tmp_path), "--max-drop",
                            "100"])
    assert r.exit_code == 4, r.output
    bundle = tmp_path / "trt-int8"
    assert {"model.int8.onnx", RANGES_FILE, "build_engine.sh", "verify.sh"} <= {p.name for p in bundle.iterdir()}
    ops = {n.op_type for n in onnx.load(str(bundle / "model.int8.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    script = (bundle / "build_engine.sh").read_text()
    assert RANGES_FILE in (bundle / "README.md").read_text() and "--stronglyTyped" in script and "--int8" in script
    side = json.loads((tmp_path / "trt-int8.json").read_text())
    assert side["int8"]["ops"] == "matmul" and side["int8"]["calib_method"] == "minmax"
    assert side["int8"]["quantizer_options"] == {"ActivationSymmetric": True, "WeightSymmetric": True,
                                                 "QuantizeBias": False}


@pytest.mark.parametrize("version, flags, absent", [("10.3.0", ["--stronglyTyped"], ["--fp16"]),
                                                    ("8.6.2", ["--fp16"], ["--stronglyTyped"]),
                                                    ("8.5.2", ["--fp16"], ["--stronglyTyped"]),
                                                    ("10.8.0", ["--stronglyTyped"], ["--fp16"]),
                                                    ("11.0.0", None, None), ("8.4.1", None, None)])
def test_build_engine_script_runs_trtexec_with_the_versions_flags(runs, tmp_path, monkeypatch, version, flags, absent):
    """8.x gets weak typing (--fp16; --stronglyTyped is an unknown option there), 10.x strong typing; a version the
    bundle was not made for is refused in one line, exit 4, before trtexec runs."""
    import subprocess

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    r = runner.invoke(app, ["export", str(runs["vpt"]), "--target", "trt-fp16", "-o", str(tmp_path / "out")])
    assert r.exit_code == 4
    bundle = tmp_path / "out" / "trt-fp16"
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "trtexec").write_text('#!/bin/sh\necho "$@" > trtexec.args\nfor a in "$@"; do case "$a" in '
                                  '--saveEngine=*) echo engine > "${a#--saveEngine=}";; esac; done\n')
    (fake / "trtexec").chmod(0o755)
    (fake / "tensorrt.py").write_text(f"__version__ = '{version}'\n")
    env = {**__import__("os").environ, "PATH": f"{fake}:/usr/bin:/bin", "PYTHONPATH": str(fake), "SM": "87"}
    major_minor = ".".join(version.split(".")[:2])
    engine = f"model.trt{major_minor}-sm87-fp16.engine"  # named after what it is tied to
    p = subprocess.run(["./build_engine.sh"], cwd=bundle, env=env, capture_output=True, text=True)
    if flags is None:
        assert p.returncode == 4 and f"this device has TensorRT {major_minor}" in p.stderr
        assert len(p.stderr.strip().splitlines()) == 1 and not (bundle / "trtexec.args").exists()
        return
    assert p.returncode == 0, p.stderr
    args = (bundle / "trtexec.args").read_text().split()
    assert "--onnx=model.fp16.onnx" in args and f"--saveEngine={engine}" in args
    assert all(f in args for f in flags) and not any(a in args for a in absent)
    assert (bundle / engine).read_text() == "engine\n"
    assert json.loads((bundle / "model.json").read_text())["tensorrt_version"] == version
    assert (bundle / "triton" / "vpt_fp16" / "1" / "model.plan").is_file()


# -- TensorRT control flow with a fake module ------------------------------------------------------------------------
def fake_tensorrt(version: str = "10.3.0", strongly: bool = True, builder_error: bool = False, parse_ok: bool = True):
    """A stand-in for the `tensorrt` module that records what the builder was asked to do."""
    calls: dict = {"flags": None, "builder_flags": [], "profile": None}
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.calls = calls

    class Logger:
        WARNING = 2

        def __init__(self, level):
            pass

    flag_names = {"STRONGLY_TYPED": 1} if strongly else {"EXPLICIT_BATCH": 0}
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(**flag_names)
    trt.BuilderFlag = types.SimpleNamespace(FP16="FP16")
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")

    class Cache:
        def serialize(self):
            return b"cache"

    class Config:
        def set_memory_pool_limit(self, pool, size):
            calls["workspace"] = size

        def create_timing_cache(self, data):
            calls["cache_in"] = data
            return Cache()

        def set_timing_cache(self, cache, ignore_mismatch):
            pass

        def get_timing_cache(self):
            return Cache()

        def set_flag(self, flag):
            calls["builder_flags"].append(flag)

        def add_optimization_profile(self, p):
            pass

    class Profile:
        def set_shape(self, name, mn, opt, mx):
            calls["profile"] = (name, mn, opt, mx)

    class Builder:
        def __init__(self, logger):
            if builder_error:
                raise TypeError("pybind11::init(): factory function returned nullptr")

        def create_network(self, flags):
            calls["flags"] = flags
            return object()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            return b"engine-bytes"

    class OnnxParser:
        num_errors = 0 if parse_ok else 1

        def __init__(self, network, logger):
            pass

        def parse_from_file(self, path):
            calls["parsed"] = path
            return parse_ok

        def get_error(self, i):
            return "Unsupported operator Attention"

    trt.Logger, trt.Builder, trt.OnnxParser = Logger, Builder, OnnxParser
    return trt


def test_build_engine_flags_and_errors(tmp_path):
    from edgevp.errors import MissingError, VerificationError
    from edgevp.export.trt import build_engine

    onnx_path = tmp_path / "m.onnx"
    onnx_path.write_bytes(b"x")
    shapes = {"min": (1, 3, 32, 32), "opt": (1, 3, 32, 32), "max": (4, 3, 32, 32)}
    trt = fake_tensorrt()
    used = build_engine(onnx_path, tmp_path / "e", shapes, "fp16", tmp_path / "timing.cache", trt)
    assert used == {"tensorrt_version": "10.3.0", "strongly_typed": True, "legacy_fp16_flag": False}
    assert trt.calls["flags"] == 1 << 1 and trt.calls["builder_flags"] == []
    assert trt.calls["profile"] == ("input", *shapes.values()) and trt.calls["workspace"] == 1 << 30
    assert (tmp_path / "e").read_bytes() == b"engine-bytes" and (tmp_path / "timing.cache").read_bytes() == b"cache"
    build_engine(onnx_path, tmp_path / "e", shapes, "fp16", tmp_path / "timing.cache", trt)
    assert trt.calls["cache_in"] == b"cache"  # the timing cache is reused
    old = fake_tensorrt("8.6.1", strongly=False)
    assert build_engine(onnx_path, tmp_path / "e", shapes, "fp16", None, old)["legacy_fp16_flag"]
    assert old.calls["builder_flags"] == ["FP16"] and old.calls["flags"] == 1  # EXPLICIT_BATCH on TensorRT 8
    with pytest.raises(MissingError, match="could not initialise CUDA"):
        build_engine(onnx_path, tmp_path / "e", shapes, "fp16", None, fake_tensorrt(builder_error=True))
    with pytest.raises(VerificationError, match="Unsupported operator"):
        build_engine(onnx_path, tmp_path / "e", shapes, "fp16", None, fake_tensorrt(parse_ok=False))


def test_trt_export_with_fake_tensorrt_and_gpu(runs, tmp_path, monkeypatch):
    import edgevp.export.trt as trt_mod

    trt = fake_tensorrt("11.4.0")
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(trt_mod, "gpu", lambda: ("Fake Orin", "8.7"))
    seen = {}

    def fake_engine(engine_path, x, batch):  # a correct engine: the bundle's ONNX in ORT
        from edgevp.export.onnx import run_ort, session

        seen.update(engine=engine_path.name, batch=batch, images=seen.get("images", 0) + len(x))
        return run_ort(session(engine_path.parent / "model.onnx"), x, 1)

    monkeypatch.setattr(trt_mod, "engine_logits", fake_engine)
    side = export_run(runs["vpt"], ExportOptions(target="trt-fp32", out=tmp_path, trt_dynamic_batch=True,
                                                 trt_max_batch=4))
    assert side["status"] == "ok" and side["files"] == ["trt-fp32", "test.npz"]
    engine_name = "model.trt11.4-sm87-fp32.engine"
    # the gate runs the engine on the val images and the training images that top up the agreement
    assert seen == {"engine": engine_name, "batch": 1, "images": side["engine_vs_fp32"]["images"]}
    assert side["engine_vs_fp32"]["labelled_images"] == side["parity"]["images"] < seen["images"]
    assert side["engine_vs_fp32"]["max_abs"] < 1e-5 and side["engine_vs_fp32"]["top1_agreement"] == 1.0
    eng = json.loads((tmp_path / "trt-fp32" / "model.json").read_text())
    assert eng["tensorrt_version"] == "11.4.0" and eng["gpu"] == "Fake Orin" and eng["compute_capability"] == "8.7"
    assert eng["shapes"]["max"] == [4, 3, 32, 32] and eng["strongly_typed"] and len(eng["onnx_sha256"]) == 64
    assert (tmp_path / "trt-fp32" / engine_name).read_bytes() == b"engine-bytes"
    assert "--maxShapes=input:4x3x32x32" in (tmp_path / "trt-fp32" / "build_engine.sh").read_text()
    from edgevp.errors import IncompatibleError
    from edgevp.profile.backends import check_sidecar

    engine_path = tmp_path / "trt-fp32" / engine_name
    assert check_sidecar(engine_path, "11.4.1", "Fake Orin")["onnx_sha256"] == eng["onnx_sha256"]
    with pytest.raises(IncompatibleError, match="TensorRT 11.4.0"):  # loading elsewhere says so
        check_sidecar(engine_path, "10.3.0", "Fake Orin")
    # an engine whose outputs are wrong fails the gate: exit 3, the bundle kept only under a `.failed` name
    monkeypatch.setattr(trt_mod, "engine_logits", lambda e, x, b: -fake_engine(e, x, b))
    r = runner.invoke(app, ["export", str(runs["vpt"]), "--target", "trt-fp32", "-o", str(tmp_path / "bad")])
    assert r.exit_code == 3 and "TensorRT engine" in r.output
    assert (tmp_path / "bad" / "trt-fp32.failed").is_dir() and not (tmp_path / "bad" / "trt-fp32").exists()
    monkeypatch.setattr(trt_mod, "gpu", lambda: None)
    r = runner.invoke(app, ["export", str(runs["vpt"]), "--target", "trt-fp32", "-o", str(tmp_path / "nogpu")])
    assert r.exit_code == 4 and "no CUDA GPU" in r.output


@pytest.mark.trt
def test_real_tensorrt_engine(runs, tmp_path):
    pytest.importorskip("tensorrt")
    from edgevp.export.trt import gpu

    if gpu() is None:
        pytest.skip("no CUDA GPU")
    side = export_run(runs["vpt"], ExportOptions(target="trt-fp16", out=tmp_path))
    assert side["status"] == "ok" and (tmp_path / "trt-fp16" / "model.engine").stat().st_size > 0
    assert side["engine"]["strongly_typed"]
    assert side["engine_vs_fp32"]["top1_agreement"] >= 0.95 and side["engine_vs_fp32"]["max_abs"] < 0.1
