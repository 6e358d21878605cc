"""Training: `fit` runs the training loop with `evaluate` after each epoch, checkpointing so that an interrupted run resumes
to the same result (data order, augmentation and dropout are all functions of the seed and the step).

Its seams: `_setup` (config, seeds, data, model, run directory), `_data_parallel`/`_ddp_step` (torchrun), the
checkpoint/resume side in `resume.py`, `_Trainer` (epochs and steps; each epoch's `records.EpochRecord` goes to
metrics.jsonl, the trackers, the log and `on_epoch`) and `_finish` (the test and `records.TrainInfo`)."""
from __future__ import annotations

import contextlib
import math
import os
import random
import resource
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from . import distributed as ddp
from . import tracking
from .checkpoints import read_checkpoint
from .config import RunConfig, TrainConfig, check_epochs
from .console import Reporter
from .cost import model_macs
from .data import EpochSampler, Splits, backbone_transform, load_splits, make_loader
from .errors import EXIT_INTERRUPTED, DataError, DivergedError, EdgevpError
from .evaluation import autocast, evaluator, resolve_device
from .model import build_model, check_model
from .prompts.base import PromptedModel
from .records import EpochRecord, TrainInfo
from .resume import Checkpoints, check_data, read_resume, start_over
from .runs import RunDir, default_run_name, writer_lock


class Interrupted(EdgevpError):
    """Training stopped on request after saving a resumable checkpoint."""

    exit_code = EXIT_INTERRUPTED


class Pruned(EdgevpError):
    """Raised by an `on_epoch` hook to stop a hopeless run (a sweep's pruner); its train stage is marked "pruned"."""


