"""A real `edgevp export` / `edgevp pack` process killed with SIGKILL at each of its stages in turn leaves no file that
looks valid but is partial (a sidecar is written only after its artifacts passed the gate), and the same command
again cleans up the killed one's staging and lock and succeeds."""
from __future__ import annotations

import json

import pytest

from ..support import assert_nothing_partial, edgevp, kill_after


@pytest.fixture(scope="module")
def trained(tmp_path_factory, run_cache):
    return run_cache.get("vpt4", tmp_path_factory.mktemp("kill_export") / "run")


def _staged(folder, prefix: str, name: str = ""):
    """A watch: `folder` holds a staging directory `PREFIX*` (holding `name`, when given)."""
    return lambda: any(folder.glob(f"{prefix}*/{name}" if name else f"{prefix}*"))


def test_export_killed_at_each_stage_leaves_no_valid_looking_partial_artifact_and_a_rerun_cleans_up(trained, tmp_path):
    """One process after another, each killed as the export reaches a later point (staging made, test split written,
    ONNX written and being gated, files installed); after every kill nothing under `out` looks valid but partial.
    The last command finishes, cleaning the killed ones' staging."""
    out = tmp_path / "export"
    args = ["export", str(trained), "-o", str(out), "--exporter", "legacy"]
    points = [_staged(out, ".export-"), _staged(out, ".export-", "test.npz"), _staged(out, ".export-", "model.onnx"),
              lambda: (out / "model.onnx").exists()]
    codes = []
    for watch in points:
        codes.append(kill_after(args, 0.0, watch=watch))
        assert_nothing_partial(out)
        if (out / "model.json").is_file():  # a sidecar is written only after its artifacts passed the gate
            assert json.loads((out / "model.json").read_text())["status"] == "ok" and (out / "model.onnx").is_file()
    assert codes[:3] == [-9] * 3, codes  # killed mid-export (the last point may race the sidecar: either is fine)
    r = edgevp(*args)
    assert r.returncode == 0, r.stderr
    assert not list(out.glob(".export-*"))  # the killed exports' staging directories are cleaned
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


def test_pack_killed_at_each_stage_leaves_no_valid_looking_partial_pack_and_a_rerun_cleans_up(trained, tmp_path):
    """kill -9 as `edgevp pack` reaches each point in turn (the run's own export under way, the pack's staging made,
    its graph written and being gated, its task records written), then the same command again."""
    from edgevp.runtime import feeds

    out = tmp_path / "pack"
    args = ["pack", str(trained), "-o", str(out), "--tables-as-inputs", "--gate-images", "8"]
    points = [_staged(trained / "export", ".export-"), _staged(out, ".pack-"), _staged(out, ".pack-", "model.onnx"),
              _staged(out, ".pack-", "tasks.json")]
    codes = []
    for watch in points:
        codes.append(kill_after(args, 0.0, watch=watch))
        for folder in (out, trained / "export"):
            if folder.exists():
                assert_nothing_partial(folder)
        if (out / "pack.json").is_file():  # written only after the pack passed its gate
            assert json.loads((out / "pack.json").read_text())["status"] == "ok" and (out / "model.onnx").is_file()
    assert codes[:3] == [-9] * 3, codes
    r = edgevp(*args)
    assert r.returncode == 0, r.stderr
    assert not list(out.glob(".pack-*")) and not (out / ".edgevp.lock").exists()
    assert json.loads((out / "pack.json").read_text())["status"] == "ok"
    import onnxruntime as ort

    inputs = {i.name: i.shape for i in ort.InferenceSession(str(out / "model.onnx")).get_inputs()}
    assert feeds.load_tables(out / "model.onnx", inputs)  # the tables are the ones tasks.json records
