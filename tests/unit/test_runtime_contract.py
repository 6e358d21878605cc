"""The deployed artifact's contract in the torch-free runtime layer (issue 19): one ONNX Runtime session factory,
one GPU/Jetson probe, precision recorded in the sidecar and read back through one function."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

EDGEVP = Path(__file__).resolve().parents[2] / "edgevp"


def _tiny_onnx(dtype: str = "float32") -> bytes:
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    t = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16}[dtype]
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", t, [1, 4])], [helper.make_tensor_value_info("y", t, [1, 4])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m.SerializeToString()


# --------------------------------------------------------------------------------------------------------------
# one ONNX Runtime session factory
# --------------------------------------------------------------------------------------------------------------

def test_only_the_factory_constructs_inference_sessions():
    """No module of edgevp/ outside runtime/sessions.py opens an ONNX Runtime session (or builds its options)."""
    pattern = re.compile(r"\b(InferenceSession|SessionOptions)\s*\(")
    offenders = [str(p.relative_to(EDGEVP)) for p in EDGEVP.rglob("*.py")
                 if p != EDGEVP / "runtime" / "sessions.py" and pattern.search(p.read_text())]
    assert offenders == []


def test_session_factory_defaults_and_options(tmp_path):
    pytest.importorskip("onnxruntime")
    from edgevp.runtime.sessions import open_session

    model = _tiny_onnx()
    sess = open_session(model)
    assert sess.get_providers() == ["CPUExecutionProvider"]
    so = sess.get_session_options()
    assert so.log_severity_level == 3 and not so.enable_profiling
    with pytest.raises(RuntimeError):  # not set: ORT's default (threads spin)
        so.get_session_config_entry("session.intra_op.allow_spinning")
    x = np.array([[-1, 2, -3, 4]], dtype=np.float32)
    assert sess.run(None, {"x": x})[0].tolist() == [[0, 2, 0, 4]]

    import onnxruntime as ort
    p = tmp_path / "m.onnx"
    p.write_bytes(model)
    sess = open_session(p, threads=2, optimization="basic", spinning=False, profile_prefix=str(tmp_path / "trace"),
                        log_severity=2)
    so = sess.get_session_options()
    assert (so.intra_op_num_threads, so.inter_op_num_threads) == (2, 1)
    assert so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert so.enable_profiling and so.log_severity_level == 2
    sess.run(None, {"x": x})
    assert Path(sess.end_profiling()).exists()


def test_session_factory_refuses_an_unreadable_model_in_one_line(tmp_path):
    pytest.importorskip("onnxruntime")
    from edgevp.errors import IncompatibleError
    from edgevp.runtime.sessions import open_session

    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(IncompatibleError, match="ONNX Runtime cannot load") as e:
        open_session(bad)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="optimization"):
        open_session(_tiny_onnx(), optimization="most")


def test_profiler_measures_with_its_own_options(monkeypatch, tmp_path):
    """The profiler's measurement options are unchanged: every optimisation, no spinning, its thread count."""
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort

    from edgevp.profile.backends import prepare_ort

    p = tmp_path / "m.onnx"
    p.write_bytes(_tiny_onnx())
    seen = {}
    real = ort.InferenceSession

    def spy(src, so=None, providers=None, **kw):
        seen["so"] = so
        return real(src, so, providers=providers, **kw)

    monkeypatch.setattr(ort, "InferenceSession", spy)
    prepare_ort(p, batch=1, device="cpu", threads=3)
    so = seen["so"]
    assert so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert (so.intra_op_num_threads, so.inter_op_num_threads) == (3, 1)
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "0"


# --------------------------------------------------------------------------------------------------------------
# one GPU / Jetson probe
# --------------------------------------------------------------------------------------------------------------

