"""Sweeps on Optuna (`edgevp sweep`): every grid point runs exactly once (one worker, two worker processes sharing a
SQLite study, a worker killed mid-trial), pruning marks a trial pruned, --final retrains on train+val, the report
draws the grid, and bad input is one line + exit code with nothing created."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

optuna = pytest.importorskip("optuna")

from edgevp.cli import app  # noqa: E402
from edgevp.console import Reporter  # noqa: E402
from edgevp.report import write_report  # noqa: E402
from edgevp.runs import RunDir  # noqa: E402
from edgevp.sweep import SweepOptions, run_sweep  # noqa: E402

from ..conftest import RECIPES  # noqa: E402

RECIPE = str(Path(RECIPES, "tiny", "linear.yaml"))
SETS = ["train.epochs=1", "data.limit_train=64", "data.limit_val=32", "data.limit_test=32", "train.threads=1"]
GRID = ["train.lr=0.01,0.003", "train.weight_decay=0,1e-4"]
POINTS = {(lr, wd) for lr in (0.01, 0.003) for wd in (0.0, 1e-4)}
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
runner = CliRunner()


def _cli_args(out: Path, grid=GRID, sets=SETS, *extra: str) -> list[str]:
    args = ["sweep", RECIPE, "-o", str(out)]
    for g in grid:
        args += ["--grid", g]
    for s in sets:
        args += ["-s", s]
    return args + list(extra)


def _study(out: Path, name: str = "tiny-linear"):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{out / 'study.db'}")


def _points(trials, state: str = "COMPLETE") -> list[tuple]:
    return [(t.params["train.lr"], t.params.get("train.weight_decay")) for t in trials if t.state.name == state]


def test_grid_runs_every_point_once_then_final_on_train_val_and_a_report_heat_map(tmp_path):
    out = tmp_path / "sweep"
    doc = run_sweep(RECIPE, SweepOptions(grid=GRID, final=True), SETS, out, Reporter(quiet=True))
    saved = json.loads((out / "sweep.json").read_text())
    assert saved["counts"] == {"COMPLETE": 4} and doc["counts"] == saved["counts"]
    assert sorted(_points(_study(out).trials)) == sorted(POINTS)
    for t in saved["trials"]:  # each trial an ordinary run directory with its params in the manifest
        m = RunDir(out / t["run_dir"]).manifest()
        assert m["inputs"]["sweep"]["params"] == t["params"] and m["stages"][-1]["status"] == "completed"
        assert m["inputs"]["split_sizes"]["train"] == 64
        metrics = RunDir(out / t["run_dir"]).metrics()
        assert t["value"] == max(r["val_top1"] for r in metrics)
    best = max(saved["trials"], key=lambda t: t["value"])
    assert saved["best"]["value"] == best["value"]
    final = saved["final"]
    fm = RunDir(out / "final").manifest()
    sizes = fm["inputs"]["split_sizes"]
    assert sizes["train"] == 64 + 32 and sizes["val"] == 32  # train+val of the trials, val kept for monitoring
    assert final["params"] == saved["best"]["params"] == fm["inputs"]["sweep"]["params"]
    assert final["test_top1"] == fm["train_info"]["test_top1"] is not None
    assert RunDir(out / "final").config().train.lr == saved["best"]["params"]["train.lr"]
    assert "Final" in (out / "summary.md").read_text()

    md, _ = write_report([out], tmp_path / "report")
    text = md.read_text()
    assert f"Best trial: {saved['best']['number']}" in text and "train.lr \\ train.weight_decay" in text
    rows = (tmp_path / "report" / "sweep_heatmap-sweep.csv").read_text().splitlines()
    cells = {(float(r.split(",")[0]), float(c)): float(v) for r in rows[1:]
             for c, v in zip(rows[0].split(",")[1:], r.split(",")[1:])}
    assert cells == {(t["params"]["train.lr"], t["params"]["train.weight_decay"]): t["value"] for t in saved["trials"]}
    assert (tmp_path / "report" / "sweep_heatmap-sweep.png").stat().st_size > 0


def test_two_worker_processes_share_one_sqlite_study_and_run_each_point_once(tmp_path):
    out = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "edgevp", "-q", *_cli_args(out)]
    workers = [subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(2)]
    results = [w.communicate(timeout=300) for w in workers]
    assert [w.returncode for w in workers] == [0, 0], results
    trials = _study(out).trials
    assert len(trials) == 4 and all(t.state.name == "COMPLETE" for t in trials)
    assert sorted(_points(trials)) == sorted(POINTS)
    runs = list((out / "trials").iterdir())
    assert len(runs) == 4
    # each run's manifest names the process that created it: both workers took trials from the one study
    writers = {json.loads((r / "manifest.json").read_text())["pid"] for r in runs}
    assert writers == {w.pid for w in workers}


TAKER = """
import sys, optuna
from edgevp.sweep import study as S
from edgevp.sweep.options import SweepOptions
opts = SweepOptions(grid=["train.lr=0.1"])
storage = S.open_storage(sys.argv[1], opts)
study = S.open_study(storage, "queue", {"grid": {}}, [{"x": i} for i in range(30)], opts, None, None)
while (trial_id := S.take_queued(study)) is not None:
    trial = optuna.Trial(study, trial_id)
    study.tell(trial, float(trial.suggest_categorical("x", list(range(30)))))
    print(trial.params["x"])
