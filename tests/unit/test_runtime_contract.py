"""The deployed artifact's contract in the torch-free runtime layer (issue 19): one ONNX Runtime session factory,
one GPU/Jetson probe, precision recorded in the sidecar and read back through one function."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

EDGEVP = Path(__file__).resolve().parents[2] / "edgevp"


def _tiny_onnx(dtype: str = "float32") -> bytes:
    onnx = pytest.importorskip("onnx")
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
