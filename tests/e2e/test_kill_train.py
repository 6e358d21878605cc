"""A real `edgevp train` process killed with SIGKILL at seeded random points, again and again (each resumed process
is killed too), leaves a run that resumes to the uninterrupted result bit for bit, or, killed before its first
checkpoint, one that the same command starts over; never a file that looks valid but is partial."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from safetensors.torch import load_file

from ..support import assert_nothing_partial, edgevp, kill_after

RECIPE = str(Path(__file__).parents[2] / "recipes" / "tiny" / "vpt_deep.yaml")
SETS = ["-s", "train.epochs=2", "-s", "data.limit_train=192", "-s", "train.ckpt_every_steps=1", "-s",
        "train.threads=1"]
KILLS = 6


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("kill") / "reference"
    r = edgevp("train", RECIPE, "-o", out, *SETS)
    assert r.returncode == 0, r.stderr
    return load_file(str(out / "checkpoints" / "best.safetensors"))


def _completed(run: Path) -> bool:
    manifest = run / "manifest.json"
    return manifest.is_file() and json.loads(manifest.read_text())["stages"][-1]["status"] == "completed"


STEPS = 12  # 2 epochs of 192 images in batches of 32, a checkpoint after every step


def _step(resume: Path) -> int:
    """The last checkpointed step (-1 before the first checkpoint)."""
    import torch

    try:
        return torch.load(resume, map_location="cpu", weights_only=False)["progress"]["global_step"]
    except (FileNotFoundError, EOFError, RuntimeError):
        return -1


def _checkpoints_written(resume: Path, count: int):
    """True once this process has replaced `resume` `count` times (it checkpoints after every step)."""
    seen = {"mtime": resume.stat().st_mtime_ns if resume.exists() else None, "n": 0}

    def done() -> bool:
        try:
            mtime = resume.stat().st_mtime_ns
        except FileNotFoundError:
            return False
        if mtime != seen["mtime"]:
            seen["mtime"], seen["n"] = mtime, seen["n"] + 1
        return seen["n"] >= count
    return done


def _kill_points(seed: int) -> list[int]:
    """How many checkpoints each killed process writes before its kill (0: killed before its first one)."""
    rng = random.Random(seed)
    return [0, *(rng.randint(1, 3) for _ in range(KILLS // 2 - 1))] if seed == 0 else \
        [rng.randint(1, 3) for _ in range(KILLS // 2)]


@pytest.mark.parametrize("seed", range(2))
def test_training_killed_again_and_again_resumes_to_the_uninterrupted_result(reference, tmp_path, seed):
    run, rng = tmp_path / "run", random.Random(100 + seed)
    resume, fresh = run / "checkpoints" / "resume.pt", ["train", RECIPE, "-o", run, *SETS]
    steps = []
    for point in _kill_points(seed):
        args = ["train", "--resume", run] if resume.is_file() else fresh  # before a checkpoint: start over
        if point == 0:
            kill_after(args, rng.uniform(0.0, 0.02), watch=run / "manifest.json")  # still loading data
        else:  # within a few milliseconds of its `point`-th checkpoint: inside the next step or a write
            kill_after(args, rng.uniform(0.0, 0.03), watch=_checkpoints_written(resume, point))
        assert_nothing_partial(run)
        steps.append(_step(resume))
    assert not _completed(run) and steps == sorted(steps) and steps[-1] < STEPS, steps  # each kill mid-training
    assert (steps[0] == -1) == (seed == 0), steps  # seed 0 is killed before its first checkpoint and starts over
    r = edgevp("train", "--resume", run) if resume.is_file() else edgevp(*fresh)
    assert r.returncode == 0, r.stderr
    got = load_file(str(run / "checkpoints" / "best.safetensors"))
    assert got.keys() == reference.keys() and all((got[k] == reference[k]).all() for k in got)
    assert not list(run.rglob("*.tmp"))  # no temporary file is left after the re-run
    assert _completed(run)
