"""Training: `fit` runs the training loop with `evaluate` after each epoch, checkpointing so that an interrupted run resumes
to the same result (data order, augmentation and dropout are all functions of the seed and the step)."""
from __future__ import annotations

import contextlib
import json
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
from .checkpoints import load_resume, read_checkpoint, save_checkpoint, save_resume
from .config import RunConfig, TrainConfig, check_epochs
from .console import Reporter
from .cost import model_macs
from .data import EpochSampler, Splits, backbone_transform, load_splits, make_loader
from .errors import EXIT_INTERRUPTED, DataError, DivergedError, EdgevpError, IncompatibleError
from .evaluation import autocast, evaluator, resolve_device
from .images import check_images, content_sha256, dataset_change
from .io import append_jsonl, write_text
from .model import build_model, check_model
from .prompts.base import PromptedModel
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


def _start_over(path: Path, overwrite: bool, rep: Reporter | None) -> None:
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


def _check_same_data(run: RunDir, splits: Splits) -> None:
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


def _read_resume(path: Path) -> tuple[RunConfig, dict]:
    """The config and resume state of run `path`."""
    run = RunDir(path)
    cfg = run.config()
    state = load_resume(run)
    if state is None:
        raise IncompatibleError(f"run '{run.path}' has no resume state (it stopped before its first checkpoint)",
                                f"start it again: edgevp train RECIPE -o {run.path} (a run without checkpoints "
                                "is started over)")
    return cfg, state


def _check_data(path: Path, resuming: bool, splits: Splits, reporter: Reporter | None) -> None:
    """Before training: the same dataset as the run started on (resume), and every image file decodes."""
    if resuming:
        _check_same_data(RunDir(path), splits)
    if splits.image_paths():  # every image decoded once before the first step (cached by path, size and mtime)
        checked, cached = check_images(splits.image_paths())
        (reporter or Reporter()).log(f"checked {checked} images ({cached} unchanged since an earlier check)")
    if not resuming and "fingerprint" in splits.source:  # what a resume on a copy of the data compares
        splits.source["fingerprint"]["content_sha256"] = content_sha256(splits.files, splits.source.get("root"))


def _diverged(run: RunDir, loss: float, epoch: int, step: int) -> DivergedError:
    kept = "the last checkpoint is kept" if run.checkpoint("last").is_file() else "no checkpoint was written yet"
    return DivergedError(f"loss became {loss} at epoch {epoch + 1} step {step + 1}",
                         f"lower train.lr or enable train.grad_clip; {kept}")


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


