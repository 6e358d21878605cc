"""The device side reaches every runtime through one interface (`edgevp.device.artifact.register_runtime`): a runtime
registered for a suffix is what `edgevp eval` and `edgevp predict` run for such files, with nothing else changed."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from edgevp.cli import app
from edgevp.device import artifact
from edgevp.device.artifact import Artifact, register_runtime
from edgevp.device.preprocess import Preprocess

CLASSES = ["dark", "bright"]


@pytest.fixture
def linear_runtime():
    """A `.linear` runtime: the file holds a 2 x (3*4*4) weight matrix; logits = W @ (the flattened image - 0.5)."""

    @register_runtime("linear-test", (".linear",))
    def open_linear(path: Path, task: int | None) -> Artifact:
        w = np.load(path, allow_pickle=False)
        run = lambda x: (x.reshape(len(x), -1) - 0.5) @ w.T  # noqa: E731
        return Artifact(path, "linear", "fp32", Preprocess(size=(4, 4)), CLASSES, {}, None, None, run)

    yield
    del artifact._RUNTIMES["linear-test"]


def _model(tmp_path: Path) -> Path:
    w = np.stack([-np.ones(48), np.ones(48)]).astype(np.float32)  # "bright" wins on bright images
    path = tmp_path / "model.linear"
    with open(path, "wb") as f:
        np.save(f, w)
    return path


def _folder(tmp_path: Path) -> Path:
    for name, value in (("dark", 10), ("bright", 240)):
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((6, 6), value + i, np.uint8)).save(tmp_path / "data" / name / f"{i}.png")
    return tmp_path / "data"


def test_a_registered_runtime_serves_eval_and_predict(linear_runtime, tmp_path):
    model, data = _model(tmp_path), _folder(tmp_path)
    r = CliRunner().invoke(app, ["eval", str(model), "--data", str(data), "-o", str(tmp_path / "eval")])
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert (doc["artifact"]["kind"], doc["images"], doc["top1"]) == ("linear", 6, 100.0)
    r = CliRunner().invoke(app, ["predict", str(model), str(data / "bright" / "0.png"), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["predictions"][0]["top"][0]["label"] == "bright"


def test_edgevp_list_runtimes_shows_the_registry(linear_runtime):
    r = CliRunner().invoke(app, ["list", "runtimes"])
    assert r.exit_code == 0, r.output
    lines = [line.split() for line in r.output.splitlines()]
    assert lines == [["onnxruntime", ".onnx"], ["tensorrt", ".engine", ".plan"], ["linear-test", ".linear"]]


def test_a_file_no_runtime_opens_is_one_line(tmp_path):
    (tmp_path / "model.linear").write_bytes(b"")
    r = CliRunner().invoke(app, ["eval", str(tmp_path / "model.linear"), "--data", str(tmp_path)])
    assert r.exit_code == 6 and "no model a device runtime here opens (.onnx, .engine, .plan)" in r.output
    assert len(r.output.strip().splitlines()) == 1


def test_a_suffix_belongs_to_one_runtime():
    with pytest.raises(ValueError, match="already the onnxruntime runtime's"):
        register_runtime("other", (".onnx",))(lambda path, task: None)
    assert "other" not in artifact._RUNTIMES
    assert {r.name for r in artifact.runtimes()} >= {"onnxruntime", "tensorrt"}