@dataclass
class TrainResult:
    run_dir: Path
    epochs: int
    best_epoch: int
    best_val_top1: float
    test_top1: float | None
    train_seconds: float
    params: dict[str, int]
    macs: int | None = None


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def lr_at(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Linear warm-up then cosine decay to min_lr, stepped per iteration."""
    total = cfg.epochs * steps_per_epoch
    warm = int(cfg.warmup_epochs * steps_per_epoch)
    if step < warm:
        return cfg.lr * (step + 1) / warm
    progress = (step - warm) / max(total - warm, 1)
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def make_optimizer(model: PromptedModel, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for _, p in model.trainable_parameters()]
    if not params:
        raise EdgevpError("nothing to train: the method has no trainable parameters and no head")
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


class _StopFlag:
    """Set by SIGINT/SIGTERM (a second SIGINT interrupts at once) or after `stop_after_steps` steps (tests)."""

    def __init__(self, stop_after_steps: int | None = None):
        self.set = False
        self.stop_after_steps = stop_after_steps
        self._old: dict[int, Any] = {}

    def _handler(self, signum, frame):
        if self.set and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.set = True

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)

    def check(self, steps_done: int) -> bool:
        if self.stop_after_steps is not None and steps_done >= self.stop_after_steps:
            self.set = True
        return self.set


def _peak_mem_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def fit(cfg: RunConfig, out: str | Path | None = None, resume: str | Path | None = None, *, runs_root: str = "runs",
        command: list[str] | None = None, recipe_sha256: str | None = None, reporter: Reporter | None = None,
        stop_after_steps: int | None = None, init_state: dict[str, torch.Tensor] | None = None,
        extra_inputs: dict | None = None, overwrite: bool = False,
        on_epoch: Callable[[dict], None] | None = None) -> TrainResult:
    """Train `cfg` into a new run directory (or continue `resume`); returns the final metrics.

    `init_state` starts from given prompt/head tensors (condensation fine-tunes this way); with it `epochs=0` only
    evaluates and writes the checkpoints, without it `epochs=0` is refused (exit 2). The run directory is locked
    while training (a second writer exits 8).
    An existing run directory is refused unless it failed before writing any checkpoint (it is started again) or
    `overwrite` is set. `on_epoch(record)` is called after each epoch's metrics record is written (a sweep's pruner
    reads it); an exception it raises stops training like any other failure.

    Example:
        >>> result = fit(build_run_config(load_yaml("recipes/dinov2_fmnist/vpt_deep.yaml")), out="runs/vpt")
    """
    if resume is None:  # every check that needs no data, before the run directory or any image is touched
        if init_state is None:
            check_epochs(cfg.train.epochs)
        check_model(cfg)
        ddp.check_batch(cfg.data.batch_size)  # more torchrun ranks than samples in a batch: refused before any work
        tracking.check_available(cfg.train.track)
    ddp.init_from_env()  # under torchrun: join the process group; rank 0 alone touches the run directory
    if resume is not None:
        ddp.on_main(lambda: RunDir(resume).manifest())  # "not a run directory" before anything is created
        path = Path(resume)
    else:
        path = ddp.on_main(lambda: Path(out) if out is not None
                           else Path(runs_root) / (cfg.name or default_run_name(cfg)))
    with contextlib.ExitStack() as lock:
        ddp.on_main(lambda: lock.enter_context(writer_lock(path, create=resume is None)))
        try:
            return _fit(cfg, path, resume is not None, command, recipe_sha256, reporter, stop_after_steps,
                        init_state, extra_inputs, overwrite, on_epoch)
        except BaseException as e:
            if ddp.is_main() and not isinstance(e, Interrupted):
                _record_failure(RunDir(path), e)
            if getattr(e, "collective", False):  # every rank stopped here: the others exit after rank 0 recorded it
                ddp.barrier()
            raise


def _record_failure(run: RunDir, error: BaseException) -> None:
    """A train stage still marked running when training stopped on an error is marked failed with the message."""
    try:
        stages = [s for s in run.manifest().get("stages", []) if s.get("name") == "train"]
    except EdgevpError:
        return  # nothing was created yet
    if stages and stages[-1].get("status") == "running":
        message = error.line() if isinstance(error, EdgevpError) else f"{type(error).__name__}: {error}"
        _mark(run, status="failed", error=message)


def _mark(run: RunDir, **fields) -> None:
    """Record how the train stage ended, where the disk still allows it: the error being raised is the one to show."""
    try:
        run.set_stage("train", **fields)
    except OSError:  # a full disk (DiskFullError is one): the manifest keeps its last whole state
        pass


def _diverged(run: RunDir, loss: float, epoch: int, step: int) -> DivergedError:
    kept = "the last checkpoint is kept" if run.checkpoint("last").is_file() else "no checkpoint was written yet"
    return DivergedError(f"loss became {loss} at epoch {epoch + 1} step {step + 1}",
                         f"lower train.lr or enable train.grad_clip; {kept}")


@dataclass
class _Session:
    """What one training process works with, built by `_setup` before the first step."""

    cfg: RunConfig  # a resumed run's own
    run: RunDir
    model: PromptedModel
    splits: Splits
    device: torch.device
    rep: Reporter
    state: dict | None  # the resume state; None for a new run
    main: bool  # rank 0 (or the only process): it alone writes the run directory


def _fit(cfg: RunConfig, path: Path, resuming: bool, command, recipe_sha256, reporter, stop_after_steps, init_state,
         extra_inputs, overwrite: bool, on_epoch: Callable[[dict], None] | None = None) -> TrainResult:
    """One process's training: set up, restore or start, the epochs, then the test and the final records."""
    s = _setup(cfg, path, resuming, reporter, overwrite, init_state,
               lambda cfg, model, splits: _inputs(cfg, model, splits, command, recipe_sha256, extra_inputs))
    trainer = _Trainer(s, on_epoch)
    if (init_state is not None or s.cfg.train.epochs == 0) and s.state is None:
        trainer.start_from_given_tensors()
    if stop_after_steps is None and os.environ.get("EDGEVP_STOP_AFTER_STEPS"):  # tests: stop a CLI/torchrun run
        stop_after_steps = int(os.environ["EDGEVP_STOP_AFTER_STEPS"])
    with _StopFlag(stop_after_steps) as stop:
        trainer.run(stop)
    return _finish(s, trainer.progress, trainer.tracker)