def _fit(cfg: RunConfig, path: Path, resuming: bool, command, recipe_sha256, reporter, stop_after_steps, init_state,
         extra_inputs, overwrite: bool, on_epoch: Callable[[dict], None] | None = None) -> TrainResult:
    main = ddp.is_main()
    if not main:
        reporter = Reporter(quiet=True)  # only rank 0 logs; the others' errors still reach the console
    if resuming:
        cfg, state = ddp.on_main(lambda: _read_resume(path))
        check_model(cfg)  # the backbone and its weights are still here, before the data is read again
        ddp.check_batch(cfg.data.batch_size)
    else:
        ddp.on_main(lambda: _start_over(path, overwrite, reporter))
        state = None
    run = RunDir(path)
    tcfg = cfg.train
    tracking.check_available(tcfg.track)
    if tcfg.threads:
        torch.set_num_threads(tcfg.threads)
    device = resolve_device(tcfg.device)
    seed_everything(tcfg.seed, tcfg.deterministic)
    splits = load_splits(cfg.data)  # read once; the transform needs the backbone's data config
    if len(np.unique(splits.train.labels)) < 2:
        raise ddp.echoed(DataError(f"the train split of '{cfg.data.name}' has {len(np.unique(splits.train.labels))} "
                                   "class", "a classifier needs at least 2 classes: add images of other classes"))
    ddp.on_main(lambda: _check_data(path, resuming, splits, reporter))
    model = build_model(cfg, len(splits.classes))
    splits.set_transform(backbone_transform(cfg.data, model.info), cfg.data.split_seed)
    if init_state is not None and state is None:
        model.load_trainable_state(init_state)
    model.to(device)
    if not resuming:
        inputs = {"backbone": cfg.backbone.name, "weights": cfg.backbone.weights,
                  "weights_sha256": model.info.weights_sha256, "data": splits.source, "recipe_sha256": recipe_sha256,
                  "data_config": model.info.data_config,
                  "split_sizes": {k: len(v) for k, v in (("train", splits.train), ("val", splits.val),
                                                         ("test", splits.test)) if v is not None},
                  **(extra_inputs or {})}
        run = ddp.on_main(lambda: RunDir.create(path, cfg, command or [], inputs))
    rep = reporter or Reporter()
    if main:
        rep.log_file = run.log_path
    rep.log(model.param_line())
    rep.log(f"run directory: {run.path}")
    optimizer = make_optimizer(model, tcfg)
    bs = cfg.data.batch_size
    reducer, scale_out = None, {}
    if ddp.active():
        reducer = ddp.GradientReducer([p for _, p in model.trainable_parameters()], extras=4)
        scale_out = {"world_size": ddp.world_size(), "backend": ddp.backend(), "per_rank_batch": ddp.slice_sizes(bs),
                     "allreduce_bytes_per_step": reducer.bytes_per_step}
        rep.log(f"data parallel: {scale_out['world_size']} processes ({scale_out['backend']}), global batch {bs} "
                f"as {scale_out['per_rank_batch']} per rank, {reducer.bytes_per_step:,} bytes all-reduced per step")
    if main:  # from here on a failure is recorded
        run.set_stage("train", status="running", device=str(device), **scale_out)
    start = {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "best_top1": -1.0, "best_epoch": -1,
             "train_sums": [0.0, 0, 0], "seconds": 0.0}
    if state is not None:
        model.load_trainable_state(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        start = state["progress"]
        if main:
            kept = [m for m in run.metrics() if m["epoch"] < start["epoch"]]
            write_text(run.metrics_path, "".join(json.dumps(m) + "\n" for m in kept))
        if start["epoch"] >= tcfg.epochs:
            rep.log(f"run '{run.path}' already finished its {tcfg.epochs} epochs; nothing left to train")
        else:
            rep.log(f"resuming at epoch {start['epoch'] + 1} step {start['step_in_epoch']}")
    ebs = cfg.data.eval_batch_size or bs
    steps_per_epoch = math.ceil(len(splits.train) / bs)
    validate = evaluator(splits.val, ebs, device, tcfg.amp, cfg.data.num_workers)
    tracker = tracking.Tracking(tcfg.track if main else [])
    tracker.start(run.path, cfg, start["global_step"])
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and tcfg.amp
                                  and not torch.cuda.is_bf16_supported())
    progress = dict(start)
    t_start = time.time()

    def checkpoint(epoch_done: bool) -> None:
        progress["seconds"] = start["seconds"] + time.time() - t_start
        if not main:
            return
        save_checkpoint(run.checkpoint("last"), model.trainable_state(), cfg, num_classes=len(splits.classes),
                        epoch=progress["epoch"])
        save_resume(run, {"model": model.trainable_state(), "optimizer": optimizer.state_dict(),
                          "torch_rng": torch.get_rng_state(), "progress": dict(progress)})

    if (init_state is not None or tcfg.epochs == 0) and state is None:
        # starting from given tensors (fine-tuning a condensed run): they are the first candidate for "best", so
        # fine-tuning can only keep or improve the validation top-1
        val = validate(model)
        progress.update(best_top1=val["top1"], best_epoch=-1)
        if main:
            for which in ("best", "last"):
                save_checkpoint(run.checkpoint(which), model.trainable_state(), cfg,
                                num_classes=len(splits.classes), epoch=-1, val_top1=val["top1"])
            append_jsonl(run.metrics_path, {"epoch": -1, **{f"val_{k}": v for k, v in val.items()}})
    if stop_after_steps is None and os.environ.get("EDGEVP_STOP_AFTER_STEPS"):  # tests: stop a CLI/torchrun run
        stop_after_steps = int(os.environ["EDGEVP_STOP_AFTER_STEPS"])
    with _StopFlag(stop_after_steps) as stop:
        try:
            for epoch in range(start["epoch"], tcfg.epochs):
                skip = progress["step_in_epoch"] * bs if epoch == start["epoch"] else 0
                splits.train.epoch = epoch
                model.method.before_epoch(model, make_loader(splits.train, ebs, cfg.data.num_workers), epoch)
                order = EpochSampler(len(splits.train), tcfg.seed, epoch, skip)
                loader = (make_loader(splits.train, bs, cfg.data.num_workers, order) if reducer is None
                          else ddp.ShardedBatches(splits.train, order, bs, cfg.data.num_workers))
                model.train()
                rep.start_bar(f"epoch {epoch + 1}/{tcfg.epochs}", steps_per_epoch, progress["step_in_epoch"])
                t_epoch = time.time()
                for batch in loader:
                    lr = lr_at(tcfg, progress["global_step"], steps_per_epoch)
                    for g in optimizer.param_groups:
                        g["lr"] = lr
                    if reducer is None:
                        x, y = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
                        with autocast(device, tcfg.amp):
                            logits = model(x)
                            loss = F.cross_entropy(logits.float(), y, label_smoothing=tcfg.label_smoothing)
                        if not torch.isfinite(loss):
                            raise _diverged(run, loss.item(), epoch, progress["step_in_epoch"])
                        optimizer.zero_grad(set_to_none=True)
                        scaler.scale(loss).backward()
                        step_sums = (loss.item() * len(y), (logits.argmax(1) == y).sum().item(), len(y))
                        stop_all = None
                    else:  # every rank gets the same global sums and stop decision from one all-reduce
                        *step_sums, stop_all = _ddp_step(model, batch, optimizer, scaler, reducer, tcfg, device,
                                                         stop.check(progress["global_step"] + 1 - start["global_step"]))
                        if not math.isfinite(step_sums[0]):
                            raise ddp.echoed(_diverged(run, step_sums[0] / step_sums[2], epoch,
                                                       progress["step_in_epoch"]))
                    if tcfg.grad_clip:
                        scaler.unscale_(optimizer)
                        torch.nn.utils.clip_grad_norm_([p for _, p in model.trainable_parameters()], tcfg.grad_clip)
                    scaler.step(optimizer)
                    scaler.update()
                    sums = progress["train_sums"]
                    sums[0] += step_sums[0]
                    sums[1] += step_sums[1]
                    sums[2] += step_sums[2]
                    tracker.scalars({"step/loss": step_sums[0] / max(step_sums[2], 1), "step/lr": lr},
                                    progress["global_step"])
                    progress["step_in_epoch"] += 1
                    progress["global_step"] += 1
                    info = f"loss {sums[0] / sums[2]:.4f} lr {lr:.3g}"
                    rep.advance_bar(info)
                    if not rep.tty and progress["step_in_epoch"] % tcfg.log_every == 0:
                        rep.log(f"epoch {epoch + 1}/{tcfg.epochs} step {progress['step_in_epoch']}/{steps_per_epoch} "
                                f"{info}")
                    if tcfg.ckpt_every_steps and progress["global_step"] % tcfg.ckpt_every_steps == 0:
                        checkpoint(False)
                    if (stop.check(progress["global_step"] - start["global_step"]) if stop_all is None
                            else stop_all):
                        checkpoint(False)
                        raise ddp.echoed(Interrupted(f"interrupted at epoch {epoch + 1} step "
                                                     f"{progress['step_in_epoch']}; checkpoint saved",
                                                     f"resume: edgevp train --resume {run.path}"))
                rep.stop_bar()
                sums = progress["train_sums"]
                record = {"epoch": epoch, "train_loss": sums[0] / max(sums[2], 1),
                          "train_top1": 100.0 * sums[1] / max(sums[2], 1),
                          "lr": lr_at(tcfg, progress["global_step"] - 1, steps_per_epoch),
                          "epoch_seconds": round(time.time() - t_epoch, 3)}
                if (epoch + 1) % tcfg.eval_every == 0 or epoch + 1 == tcfg.epochs:
                    val = validate(model)
                    record.update({f"val_{k}": v for k, v in val.items()})
                    if val["top1"] > progress["best_top1"]:
                        progress["best_top1"], progress["best_epoch"] = val["top1"], epoch
                        if main:
                            save_checkpoint(run.checkpoint("best"), model.trainable_state(), cfg,
                                            num_classes=len(splits.classes), epoch=epoch, val_top1=val["top1"])
                progress.update(epoch=epoch + 1, step_in_epoch=0, train_sums=[0.0, 0, 0])
                checkpoint(True)
                if main:
                    append_jsonl(run.metrics_path, record)
                tracker.scalars({f"epoch/{k}": v for k, v in record.items() if k != "epoch"},
                                progress["global_step"])
                rep.log(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()))
                if on_epoch is not None:  # on rank 0; what it raises stops every rank
                    ddp.on_main(lambda: on_epoch(record))
        except Interrupted:
            rep.stop_bar()
            tracker.close()
            if main:
                _mark(run, status="interrupted", seconds=round(progress["seconds"], 3))
            raise
        except Pruned as e:
            rep.stop_bar()
            tracker.close()
            if main:
                _mark(run, status="pruned", error=e.line(), seconds=round(time.time() - t_start, 3))
            raise
        except BaseException as e:
            rep.stop_bar()
            tracker.close()
            if main:
                _mark(run, status="failed", error=f"{type(e).__name__}: {e}")
            raise
    return _finish(run, cfg, model, splits, device, progress, rep, tracker)


