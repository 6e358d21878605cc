"""`edgevp report` with `edgevp pack` directories among its arguments (issue 10): one row per task plus the shared
cost, in report.md ("Multi-task packs") and packs.csv, next to the unchanged run table; torch-free."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgevp.cli import app
from edgevp.export.pipeline import ExportOptions, export_run
from edgevp.multitask.pipeline import PackOptions, pack



@pytest.fixture(scope="module")
def packed(tmp_path_factory, run_cache) -> tuple[Path, Path, Path]:
    """Two tiny runs on the same (seeded, random) backbone, exported, packed: (run a, run b, pack)."""
    root = tmp_path_factory.mktemp("report_pack")
    a, b = run_cache.get("vpt2", root / "vpt"), run_cache.get("lorvp", root / "lorvp")
    for r in (a, b):
        export_run(r, ExportOptions(exporter="legacy"))
    pack([a, b], root / "pack", PackOptions(gate_images=8))
    return a, b, root / "pack"


def _report(tmp_path: Path, *args) -> tuple[str, list[dict]]:
    out = tmp_path / "report"
    r = CliRunner().invoke(app, ["report", *map(str, args), "-o", str(out)])
    assert r.exit_code == 0, r.output
    with open(out / "packs.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return (out / "report.md").read_text(), rows


def test_report_shows_a_pack_per_task_and_shared(packed, tmp_path):
    from edgevp.profile.onnx_macs import graph_cost

    a, b, pk = packed
    md, rows = _report(tmp_path, a, b, pk)
    # the run table is unchanged: one row per run, the pack is no run
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert [s["run"] for s in summary] == ["vpt", "lorvp"]
    assert "| vpt | all |" in md and "## Multi-task packs" in md

    side = json.loads((pk / "pack.json").read_text())
    tasks, shared = [r for r in rows if r["row"] == "task"], [r for r in rows if r["row"] == "shared"]
    assert len(tasks) == 2 and len(shared) == 1
    for t, par, run in zip(tasks, side["parity"]["per_task"], (a, b)):
        man = json.loads((run / "manifest.json").read_text())
        assert (t["task"], t["run"], t["classes"]) == (str(par["task"]), run.name, "10")
        assert float(t["top1_pack"]) == par["top1_pack"] and float(t["top1_own_export"]) == par["top1_own_export"]
        assert float(t["max_abs"]) == par["max_abs"] and t["gate_images"] == "8"
        assert float(t["test_top1"]) == man["train_info"]["test_top1"]  # the run is in the report
    assert [t["method"] for t in tasks] == ["vpt", "lorvp"]

    (s,) = shared
    size = (pk / "model.onnx").stat().st_size + ((pk / "tables.npz").stat().st_size
                                                 if (pk / "tables.npz").is_file() else 0)
    separate = sum((r / "export" / "model.onnx").stat().st_size for r in (a, b))
    assert int(s["artifact_bytes"]) == size and int(s["separate_bytes"]) == separate
    assert float(s["size_ratio"]) == pytest.approx(size / separate) and s["status"] == "ok"
    assert float(s["gmacs"]) == pytest.approx(graph_cost(pk / "model.onnx").macs / 1e9)
    assert s["latency_p50_ms"] == ""  # not profiled
    lines = md.splitlines()
    table = [ln for ln in lines[lines.index("## Multi-task packs"):] if ln.startswith("| ")]
    assert [ln.split(" | ")[0] for ln in table] == ["| task", "| 0", "| 1", "| shared"]
    assert f"| {size:,} (" in table[-1] and f"{size / separate:.3f}×" in table[-1] and f"{separate:,}" in table[-1]


def test_pack_alone_without_its_runs(packed, tmp_path):
    """Without its runs among the arguments: no test top-1, but the separate exports are still found by path."""
    a, b, pk = packed
    md, rows = _report(tmp_path, pk)
    assert not (tmp_path / "report" / "summary.json").exists() and "## Multi-task packs" in md
    assert [r["test_top1"] for r in rows if r["row"] == "task"] == ["", ""]
    (s,) = [r for r in rows if r["row"] == "shared"]
    assert int(s["separate_bytes"]) == sum((r / "export" / "model.onnx").stat().st_size for r in (a, b))


def test_failed_pack_shows_its_status_and_profile_latency(packed, tmp_path):
    a, b, pk = packed
    bad = tmp_path / "bad"
    shutil.copytree(pk, bad)
    side = json.loads((bad / "pack.json").read_text())
    (bad / "pack.json").write_text(json.dumps({**side, "status": "failed"}))
    (bad / "profile").mkdir()
    row = {"variant": "model", "ratio_p50": 1.0, "artifact": str(bad / "model.onnx") + "#task=1"}
    (bad / "profile" / "profile.json").write_text(json.dumps({
        "reference": "model", "conditions": {"model": {"backend": "ort"}}, "machine": {"cpu": "test cpu"},
        "rows": [{**row, "batch": 4, "p50_ms": 9.0}, {**row, "batch": 1, "p50_ms": 3.5}]}))
    md, rows = _report(tmp_path, a, pk, bad)
    assert "### bad (onnx, status failed)" in md and "| shared | 2 tasks | status failed |" in md
    assert "### pack (onnx, status ok)" in md
    shared = {r["pack"]: r for r in rows if r["row"] == "shared"}
    assert shared["bad"]["status"] == "failed" and shared["pack"]["status"] == "ok"
    assert {r["status"] for r in rows if r["row"] == "task" and r["pack"] == "bad"} == {"failed"}
    assert (float(shared["bad"]["latency_p50_ms"]), shared["bad"]["latency_batch"],
            shared["bad"]["latency_task"]) == (3.5, "1", "1")
    assert "3.50 (batch 1, task 1, ort, test cpu)" in md
    # only run a is in the report: its test top-1 shows, b's does not
    assert [r["test_top1"] != "" for r in rows if r["row"] == "task" and r["pack"] == "pack"] == [True, False]


def test_report_of_a_pack_without_torch(packed, tmp_path, no_torch_env):
    """The device side reports a pack with imports of torch, timm and torchvision refused (as on a Jetson)."""
    from .test_device_side import _edgevp

    a, b, pk = packed
    r = _edgevp(no_torch_env, "report", a, b, pk, "-o", tmp_path / "report")
    assert r.returncode == 0, r.stderr
    assert "## Multi-task packs" in (tmp_path / "report" / "report.md").read_text()
    assert (tmp_path / "report" / "packs.csv").is_file()
