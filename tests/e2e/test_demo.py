"""The README's main job, on a tiny backbone so it runs in seconds (the real one uses the offline DINOv2)."""
from __future__ import annotations

import json

from typer.testing import CliRunner

from edgevp.cli import app

TINY = ["backbone.name=test_vit", "backbone.weights=none", "backbone.img_size=32", "data.name=digits",
        "data.limit_train=96", "data.limit_val=32", "data.limit_test=32", "train.epochs=1"]


def test_demo_trains_every_method_and_writes_the_comparison(tmp_path):
    args = ["demo", "--out", str(tmp_path), "--methods", "linear,lorvp,vpt_deep"]
    for s in TINY:
        args += ["-s", s]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    (root,) = list(tmp_path.iterdir())
    rows = json.loads((root / "summary.json").read_text())
    assert [row["method"] for row in rows] == ["linear", "lorvp", "vpt_deep", "vpt_deep+pc30 (18/60)"]
    assert rows[3]["gmacs"] < rows[2]["gmacs"] and rows[0]["gmacs"] == rows[1]["gmacs"] < rows[3]["gmacs"]
    assert rows[0]["prompt_params"] == 0 and rows[1]["prompt_params"] == 6 * 32 * 4
    assert "| vpt_deep |" in r.output and "the linear probe:" in r.output
    assert (root / "summary.md").read_text().startswith("| method |")
    for run in ("linear", "lorvp", "vpt_deep", "vpt_deep-pc30"):  # export step: every run, parity-gated
        assert json.loads((root / run / "export" / "model.json").read_text())["status"] == "ok"
    profile = json.loads((root / "vpt_deep-pc30" / "profile" / "profile.json").read_text())  # profile step
    assert [row["variant"] for row in profile["rows"]] == [
        "bare backbone", "unfolded prompts", "uncondensed source (folded)", "folded (this run)", "linear (deployed)",
        "lorvp (folded)"]
    assert all(row["backend"] == "ort" for row in profile["conditions"].values())
    report = json.loads((root / "report" / "summary.json").read_text())
    assert all(row["latency_ratio"] > 0 for row in report)  # every run's deployed latency reaches the report
    assert (root / "report" / "report.md").is_file() and (root / "report" / "pareto.png").is_file()  # report step
    assert "p50 ratio" in r.output and "report:" in r.output
    pack = json.loads((root / "pack" / "pack.json").read_text())  # pack step: a second task, every run in one graph
    assert pack["status"] == "ok" and [t["run"] for t in pack["tasks"]] == [
        "linear", "lorvp", "vpt_deep", "vpt_deep-pc30", "groups-lorvp"]
    assert all(p["top1_pack"] == p["top1_own_export"] and p["images"] == 32 for p in pack["parity"]["per_task"])
    assert "one pack:" in r.output and "| groups-lorvp |" in r.output


def test_demo_rejects_unknown_methods(tmp_path):
    r = CliRunner().invoke(app, ["demo", "--out", str(tmp_path), "--methods", "linear,foo"])
    assert r.exit_code == 2 and "no demo recipe for foo" in r.output