# -- set-up: the run's config, device, seeds, data, model and run directory ------------------------------------------
def _setup(cfg: RunConfig, path: Path, resuming: bool, reporter: Reporter | None, overwrite: bool,
           init_state: dict | None,
           inputs: Callable[[RunConfig, PromptedModel, Splits], tuple[list[str], dict]]) -> _Session:
    """Everything before the first step, in the order that fixes the random state: seeds, data, the model (from
    `init_state` when given), then the run directory (created from `inputs(cfg, model, splits)` for a new run)."""
    main = ddp.is_main()
    if not main:
        reporter = Reporter(quiet=True)  # only rank 0 logs; the others' errors still reach the console
    cfg, state = _open_run(cfg, path, resuming, overwrite, reporter)
    tcfg = cfg.train
    tracking.check_available(tcfg.track)
    if tcfg.threads:
        torch.set_num_threads(tcfg.threads)
    device = resolve_device(tcfg.device)
    seed_everything(tcfg.seed, tcfg.deterministic)
    splits = _load_data(cfg, path, resuming, reporter)
    model = build_model(cfg, len(splits.classes))
    splits.set_transform(backbone_transform(cfg.data, model.info), cfg.data.split_seed)
    if init_state is not None and state is None:
        model.load_trainable_state(init_state)
    model.to(device)
    run = RunDir(path)
    if not resuming:
        command, manifest_inputs = inputs(cfg, model, splits)
        run = ddp.on_main(lambda: RunDir.create(path, cfg, command, manifest_inputs))
    rep = reporter or Reporter()
    if main:
        rep.log_file = run.log_path
    rep.log(model.param_line())
    rep.log(f"run directory: {run.path}")
    return _Session(cfg, run, model, splits, device, rep, state, main)


def _open_run(cfg: RunConfig, path: Path, resuming: bool, overwrite: bool,
              reporter: Reporter | None) -> tuple[RunConfig, dict | None]:
    """The config to train and the resume state: a resumed run's own (its backbone and batch checked again before
    the data is read), or `cfg` with no state in a run directory cleared for it."""
    if not resuming:
        ddp.on_main(lambda: start_over(path, overwrite, reporter))
        return cfg, None
    cfg, state = ddp.on_main(lambda: read_resume(path))
    check_model(cfg)  # the backbone and its weights are still here, before the data is read again
    ddp.check_batch(cfg.data.batch_size)
    return cfg, state


def _load_data(cfg: RunConfig, path: Path, resuming: bool, reporter: Reporter | None) -> Splits:
    """The run's splits (read once; the transform needs the backbone's data config), checked before training."""
    splits = load_splits(cfg.data)
    classes = len(np.unique(splits.train.labels))
    if classes < 2:
        raise ddp.echoed(DataError(f"the train split of '{cfg.data.name}' has {classes} class",
                                   "a classifier needs at least 2 classes: add images of other classes"))
    ddp.on_main(lambda: check_data(path, resuming, splits, reporter))
    return splits


def _inputs(cfg: RunConfig, model: PromptedModel, splits: Splits, command: list[str] | None,
            recipe_sha256: str | None, extra_inputs: dict | None) -> tuple[list[str], dict]:
    """The command line and the manifest's "inputs" of a new run: backbone, weights, data and split sizes."""
    sizes = {k: len(v) for k, v in (("train", splits.train), ("val", splits.val), ("test", splits.test))
             if v is not None}
    return command or [], {"backbone": cfg.backbone.name, "weights": cfg.backbone.weights,
                           "weights_sha256": model.info.weights_sha256, "data": splits.source,
                           "recipe_sha256": recipe_sha256, "data_config": model.info.data_config,
                           "split_sizes": sizes, **(extra_inputs or {})}


# -- data parallel -----------------------------------------------------------------------------------------------------
def _data_parallel(model: PromptedModel, batch_size: int, rep: Reporter) -> tuple[ddp.GradientReducer | None, dict]:
    """Under torchrun: the gradient all-reduce and what the train stage records of it; (None, {}) for one process."""
    if not ddp.active():
        return None, {}
    reducer = ddp.GradientReducer([p for _, p in model.trainable_parameters()], extras=4)
    scale_out = {"world_size": ddp.world_size(), "backend": ddp.backend(),
                 "per_rank_batch": ddp.slice_sizes(batch_size), "allreduce_bytes_per_step": reducer.bytes_per_step}
    rep.log(f"data parallel: {scale_out['world_size']} processes ({scale_out['backend']}), global batch {batch_size} "
            f"as {scale_out['per_rank_batch']} per rank, {reducer.bytes_per_step:,} bytes all-reduced per step")
    return reducer, scale_out


