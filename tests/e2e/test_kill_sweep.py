"""A real `edgevp sweep` killed with SIGKILL again and again, each mid-trial: the same command again fails the dead
trial and runs it again, every point completes exactly once, and no file under the sweep is partial."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from ..support import assert_nothing_partial, edgevp, kill_after

SWEEP_RECIPE = str(Path(__file__).parents[2] / "recipes" / "tiny" / "linear.yaml")
SWEEP = ["sweep", SWEEP_RECIPE, "--grid", "train.lr=0.01,0.003", "--grid", "train.weight_decay=0,1e-4",
         "--heartbeat", "1", "--grace", "2", "-s", "train.epochs=2", "-s", "data.limit_train=64", "-s",
         "data.limit_val=32", "-s", "data.limit_test=32", "-s", "train.threads=1", "-s", "train.ckpt_every_steps=1"]


def test_sweep_killed_again_and_again_resumes_and_runs_every_point_once(tmp_path):
    """A 4-point sweep killed three times, each as a trial that process started writes its first checkpoint (the
    first process in its first trial; the others after they failed the dead trial and took a new one); after each
    kill no file under the sweep is partial. The same command then fails the last dead trial, runs what is left,
    and every point has completed exactly once."""
    optuna = pytest.importorskip("optuna")
    out = tmp_path / "sweep"
    args = [*SWEEP, "-o", str(out)]

    def trials() -> set:
        return set((out / "trials").glob("*")) if (out / "trials").is_dir() else set()

    def checkpointed(old: set):
        """A watch: a trial this process started has written a checkpoint (it is mid-training)."""
        return lambda: any(any((t / "checkpoints").glob("*.safetensors")) for t in trials() - old)

    codes = []
    for _ in range(3):
        codes.append(kill_after(args, 0.0, watch=checkpointed(trials())))
        assert_nothing_partial(out)
    assert codes == [-9] * 3, codes  # every kill landed mid-sweep
    r = edgevp(*args)
    assert r.returncode == 0, r.stderr
    assert_nothing_partial(out)
    assert not [p for p in out.rglob("*.tmp")]
    study = optuna.load_study(study_name="tiny-linear", storage=f"sqlite:///{out / 'study.db'}")
    done = sorted((t.params["train.lr"], t.params["train.weight_decay"]) for t in study.trials
                  if t.state.name == "COMPLETE")
    assert done == sorted((lr, wd) for lr in (0.01, 0.003) for wd in (0.0, 1e-4))  # each point once
    assert not [t for t in study.trials if t.state.name == "RUNNING"]
    assert len([t for t in study.trials if t.state.name == "FAIL"]) >= 3  # each killed trial was failed, then rerun
    assert json.loads((out / "sweep.json").read_text())["counts"]["COMPLETE"] == 4