def _fake_smi(tmp_path, monkeypatch, name: str | None, cap: str | None):
    """A fake nvidia-smi on PATH (alone: PATH holds nothing else) answering the name and compute_cap queries."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    if name is not None:
        smi = bin_ / "nvidia-smi"
        smi.write_text(f'#!/bin/sh\ncase "$1" in\n  *=name) echo "{name}" ;;\n  *=compute_cap) echo "{cap or ""}" ;;\n'
                       '  *) echo "1980 MHz, 1980 MHz, P0, 550.54" ;;\nesac\n')
        smi.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_))


def _fake_jetson(root: Path, soc: str = "tegra234") -> Path:
    (root / "proc/device-tree").mkdir(parents=True)
    (root / "proc/device-tree/model").write_text("NVIDIA Jetson Orin Nano Developer Kit\x00")
    (root / "proc/device-tree/compatible").write_text(f"nvidia,p3768-0000\x00nvidia,{soc}\x00")
    (root / "etc").mkdir()
    (root / "etc/nv_tegra_release").write_text("# R36 (release), REVISION: 3.0\nmore\n")
    return root


def test_gpu_probe_on_a_discrete_gpu(tmp_path, monkeypatch):
    from edgevp.runtime import gpu

    _fake_smi(tmp_path, monkeypatch, "NVIDIA H200", "9.0")
    root = tmp_path / "root"
    root.mkdir()
    assert gpu.gpu_name(root) == "NVIDIA H200" and gpu.compute_capability(root) == "9.0"
    assert gpu.cuda_present(root) and gpu.jetson_model(root) is None and gpu.jetson_state(root) is None
    assert gpu.gpu_clocks().endswith("550.54")


def test_gpu_probe_on_a_jetson_without_nvidia_smi(tmp_path, monkeypatch):
    from edgevp.runtime import gpu

    _fake_smi(tmp_path, monkeypatch, None, None)
    root = _fake_jetson(tmp_path / "root")
    assert gpu.gpu_name(root) == "NVIDIA Jetson Orin Nano Developer Kit"
    assert gpu.compute_capability(root) == "8.7" and gpu.cuda_present(root)
    assert gpu.l4t_release(root) == "# R36 (release), REVISION: 3.0"
    assert gpu.jetson_state(root)["l4t"] == "# R36 (release), REVISION: 3.0"
    (root / "proc/device-tree/compatible").write_text("nvidia,tegra194\x00")
    assert gpu.compute_capability(root) == "7.2"


def test_gpu_probe_on_a_jetson_whose_nvidia_smi_has_no_compute_cap(tmp_path, monkeypatch):
    from edgevp.runtime import gpu

    _fake_smi(tmp_path, monkeypatch, "Orin (nvgpu)", "[N/A]")
    root = _fake_jetson(tmp_path / "root")
    assert gpu.gpu_name(root) == "Orin (nvgpu)" and gpu.compute_capability(root) == "8.7"


def test_gpu_probe_without_a_gpu(tmp_path, monkeypatch):
    from edgevp.runtime import gpu

    _fake_smi(tmp_path, monkeypatch, None, None)
    root = tmp_path / "root"
    root.mkdir()
    assert (gpu.gpu_name(root), gpu.compute_capability(root), gpu.cuda_present(root)) == (None, None, False)
    (root / "proc/driver/nvidia").mkdir(parents=True)
    (root / "proc/driver/nvidia/version").write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54\n")
    assert gpu.cuda_present(root)


def test_one_gpu_probe():
    """Only the runtime probes the GPU: no other module of edgevp/ runs nvidia-smi or reads the Jetson's files
    (export/bundle.py writes build_engine.sh, a shell script for a device without edgevp, which keeps its copy;
    export/trt.py asks PyTorch only where the probe has no answer, e.g. a container without nvidia-smi)."""
    pattern = re.compile(r"nvidia-smi|/proc/device-tree|nv_tegra_release|get_device_capability")
    offenders = sorted(str(p.relative_to(EDGEVP)) for p in EDGEVP.rglob("*.py")
                       if p.parent.name != "runtime" and pattern.search(p.read_text()))
    assert offenders == ["export/bundle.py", "export/trt.py"]


# --------------------------------------------------------------------------------------------------------------
# precision recorded in the sidecar, read back through one function
# --------------------------------------------------------------------------------------------------------------

def test_edgevp_fp16_and_int8_models_read_back_as_fp16_and_int8(run_cache, tmp_path):
    """edgevp's own fp16 / int8 ONNX keep fp32 inputs (the input dtype says "fp32"): export records the precision in
    the sidecar and the device and the profiler read it back from there, whatever the file is called."""
    import json
    import shutil

    from edgevp.device.artifact import open_artifact
    from edgevp.export.pipeline import ExportOptions, export_run
    from edgevp.profile.backends import prepare_ort
    from edgevp.runtime.sidecar import precision_of

    run = run_cache.get("linear", tmp_path / "run")
    for target in ("onnx", "ort-fp16", "ort-int8"):
        export_run(run, ExportOptions(target=target, gate_images=16, simplify="none"))
    export = run / "export"
    for p in ("fp16", "int8"):
        model = export / f"model.{p}.onnx"
        assert json.loads((export / f"model.{p}.json").read_text())["precision"] == p
        assert precision_of(model) == p
        art = open_artifact(model)
        try:
            assert art.precision == p
        finally:
            art.close()
        assert prepare_ort(model, batch=1)[2]["precision"] == p
        # the sidecar decides, not the file name or the (fp32) input dtype
        other = tmp_path / p
        other.mkdir()
        shutil.copy(model, other / "served.onnx")
        shutil.copy(export / f"model.{p}.json", other / "served.json")
        assert precision_of(other / "served.onnx", input_type="tensor(float)") == p
        (other / "served.json").unlink()
        assert precision_of(other / "served.onnx", input_type="tensor(float)") == "fp32"  # nothing recorded
    assert json.loads((export / "model.json").read_text())["precision"] == "fp32"
    assert precision_of(export / "model.onnx") == "fp32"


def test_precision_of_sidecars_old_and_new(tmp_path):
    import json

    from edgevp.errors import IncompatibleError
    from edgevp.runtime.sidecar import precision_of, target_precision

    assert [target_precision(t) for t in ("onnx", "ort-fp16", "ort-int8", "trt-fp32", "trt-fp16", "trt-int8")] == [
        "fp32", "fp16", "int8", "fp32", "fp16", "int8"]
    # a pack: pack.json names its model among its files (its `onnx` is a record)
    (tmp_path / "pack.json").write_text(json.dumps({"precision": "fp16", "files": ["model.fp16.onnx", "tasks.json"],
                                                    "onnx": {"opset": 17}}))
    assert precision_of(tmp_path / "model.fp16.onnx") == "fp16"
    assert precision_of(tmp_path / "stray.onnx") == "fp32"  # pack.json does not name it
    # a bundle: model.json names its ONNX; an engine's sidecar is given by the caller
    b = tmp_path / "trt-int8"
    b.mkdir()
    (b / "model.json").write_text(json.dumps({"onnx": "model.int8.onnx", "precision": "int8"}))
    assert precision_of(b / "model.int8.onnx") == "int8"
    assert precision_of(b / "model.trt10.3-sm87-int8.engine", {"precision": "int8"}) == "int8"
    # old sidecars (no precision): today's logic, in this one function
    assert precision_of(b / "model.trt10.3-sm87-fp16.engine", {}) == "fp16"
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "model.fp16.json").write_text(json.dumps({"files": ["model.fp16.onnx"]}))
    assert precision_of(tmp_path / "old" / "model.fp16.onnx") == "fp16"
    assert precision_of(tmp_path / "old" / "x.onnx", input_type="tensor(float16)") == "fp16"
    assert precision_of(tmp_path / "old" / "x.onnx", input_type="tensor(float)") == "fp32"
    (tmp_path / "old" / "bad.json").write_text(json.dumps({"precision": "bf16"}))
    with pytest.raises(IncompatibleError, match="records precision 'bf16'"):
        precision_of(tmp_path / "old" / "bad.onnx")


# --------------------------------------------------------------------------------------------------------------
# the TensorRT engine runner lives in the runtime
# --------------------------------------------------------------------------------------------------------------

def test_export_device_and_profile_run_engines_through_the_runtime():
    """Export's engine gate, the device and the profiler import the runner from edgevp.runtime.engine; nothing in
    edgevp/ imports the old profile.trt_runtime name, which is gone."""
    assert not (EDGEVP / "profile" / "trt_runtime.py").exists()
    users = {str(p.relative_to(EDGEVP)) for p in EDGEVP.rglob("*.py") if "runtime.engine import" in p.read_text()}
    assert {"export/trt.py", "device/artifact.py", "profile/backends.py"} <= users
    old = [str(p.relative_to(EDGEVP)) for p in EDGEVP.rglob("*.py") if "trt_runtime import" in p.read_text()]
    assert old == []


def test_export_and_pack_write_bundle_formats_through_the_runtime():
    """Engine names, labels and the DeepStream / Triton configs live in edgevp.runtime.formats: nothing in edgevp/
    reaches them through the device package (device/formats.py is gone)."""
    assert not (EDGEVP / "device" / "formats.py").exists()
    through_device = [str(p.relative_to(EDGEVP)) for p in EDGEVP.rglob("*.py")
                      if re.search(r"from \.+device(\.formats| import formats)", p.read_text())]
    assert through_device == []