def _ddp_step(model: PromptedModel, batch, optimizer, scaler, reducer: ddp.GradientReducer, tcfg: TrainConfig,
              device: torch.device, stop_here: bool) -> tuple[float, float, float, bool]:
    """Forward/backward of this rank's slice of a global batch and the gradient all-reduce (no optimizer step).

    The loss is the slice's per-sample loss sum over the global batch count, so the summed gradients are the
    one-process gradients of the batch mean. Returns the global loss sum, correct and count, and whether any
    rank asked to stop."""
    x, y, n = batch
    optimizer.zero_grad(set_to_none=True)
    loss_sum, correct, count = 0.0, 0.0, 0.0
    if x is not None:  # an empty slice (a last batch smaller than the world) contributes nothing
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast(device, tcfg.amp):
            logits = model(x)
            loss = F.cross_entropy(logits.float(), y, reduction="sum", label_smoothing=tcfg.label_smoothing)
        scaler.scale(loss / n).backward()
        loss_sum, correct, count = loss.item(), (logits.argmax(1) == y).sum().item(), float(len(y))
    loss_sum, correct, count, stop = reducer.reduce([loss_sum, correct, count, float(stop_here)])
    return loss_sum, correct, count, stop > 0


# -- the loop ----------------------------------------------------------------------------------------------------------
class _Trainer:
    """The epochs of one process: its steps (alone or data-parallel), evaluation, checkpoints and records."""

    def __init__(self, s: _Session, on_epoch: Callable[[dict], None] | None):
        self.s, self.on_epoch, self.tcfg = s, on_epoch, s.cfg.train
        self.bs = s.cfg.data.batch_size
        self.optimizer = make_optimizer(s.model, self.tcfg)
        self.reducer, scale_out = _data_parallel(s.model, self.bs, s.rep)
        if s.main:  # from here on a failure is recorded
            s.run.set_stage("train", status="running", device=str(s.device), **scale_out)
        self.ckpt = Checkpoints(s.run, s.cfg, s.model, len(s.splits.classes), self.optimizer, s.main)
        self.start = self.ckpt.restore(s.state, s.rep)
        self.ebs = s.cfg.data.eval_batch_size or self.bs
        self.steps_per_epoch = math.ceil(len(s.splits.train) / self.bs)
        self.validate = evaluator(s.splits.val, self.ebs, s.device, self.tcfg.amp, s.cfg.data.num_workers)
        self.tracker = tracking.Tracking(self.tcfg.track if s.main else [])
        self.tracker.start(s.run.path, s.cfg, self.start["global_step"])
        self.scaler = torch.amp.GradScaler("cuda", enabled=s.device.type == "cuda" and self.tcfg.amp
                                           and not torch.cuda.is_bf16_supported())
        self.progress = dict(self.start)
        self.t_start = time.time()

    def checkpoint(self) -> None:
        self.progress["seconds"] = self.start["seconds"] + time.time() - self.t_start
        self.ckpt.save_last(self.progress)

    def start_from_given_tensors(self) -> None:
        """Starting from given tensors (fine-tuning a condensed run): they are the first candidate for "best", so
        fine-tuning can only keep or improve the validation top-1."""
        val = self.validate(self.s.model)
        self.progress.update(best_top1=val["top1"], best_epoch=-1)
        for which in ("best", "last"):
            self.ckpt.save_weights(which, -1, val_top1=val["top1"])
        if self.s.main:
            self.s.run.append_epoch(EpochRecord(epoch=-1).with_val(val))

    def run(self, stop: _StopFlag) -> None:
        """The epochs left; how training stopped (interrupted, pruned, failed) is recorded in the train stage."""
        try:
            for epoch in range(self.start["epoch"], self.tcfg.epochs):
                self.epoch(epoch, stop)
        except BaseException as e:
            self.s.rep.stop_bar()
            self.tracker.close()
            if self.s.main:
                _mark(self.s.run, **self._ending(e))
            raise

    def _ending(self, e: BaseException) -> dict:
        if isinstance(e, Interrupted):
            return {"status": "interrupted", "seconds": round(self.progress["seconds"], 3)}
        if isinstance(e, Pruned):
            return {"status": "pruned", "error": e.line(), "seconds": round(time.time() - self.t_start, 3)}
        return {"status": "failed", "error": f"{type(e).__name__}: {e}"}

    def epoch(self, epoch: int, stop: _StopFlag) -> None:
        s, cfg = self.s, self.s.cfg
        skip = self.progress["step_in_epoch"] * self.bs if epoch == self.start["epoch"] else 0
        s.splits.train.epoch = epoch
        s.model.method.before_epoch(s.model, make_loader(s.splits.train, self.ebs, cfg.data.num_workers), epoch)
        order = EpochSampler(len(s.splits.train), self.tcfg.seed, epoch, skip)
        loader = (make_loader(s.splits.train, self.bs, cfg.data.num_workers, order) if self.reducer is None
                  else ddp.ShardedBatches(s.splits.train, order, self.bs, cfg.data.num_workers))
        s.model.train()
        s.rep.start_bar(f"epoch {epoch + 1}/{self.tcfg.epochs}", self.steps_per_epoch, self.progress["step_in_epoch"])
        t_epoch = time.time()
        for batch in loader:
            self.step(batch, epoch, stop)
        s.rep.stop_bar()
        self.end_epoch(epoch, t_epoch)

    def step(self, batch, epoch: int, stop: _StopFlag) -> None:
        """One optimizer step, its sums and records; a checkpoint when due, and the stop when asked for."""
        tcfg, progress, model = self.tcfg, self.progress, self.s.model
        lr = lr_at(tcfg, progress["global_step"], self.steps_per_epoch)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        if self.reducer is None:
            step_sums, stop_all = self._local_backward(batch, epoch), None
        else:  # every rank gets the same global sums and stop decision from one all-reduce
            *step_sums, stop_all = _ddp_step(model, batch, self.optimizer, self.scaler, self.reducer, tcfg,
                                             self.s.device, stop.check(progress["global_step"] + 1
                                                                       - self.start["global_step"]))
            if not math.isfinite(step_sums[0]):
                raise ddp.echoed(_diverged(self.s.run, step_sums[0] / step_sums[2], epoch, progress["step_in_epoch"]))
        if tcfg.grad_clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_([p for _, p in model.trainable_parameters()], tcfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        sums = progress["train_sums"]
        for i in range(3):
            sums[i] += step_sums[i]
        self.tracker.scalars({"step/loss": step_sums[0] / max(step_sums[2], 1), "step/lr": lr}, progress["global_step"])
        progress["step_in_epoch"] += 1
        progress["global_step"] += 1
        self._log_step(epoch, f"loss {sums[0] / sums[2]:.4f} lr {lr:.3g}")
        if tcfg.ckpt_every_steps and progress["global_step"] % tcfg.ckpt_every_steps == 0:
            self.checkpoint()
        if stop.check(progress["global_step"] - self.start["global_step"]) if stop_all is None else stop_all:
            self.checkpoint()
            raise ddp.echoed(Interrupted(f"interrupted at epoch {epoch + 1} step {progress['step_in_epoch']}; "
                                         "checkpoint saved", f"resume: edgevp train --resume {self.s.run.path}"))

    def _local_backward(self, batch, epoch: int) -> tuple[float, int, int]:
        """Forward/backward of a whole batch in this process; (loss sum, correct, count)."""
        device, tcfg = self.s.device, self.tcfg
        x, y = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
        with autocast(device, tcfg.amp):
            logits = self.s.model(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=tcfg.label_smoothing)
        if not torch.isfinite(loss):
            raise _diverged(self.s.run, loss.item(), epoch, self.progress["step_in_epoch"])
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        return loss.item() * len(y), (logits.argmax(1) == y).sum().item(), len(y)

    def _log_step(self, epoch: int, info: str) -> None:
        rep = self.s.rep
        rep.advance_bar(info)
        if not rep.tty and self.progress["step_in_epoch"] % self.tcfg.log_every == 0:
            rep.log(f"epoch {epoch + 1}/{self.tcfg.epochs} step {self.progress['step_in_epoch']}/"
                    f"{self.steps_per_epoch} {info}")

    def end_epoch(self, epoch: int, t_epoch: float) -> None:
        """The epoch's record, its evaluation when due (a new best is checkpointed), the last checkpoint."""
        progress, tcfg = self.progress, self.tcfg
        sums = progress["train_sums"]
        record = EpochRecord(epoch=epoch, train_loss=sums[0] / max(sums[2], 1),
                             train_top1=100.0 * sums[1] / max(sums[2], 1),
                             lr=lr_at(tcfg, progress["global_step"] - 1, self.steps_per_epoch),
                             epoch_seconds=round(time.time() - t_epoch, 3))
        if (epoch + 1) % tcfg.eval_every == 0 or epoch + 1 == tcfg.epochs:
            val = self.validate(self.s.model)
            record = record.with_val(val)
            if val["top1"] > progress["best_top1"]:
                progress["best_top1"], progress["best_epoch"] = val["top1"], epoch
                self.ckpt.save_weights("best", epoch, val_top1=val["top1"])
        progress.update(epoch=epoch + 1, step_in_epoch=0, train_sums=[0.0, 0, 0])
        self.checkpoint()
        self.records(record)

    def records(self, record: EpochRecord) -> None:
        """The epoch's line in metrics.jsonl, its tracker scalars and log line, then the `on_epoch` hook."""
        line = record.to_json()
        if self.s.main:
            self.s.run.append_epoch(record)
        self.tracker.scalars({f"epoch/{k}": v for k, v in line.items() if k != "epoch"}, self.progress["global_step"])
        self.s.rep.log(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in line.items()))
        if self.on_epoch is not None:  # on rank 0; what it raises stops every rank
            ddp.on_main(lambda: self.on_epoch(line))