def _finish(run: RunDir, cfg: RunConfig, model: PromptedModel, splits: Splits, device: torch.device,
            progress: dict, rep: Reporter, tracker: tracking.Tracking) -> TrainResult:
    state = ddp.on_main(lambda: read_checkpoint(run.checkpoint("best"), cfg)[0])
    model.load_trainable_state(state)
    test = None
    if splits.test is not None:
        test = evaluator(splits.test, cfg.data.eval_batch_size or cfg.data.batch_size, device, cfg.train.amp,
                         cfg.data.num_workers)(model)
        best = "the starting tensors" if progress["best_epoch"] < 0 else f"epoch {progress['best_epoch'] + 1}"
        rep.log(f"test (best: {best}): top1 {test['top1']:.2f} loss {test['loss']:.4f}")
    params = model.param_summary()
    macs = bare_macs = None
    if model_macs(model.info, 0) is not None:  # analytic MACs per image (ViT, Swin), prompts included, and bare
        macs = model_macs(model.info, len(splits.classes), model.method.extra_tokens()).total
        bare_macs = model_macs(model.info, len(splits.classes)).total
    train_info = {"macs": macs, "bare_macs": bare_macs, "trainable_params": params["trainable"], "total_params": params["total"],
                  "prompt_params": params["prompt"], "head_params": params["head"],
                  "train_seconds": round(progress["seconds"], 3), "peak_mem_mib": round(_peak_mem_mib(device), 1),
                  "best_epoch": progress["best_epoch"], "best_val_top1": progress["best_top1"],
                  "test_top1": test and test["top1"], "test_loss": test and test["loss"]}
    if ddp.is_main():
        run.update_manifest(train_info=train_info)
        run.set_stage("train", status="completed", seconds=train_info["train_seconds"])
    tracker.final(cfg, train_info)
    tracker.close()
    return TrainResult(run.path, cfg.train.epochs, progress["best_epoch"], progress["best_top1"],
                       test and test["top1"], progress["seconds"], params, macs)
