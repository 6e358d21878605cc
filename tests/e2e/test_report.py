"""`edgevp report`: files are produced, non-empty, and the table reflects the runs."""
from __future__ import annotations

import json

from typer.testing import CliRunner

from edgevp.cli import app
from edgevp.condense.pc import PCOptions, condense_pc
from edgevp.report import pareto_front
from edgevp.train import fit

from ..conftest import tiny_config


def test_pareto_front():
    pts = [(1.0, 70.0), (2.0, 80.0), (2.5, 75.0), (3.0, 80.0), (0.5, 60.0)]
    assert pareto_front(pts) == [0, 1, 4]


def test_report_across_runs(tmp_path):
    lin, vpt = tmp_path / "lin", tmp_path / "vpt"
    fit(tiny_config("linear", train={"epochs": 2}), out=lin)
    fit(tiny_config("vpt", {"num_tokens": 4}, train={"epochs": 2}), out=vpt)
    condense_pc(vpt, tmp_path / "pc", PCOptions(keep=0.5, finetune_epochs=1))
    (vpt / "profile").mkdir()
    (vpt / "profile" / "profile.json").write_text(json.dumps({
        "reference": "bare", "conditions": {"model": {"backend": "ort"}},
        "rows": [{"variant": "bare", "batch": 1, "p50_ms": 2.0, "ratio_p50": 1.0},
                 {"variant": "model", "batch": 1, "p50_ms": 2.5, "ratio_p50": 1.25, "role": "this run",
                  "ratio_p50_rounds": [1.3, 1.2, 1.25]},
                 # one profile may also measure another run's deployed artifact (the demo measures all in one)
                 {"variant": "lin (deployed)", "batch": 1, "p50_ms": 2.1, "ratio_p50": 1.05, "macs": 7e6,
                  "artifact": str(lin / "export" / "model.onnx")},
                 {"variant": "elsewhere", "batch": 1, "p50_ms": 9.0, "ratio_p50": 4.5,
                  "artifact": str(tmp_path / "pc" / "export" / "other.onnx")}]}))
    out = tmp_path / "report"
    r = CliRunner().invoke(app, ["report", str(lin), str(vpt), str(tmp_path / "pc"), str(tmp_path / "report.md"),
                                 "--out", str(out)])
    assert r.exit_code == 0, r.output
    rows = json.loads((out / "summary.json").read_text())
    assert [x["method"] for x in rows] == ["linear", "vpt", "vpt-pc"]
    assert rows[1]["latency_ratio"] == 1.25 and rows[2]["prompts_kept"] == "12/24"
    assert rows[0]["latency_ratio"] == 1.05 and rows[0]["deployed_gmacs"] == 7e-3 and "latency_ratio" not in rows[2]
    assert rows[0]["mac_ratio"] == 1.0 and rows[1]["mac_ratio"] > rows[2]["mac_ratio"] > 1.0
    for f in ("report.md", "summary.csv", "pareto.csv", "pareto.png", "curves.csv", "curves.png",
              "keep_heatmap-pc.csv", "keep_heatmap-pc.png"):
        assert (out / f).stat().st_size > 0, f
    md = (out / "report.md").read_text()
    assert "| vpt-pc | 12/24 |" in md and "(pareto.png)" in md and "| 1.250 | 1.200–1.300 |" in md


def test_report_of_a_non_run_fails_cleanly(tmp_path):
    r = CliRunner().invoke(app, ["report", str(tmp_path), "--out", str(tmp_path / "o")])
    assert r.exit_code == 6 and "not an edgevp run directory" in r.output


def test_a_profile_taken_on_the_device_merges_by_sha256(tmp_path, run_cache):
    """An engine profiled on the device (paths of its own) finds its run through the ONNX it was built from."""
    from edgevp.export.pipeline import ExportOptions, export_run
    from edgevp.io import sha256_file
    from edgevp.profile.compare import artifact_cost

    run = run_cache.get("lorvp_r2", tmp_path / "lor")
    export_run(run, ExportOptions())
    onnx_sha = sha256_file(run / "export" / "model.onnx")
    engine = tmp_path / "device" / "model.engine"  # as `edgevp profile` sees it on the device
    engine.parent.mkdir()
    engine.write_bytes(b"engine")
    engine.with_suffix(".json").write_text(json.dumps({"onnx_sha256": onnx_sha, "tensorrt_version": "10.3.0"}))
    cost = artifact_cost(str(engine))
    assert cost["onnx_sha256"] == onnx_sha and cost["sha256"] == sha256_file(engine)
    device_profile = tmp_path / "device" / "profile.json"
    device_profile.write_text(json.dumps({
        "reference": "bare", "machine": {"gpu": "Orin (nvgpu)"}, "conditions": {"engine": {"backend": "trt"}},
        "rows": [{"variant": "bare", "batch": 1, "p50_ms": 2.0, "ratio_p50": 1.0, "sha256": "0" * 64},
                 {"variant": "engine", "batch": 1, "p50_ms": 2.2, "ratio_p50": 1.1, "artifact": str(engine), **cost}]}))
    out = tmp_path / "report"
    r = CliRunner().invoke(app, ["report", str(run), "--profile", str(device_profile), "--out", str(out)])
    assert r.exit_code == 0, r.output
    (row,) = json.loads((out / "summary.json").read_text())
    assert row["latency_ratio"] == 1.1 and row["latency_on"] == "trt, Orin (nvgpu)"
    junk = tmp_path / "junk.json"
    junk.write_text("[]")
    r = CliRunner().invoke(app, ["report", str(run), "--profile", str(junk), "--out", str(out)])
    assert r.exit_code == 6 and "not a readable edgevp profile.json" in r.output
