"""A real `edgevp export` / `edgevp pack` process killed with SIGKILL at seeded random points leaves no file that
looks valid but is partial (a sidecar is written only after its artifacts passed the gate), and the same command
again cleans up the killed one's staging and lock and succeeds."""
from __future__ import annotations

import json
import random

import pytest

from ..support import assert_nothing_partial, edgevp, kill_after


@pytest.fixture(scope="module")
def trained(tmp_path_factory, run_cache):
    return run_cache.get("vpt4", tmp_path_factory.mktemp("kill_export") / "run")


@pytest.mark.parametrize("seed", range(4))
def test_killed_export_leaves_no_valid_looking_partial_artifact(trained, tmp_path, seed):
    out = tmp_path / "export"
    delay = random.Random(100 + seed).uniform(0.0, 4.0)
    kill_after(["export", str(trained), "-o", str(out), "--exporter", "legacy"], delay, watch=out)
    assert_nothing_partial(out)
    if (out / "model.json").is_file():  # a sidecar is written only after its artifacts passed the gate
        assert json.loads((out / "model.json").read_text())["status"] == "ok" and (out / "model.onnx").is_file()
    r = edgevp("export", str(trained), "-o", str(out), "--exporter", "legacy")
    assert r.returncode == 0, r.stderr
    assert not list(out.glob(".export-*"))  # the killed export's staging directory is cleaned
    assert json.loads((out / "model.json").read_text())["status"] == "ok"


def test_a_writer_removes_temporaries_a_killed_writer_left(tmp_path):
    """A SIGKILL during a checkpoint write leaves `.NAME.*.tmp`; the next writer of the directory removes it (and
    nothing else)."""
    from edgevp.runs import writer_lock

    (tmp_path / "checkpoints").mkdir()
    stale = [tmp_path / ".resume.pt.x1y2.tmp", tmp_path / "checkpoints" / ".last.safetensors.ab12.tmp"]
    kept = [tmp_path / "metrics.jsonl", tmp_path / "checkpoints" / "last.safetensors", tmp_path / "notes.tmp"]
    for p in stale + kept:
        p.write_text("x")
    with writer_lock(tmp_path):
        assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)


@pytest.mark.parametrize("seed", range(4))
def test_killed_pack_leaves_no_valid_looking_partial_pack_and_a_rerun_cleans_up(trained, tmp_path, seed):
    """kill -9 at a random point of `edgevp pack` (the run's own export included), then the same command again."""
    from edgevp.runtime import feeds

    out = tmp_path / "pack"
    args = ["pack", str(trained), "-o", str(out), "--tables-as-inputs", "--gate-images", "8"]
    kill_after(args, random.Random(200 + seed).uniform(0.0, 4.0), watch=out)
    for folder in (out, trained / "export"):
        if folder.exists():
            assert_nothing_partial(folder)
    if (out / "pack.json").is_file():  # written only after the pack passed its gate
        assert json.loads((out / "pack.json").read_text())["status"] == "ok" and (out / "model.onnx").is_file()
    r = edgevp(*args)
    assert r.returncode == 0, r.stderr
    assert not list(out.glob(".pack-*")) and not (out / ".edgevp.lock").exists()
    assert json.loads((out / "pack.json").read_text())["status"] == "ok"
    import onnxruntime as ort

    inputs = {i.name: i.shape for i in ort.InferenceSession(str(out / "model.onnx")).get_inputs()}
    assert feeds.load_tables(out / "model.onnx", inputs)  # the tables are the ones tasks.json records
