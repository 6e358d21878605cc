"""The checkpoint/resume side of training: a new run's directory (one that failed before its first checkpoint is
started over), a resumed run's config and state, the data checked against what the run started on, and the
checkpoints and resume state written while training and restored on resume.

The resume state (RUN/checkpoints/resume.pt) holds the method+head tensors, the optimizer state, the torch RNG state
and `progress` (the dict of `new_progress`), so that an interrupted run resumes to the same result.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .checkpoints import load_resume, save_checkpoint, save_resume
from .config import RunConfig
from .console import Reporter
from .data import Splits
from .errors import IncompatibleError
from .images import check_images, content_sha256, dataset_change
from .prompts.base import PromptedModel
from .runs import RunDir


def start_over(path: Path, overwrite: bool, rep: Reporter | None) -> None:
    """Let a new run start in `path`: refuse a run with something to keep, clear a failed one without checkpoints."""
    old = RunDir(path)
    if not old.manifest_path.exists():
        return
    stages = [s for s in old.manifest().get("stages", []) if s.get("name") == "train"] if not overwrite else []
    # nothing to resume (a run that stopped before its first resume state, a full disk included): started over
    failed_empty = not old.resume_path.is_file() and (not stages or stages[-1].get("status") != "completed")
    if not (overwrite or failed_empty):
        raise IncompatibleError(f"run directory '{path}' already exists",
                                f"resume it: --resume {path}; or start it over: --overwrite")
    (rep or Reporter()).log(f"{'overwriting' if overwrite else 'starting again in'} '{path}' "
                            f"({'--overwrite' if overwrite else 'it failed before its first checkpoint'})")
    old.clear()


def check_same_data(run: RunDir, splits: Splits) -> None:
    """Refuse to resume on a dataset whose files changed since the run started (exit 6, saying what changed); files
    with the same names and sizes but other mtimes (a copy) are compared by content."""
    before, source = (run.manifest().get("inputs") or {}).get("data") or {}, splits.source
    what = None
    if "fingerprint" in before:
        what = dataset_change(before["fingerprint"], source.get("fingerprint") or {}, splits.files,
                              source.get("root"))
    if what is None and "sha256" in before and before["sha256"] != source.get("sha256"):
        what = "the dataset files' sha256 differ"
    if what is not None:
        raise IncompatibleError(f"the dataset of run '{run.path}' changed since it started: {what}",
                                "restore the data, or start a new run")


def read_resume(path: Path) -> tuple[RunConfig, dict]:
    """The config and resume state of run `path`."""
    run = RunDir(path)
    cfg = run.config()
    state = load_resume(run)
    if state is None:
        raise IncompatibleError(f"run '{run.path}' has no resume state (it stopped before its first checkpoint)",
                                f"start it again: edgevp train RECIPE -o {run.path} (a run without checkpoints "
                                "is started over)")
    return cfg, state


def check_data(path: Path, resuming: bool, splits: Splits, reporter: Reporter | None) -> None:
    """Before training: the same dataset as the run started on (resume), and every image file decodes."""
    if resuming:
        check_same_data(RunDir(path), splits)
    if splits.image_paths():  # every image decoded once before the first step (cached by path, size and mtime)
        checked, cached = check_images(splits.image_paths())
        (reporter or Reporter()).log(f"checked {checked} images ({cached} unchanged since an earlier check)")
    if not resuming and "fingerprint" in splits.source:  # what a resume on a copy of the data compares
        splits.source["fingerprint"]["content_sha256"] = content_sha256(splits.files, splits.source.get("root"))


def new_progress() -> dict:
    """Where a new run starts; a resume state carries its own (the `progress` of RUN/checkpoints/resume.pt)."""
    return {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "best_top1": -1.0, "best_epoch": -1,
            "train_sums": [0.0, 0, 0], "seconds": 0.0}


class Checkpoints:
    """A run's prompt checkpoints and resume state while it trains: written by rank 0 (`main`), restored on every
    rank."""

    def __init__(self, run: RunDir, cfg: RunConfig, model: PromptedModel, num_classes: int,
                 optimizer: torch.optim.Optimizer, main: bool):
        self.run, self.cfg, self.model, self.num_classes = run, cfg, model, num_classes
        self.optimizer, self.main = optimizer, main

    def restore(self, state: dict | None, rep: Reporter) -> dict:
        """The progress to start from: a new run's, or resume state `state`'s with the tensors, the optimizer and the
        RNG restored and metrics.jsonl cut back to the epochs before it."""
        if state is None:
            return new_progress()
        self.model.load_trainable_state(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        start = state["progress"]
        if self.main:
            self.run.keep_epochs_before(start["epoch"])
        epochs = self.cfg.train.epochs
        if start["epoch"] >= epochs:
            rep.log(f"run '{self.run.path}' already finished its {epochs} epochs; nothing left to train")
        else:
            rep.log(f"resuming at epoch {start['epoch'] + 1} step {start['step_in_epoch']}")
        return start

    def save_weights(self, which: str, epoch: int, **meta) -> None:
        """RUN/checkpoints/`which`.safetensors (rank 0)."""
        if self.main:
            save_checkpoint(self.run.checkpoint(which), self.model.trainable_state(), self.cfg,
                            num_classes=self.num_classes, epoch=epoch, **meta)

    def save_last(self, progress: dict) -> None:
        """The last checkpoint and the resume state at `progress` (rank 0)."""
        if not self.main:
            return
        self.save_weights("last", progress["epoch"])
        save_resume(self.run, {"model": self.model.trainable_state(), "optimizer": self.optimizer.state_dict(),
                               "torch_rng": torch.get_rng_state(), "progress": dict(progress)})