# -- the end: test, records ------------------------------------------------------------------------------------------
def _finish(s: _Session, progress: dict, tracker: tracking.Tracking) -> TrainResult:
    """Test the best checkpoint, record what training measured (manifest train_info, trackers), close the stage."""
    cfg, model, run = s.cfg, s.model, s.run
    state = ddp.on_main(lambda: read_checkpoint(run.checkpoint("best"), cfg)[0])
    model.load_trainable_state(state)
    test = None
    if s.splits.test is not None:
        test = evaluator(s.splits.test, cfg.data.eval_batch_size or cfg.data.batch_size, s.device, cfg.train.amp,
                         cfg.data.num_workers)(model)
        best = "the starting tensors" if progress["best_epoch"] < 0 else f"epoch {progress['best_epoch'] + 1}"
        s.rep.log(f"test (best: {best}): top1 {test['top1']:.2f} loss {test['loss']:.4f}")
    info = _train_info(model, len(s.splits.classes), s.device, progress, test)
    if s.main:
        run.set_train_info(info)
        run.set_stage("train", status="completed", seconds=info.train_seconds)
    tracker.final(cfg, info.metrics())
    tracker.close()
    return TrainResult(run.path, cfg.train.epochs, progress["best_epoch"], progress["best_top1"], info.test_top1,
                       progress["seconds"], model.param_summary(), info.macs)


def _train_info(model: PromptedModel, num_classes: int, device: torch.device, progress: dict,
                test: dict | None) -> TrainInfo:
    params = model.param_summary()
    macs = bare_macs = None
    if model_macs(model.info, 0) is not None:  # analytic MACs per image (ViT, Swin), prompts included, and bare
        macs = model_macs(model.info, num_classes, model.method.extra_tokens()).total
        bare_macs = model_macs(model.info, num_classes).total
    return TrainInfo(macs=macs, bare_macs=bare_macs, trainable_params=params["trainable"],
                     total_params=params["total"], prompt_params=params["prompt"], head_params=params["head"],
                     train_seconds=round(progress["seconds"], 3), peak_mem_mib=round(_peak_mem_mib(device), 1),
                     best_epoch=progress["best_epoch"], best_val_top1=progress["best_top1"],
                     test_top1=test and test["top1"], test_loss=test and test["loss"])