"""


def test_concurrent_workers_take_each_queued_trial_exactly_once(tmp_path):
    # the core of "every grid point once": three processes race for 30 queued trials on one SQLite file (without
    # BEGIN IMMEDIATE, two of them take the same trial now and then, or fail with "database is locked")
    url = f"sqlite:///{tmp_path / 'study.db'}"
    procs = [subprocess.Popen([sys.executable, "-c", TAKER, url], env=ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0] * 3, [e for _, e in outs]
    taken = [int(x) for o, _ in outs for x in o.split()]
    assert sorted(taken) == list(range(30))


def test_a_killed_worker_s_trial_is_marked_failed_and_run_again(tmp_path):
    out = tmp_path / "sweep"
    grid = ["train.lr=0.01,0.003"]
    sets = [*SETS, "train.epochs=20"]  # time to kill it mid-trial (a trial here takes a fraction of that)
    beat = ["--heartbeat", "1", "--grace", "2"]
    worker = subprocess.Popen([sys.executable, "-m", "edgevp", "-q", *_cli_args(out, grid, sets, *beat)], env=ENV,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    manifest = None
    while worker.poll() is None:  # kill it while its first trial trains
        found = list(out.glob("trials/0-*/manifest.json"))
        if found and json.loads(found[0].read_text())["stages"]:
            manifest = found[0]
            worker.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    assert worker.wait() == -signal.SIGKILL and manifest is not None
    assert _study(out).trials[0].state.name == "RUNNING"  # left behind by the dead worker

    doc = run_sweep(RECIPE, SweepOptions(grid=grid, heartbeat=1, grace=2), sets, out, Reporter(quiet=True))
    trials = {t["number"]: t for t in doc["trials"]}
    dead = trials[0]
    assert dead["state"] == "FAIL" and dead["retried_as"] is not None
    retry = trials[dead["retried_as"]]
    assert retry["state"] == "COMPLETE" and retry["params"] == dead["params"] and retry["retry_of"] == 0
    assert sorted(_points(_study(out).trials)) == [(0.003, None), (0.01, None)]  # nothing lost, nothing twice
    stage = json.loads(manifest.read_text())["stages"][-1]
    assert stage["status"] == "failed" and "heartbeat" in stage["error"]


def test_a_hopeless_trial_is_pruned_not_failed(tmp_path):
    out = tmp_path / "sweep"
    sets = [*SETS, "train.epochs=2", "train.warmup_epochs=0"]
    opts = SweepOptions(grid=["train.lr=0.01,1e-9"], pruner="median", pruner_startup=1)
    doc = run_sweep(RECIPE, opts, sets, out, Reporter(quiet=True))
    states = [t.state.name for t in _study(out).trials]
    assert states == ["COMPLETE", "PRUNED"]
    pruned = doc["trials"][1]
    assert pruned["state"] == "PRUNED" and pruned["pruned_at_epoch"] == 0
    stage = RunDir(out / pruned["run_dir"]).manifest()["stages"][-1]
    assert stage["status"] == "pruned" and "pruned" in stage["error"]
    assert len(RunDir(out / pruned["run_dir"]).metrics()) == 1  # stopped after its first epoch


@pytest.mark.parametrize("grid, extra, code, message", [
    (["train.lrr=0.1,0.01"], [], 2, "unknown config key 'train.lrr' (did you mean 'train.lr'?)"),
    (["train.epochs=2,two"], [], 2, "train.epochs: expected an integer, got 'two'"),
    (["train.lr=0.1"], ["--storage", "sqlite:///{tmp}/no/such/dir/study.db"], 2, "cannot open the sweep storage"),
    (["train.lr=0.1"], ["--storage", "nosuchdb://host/db"], 2, "cannot open the sweep storage 'nosuchdb://host/db'"),
    (["train.lr=0.1"], ["--sampler", "bayes"], 2, "sampler / --sampler: 'bayes' is not one of grid, tpe, random"),
    (["train.lr=0.1"], ["--nproc", "64"], 2, "nproc / --nproc: 64 processes for a global batch of 32"),
])
def test_bad_input_is_one_line_and_nothing_is_created(tmp_path, grid, extra, code, message):
    out = tmp_path / "sweep"
    r = runner.invoke(app, _cli_args(out, grid, SETS, *(e.format(tmp=tmp_path) for e in extra)))
    assert r.exit_code == code, r.output
    assert message in r.output and r.output.count("\n") == 1 and "Traceback" not in r.output
    assert list(tmp_path.iterdir()) == []


def test_an_existing_study_with_another_grid_is_refused(tmp_path):
    out = tmp_path / "sweep"
    sets = [*SETS, "train.epochs=1"]  # a short study to collide with
    run_sweep(RECIPE, SweepOptions(grid=["train.lr=0.01"]), sets, out, Reporter(quiet=True))
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    r = runner.invoke(app, _cli_args(out, ["train.lr=0.5"], sets))
    assert r.exit_code == 6, r.output
    assert "study 'tiny-linear' exists with a different grid" in r.output and r.output.count("\n") == 1
    r = runner.invoke(app, _cli_args(out, ["train.lr=0.01"], [*sets, "train.seed=1"]))
    assert r.exit_code == 6 and "different recipe" in r.output, r.output
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before and len(_study(out).trials) == 1


def test_a_failing_trial_is_reported_and_the_sweep_goes_on(tmp_path):
    out = tmp_path / "sweep"
    sets = [*SETS, "train.optimizer=sgd", "train.warmup_epochs=0"]  # lr 1e38: NaN loss at the second step
    doc = run_sweep(RECIPE, SweepOptions(grid=["train.lr=1e38,0.01"], pruner="none"), sets, out, Reporter(quiet=True))
    failed, done = doc["trials"]
    assert failed["state"] == "FAIL" and "loss became" in failed["error"] and failed["retried_as"] is None
    assert RunDir(out / failed["run_dir"]).manifest()["stages"][-1]["status"] == "failed"
    assert done["state"] == "COMPLETE" and doc["best"]["number"] == done["number"]
    assert "loss became" in (out / "summary.md").read_text()
