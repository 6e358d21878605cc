"""A real `edgevp sweep` killed with SIGKILL at seeded random points: the same command again fails the dead trial
and runs it again, every point completes exactly once, and no file under the sweep is partial."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from ..support import assert_nothing_partial, edgevp, kill_after

SWEEP_RECIPE = str(Path(__file__).parents[2] / "recipes" / "tiny" / "linear.yaml")
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
    kill_after(args, random.Random(300 + seed).uniform(0.0, 8.0), watch=out / "study.db")
    assert_nothing_partial(out)
    r = edgevp(*args)
    assert r.returncode == 0, r.stderr
    assert_nothing_partial(out)
    assert not [p for p in out.rglob("*.tmp")]
    trials = optuna.load_study(study_name="tiny-linear", storage=f"sqlite:///{out / 'study.db'}").trials
    done = sorted((t.params["train.lr"], t.params["train.weight_decay"]) for t in trials if t.state.name == "COMPLETE")
    assert done == sorted((lr, wd) for lr in (0.01, 0.003) for wd in (0.0, 1e-4))  # each point once
    assert not [t for t in trials if t.state.name == "RUNNING"]
    assert json.loads((out / "sweep.json").read_text())["counts"]["COMPLETE"] == 4
