"""Fault tests: a real `edgevp train` / `export` / `pack` / `sweep` process killed with SIGKILL at random points
(seeded) leaves either a run that resumes to the uninterrupted result or one that is cleanly failed and starts over
(a sweep's dead trial is run again), never a file that looks valid but is partial; a re-run cleans up."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

RECIPE = str(Path(__file__).parent.parent / "recipes" / "tiny" / "vpt_deep.yaml")
SETS = ["-s", "train.epochs=2", "-s", "data.limit_train=128", "-s", "train.ckpt_every_steps=1", "-s",
        "train.threads=1"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def _edgevp(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "edgevp", *args], env=ENV, capture_output=True, text=True,
                          timeout=timeout)


def _kill_after(args: list[str], delay: float, watch: Path | None = None) -> int:
    """Start edgevp, wait until `watch` exists (the work has begun) plus `delay` seconds, then SIGKILL it."""
    p = subprocess.Popen([sys.executable, "-m", "edgevp", *args], env=ENV, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    t0 = time.time()
    while watch is not None and not watch.exists() and p.poll() is None and time.time() - t0 < 120:
        time.sleep(0.02)
    time.sleep(delay)
    p.send_signal(signal.SIGKILL)
    return p.wait()


def _assert_nothing_partial(run: Path) -> None:
    """Every file that has its final name is whole: JSON parses, checkpoints load, no temp file looks final."""
    for f in run.rglob("*"):
        if not f.is_file():
            continue
        if f.suffix == ".json":
            json.loads(f.read_text())
        elif f.suffix == ".safetensors":
            load_file(str(f))
        elif f.name == "metrics.jsonl":
            for line in f.read_text().splitlines():
                json.loads(line)
        elif f.suffix == ".onnx":
            import onnx

            onnx.checker.check_model(str(f))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("kill") / "reference"
    r = _edgevp("train", RECIPE, "-o", str(out), *SETS)
    assert r.returncode == 0, r.stderr
    return load_file(str(out / "checkpoints" / "best.safetensors"))


@pytest.mark.parametrize("seed", range(6))
def test_killed_training_resumes_to_the_same_result_or_starts_over(reference, tmp_path, seed):
    run = tmp_path / "run"
    delay = random.Random(seed).uniform(0.0, 2.5)
    _kill_after(["train", RECIPE, "-o", str(run), *SETS], delay, watch=run / "manifest.json")
    _assert_nothing_partial(run)
    if (run / "checkpoints" / "resume.pt").is_file():
        r = _edgevp("train", "--resume", str(run))
    else:  # killed before the first checkpoint: the same command starts it over
        r = _edgevp("train", RECIPE, "-o", str(run), *SETS)
    assert r.returncode == 0, r.stderr
    got = load_file(str(run / "checkpoints" / "best.safetensors"))
    assert got.keys() == reference.keys() and all((got[k] == reference[k]).all() for k in got)
    assert not [p for p in run.rglob("*.tmp")]  # no temporary file is left after the re-run
    assert json.loads((run / "manifest.json").read_text())["stages"][-1]["status"] == "completed"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("kill_export") / "run"
    r = _edgevp("train", RECIPE, "-o", str(out), "-s", "train.epochs=1")
    assert r.returncode == 0, r.stderr
    return out


@pytest.mark.parametrize("seed", range(4))
def test_killed_export_leaves_no_valid_looking_partial_artifact(trained, tmp_path, seed):
    out = tmp_path / "export"
    delay = random.Random(100 + seed).uniform(0.0, 4.0)
    _kill_after(["export", str(trained), "-o", str(out), "--exporter", "legacy"], delay, watch=out)
    _assert_nothing_partial(out)
    if (out / "model.json").is_file():  # a sidecar is written only after its artifacts passed the gate
        assert json.loads((out / "model.json").read_text())["status"] == "ok" and (out / "model.onnx").is_file()
    r = _edgevp("export", str(trained), "-o", str(out), "--exporter", "legacy")
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
    _kill_after(args, random.Random(200 + seed).uniform(0.0, 4.0), watch=out)
    for folder in (out, trained / "export"):
        if folder.exists():
            _assert_nothing_partial(folder)
    if (out / "pack.json").is_file():  # written only after the pack passed its gate
        assert json.loads((out / "pack.json").read_text())["status"] == "ok" and (out / "model.onnx").is_file()
    r = _edgevp(*args)
    assert r.returncode == 0, r.stderr
    assert not list(out.glob(".pack-*")) and not (out / ".edgevp.lock").exists()
    assert json.loads((out / "pack.json").read_text())["status"] == "ok"
    import onnxruntime as ort

    inputs = {i.name: i.shape for i in ort.InferenceSession(str(out / "model.onnx")).get_inputs()}
    assert feeds.load_tables(out / "model.onnx", inputs)  # the tables are the ones tasks.json records


SWEEP_RECIPE = str(Path(__file__).parent.parent / "recipes" / "tiny" / "linear.yaml")
SWEEP = ["sweep", SWEEP_RECIPE, "--grid", "train.lr=0.01,0.003", "--grid", "train.weight_decay=0,1e-4",
         "--heartbeat", "1", "--grace", "2", "-s", "train.epochs=2", "-s", "data.limit_train=64", "-s",
         "data.limit_val=32", "-s", "data.limit_test=32", "-s", "train.threads=1", "-s", "train.ckpt_every_steps=1"]


@pytest.mark.parametrize("seed", range(3))
def test_killed_sweep_resumes_and_runs_every_point_once(tmp_path, seed):
    """kill -9 at a random point of a 4-point sweep, then the same command: the dead trial is failed and run again,
    every point completes exactly once, and no file under the sweep is partial."""
    optuna = pytest.importorskip("optuna")
    out = tmp_path / "sweep"
    args = [*SWEEP, "-o", str(out)]
    _kill_after(args, random.Random(300 + seed).uniform(0.0, 8.0), watch=out / "study.db")
    _assert_nothing_partial(out)
    r = _edgevp(*args)
    assert r.returncode == 0, r.stderr
    _assert_nothing_partial(out)
    assert not [p for p in out.rglob("*.tmp")]
    trials = optuna.load_study(study_name="tiny-linear", storage=f"sqlite:///{out / 'study.db'}").trials
    done = sorted((t.params["train.lr"], t.params["train.weight_decay"]) for t in trials if t.state.name == "COMPLETE")
    assert done == sorted((lr, wd) for lr in (0.01, 0.003) for wd in (0.0, 1e-4))  # each point once
    assert not [t for t in trials if t.state.name == "RUNNING"]
    assert json.loads((out / "sweep.json").read_text())["counts"]["COMPLETE"] == 4
