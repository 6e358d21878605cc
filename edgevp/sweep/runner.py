"""`run_sweep`: one worker of a sweep. It opens (or creates) the study, runs queued or sampled trials until none is
left, waits for trials other workers are still running, then writes sweep.json / summary.md and, with `final`,
retrains the best configuration on train+val (`data.split_protocol=final`) and reports its test top-1.

Each trial is an ordinary run directory `SWEEPDIR/trials/<trial number>-<params>` written by `fit` (or by
`edgevp train --nproc N` in a subprocess), its params in the manifest under `inputs.sweep`. The validation metric
of every epoch goes to the trial (`trial.report`); a trial the pruner stops is PRUNED in the study and its run's train
stage says "pruned".
"""
from __future__ import annotations

import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from ..config import check_epochs, load_yaml
from ..console import Reporter
from ..errors import EXIT_INTERRUPTED, EXIT_OK, ConfigError, EdgevpError
from ..io import sha256_file
from ..recipe import build_run_config
from ..records import TrainInfo, train_info_of
from ..runs import RunDir, writer_lock
from .study import (check_study, heartbeat, identity, make_pruner, make_sampler, open_storage, open_study,
                    optuna_module, retry_callback, shown_url, states, take_queued)
from .options import (SweepOptions, default_study_name, grid_points, overrides, recipe_sha256, resolve_grid,
                      short_params)
from .summary import metric_of, sweep_doc, write_summary

TUNE = "data.split_protocol=tune"  # trials tune on the validation split
FINAL = "data.split_protocol=final"  # the final run trains on train+val and reports test


class _Sweep:
    """What every trial of this worker shares."""

    def __init__(self, recipe: Path, data: dict, sets: list[str], grid: dict, opts: SweepOptions, out: Path,
                 url: str, rep: Reporter):
        self.recipe, self.data, self.sets, self.grid, self.opts = recipe, data, sets, grid, opts
        self.out, self.url, self.rep = out, url, rep
        self.recipe_sha = sha256_file(recipe)

    def config(self, params: dict, protocol: str):
        return build_run_config(self.data, [*self.sets, *overrides(params), protocol])


def run_sweep(recipe: str | Path, opts: SweepOptions, sets: list[str] | tuple[str, ...] = (),
              out: str | Path | None = None, reporter: Reporter | None = None) -> dict:
    """Run sweep trials from `recipe` with `opts` (as `edgevp sweep`); returns the sweep.json document.

    Every input is checked before any trial runs (grid keys and values against the recipe schema, the storage URL,
    an existing study's grid and recipe); nothing is created when one is wrong.

    Example:
        >>> run_sweep("recipes/tiny/linear.yaml", SweepOptions(grid=["train.lr=0.01,0.003"]), out="runs/sweep")
    """
    optuna = optuna_module()
    recipe, sets = Path(recipe), list(sets)
    data = load_yaml(recipe)
    grid = resolve_grid(data, sets, opts.grid)
    if "data.split_protocol" in grid:
        raise ConfigError("--grid data.split_protocol: trials always tune on the validation split",
                          "--final retrains the best trial on train+val")
    base = build_run_config(data, [*sets, TUNE])
    for epochs in {base.train.epochs, *grid.get("train.epochs", [])}:  # each trial's train would refuse it
        check_epochs(epochs)
    points = grid_points(grid)
    if opts.sampler == "grid" and opts.trials is not None and opts.trials > len(points):
        raise ConfigError(f"trials / --trials: {opts.trials} is more than the grid's {len(points)} points")
    batch = min([base.data.batch_size, *grid.get("data.batch_size", [])])
    if opts.nproc > batch:  # what `edgevp train --nproc` refuses, found before any trial
        raise ConfigError(f"nproc / --nproc: {opts.nproc} processes for a global batch of {batch} (data.batch_size): "
                          "a rank would never get a sample", f"use at most {batch} processes")
    name = opts.study or default_study_name(recipe)
    out = Path(out) if out is not None else Path("runs") / f"sweep-{name}"
    url = opts.storage or f"sqlite:///{(out / 'study.db').resolve()}"
    rep = reporter or Reporter()
    want = identity(grid, recipe_sha256(data, sets), opts)
    on_stale = retry_callback(opts, also=lambda study, trial: _mark_dead(out, trial))
    storage = None
    if opts.storage is not None:  # a given URL is opened and its study checked before SWEEPDIR exists
        storage = open_storage(url, opts, on_stale)
        check_study(storage, name, want)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create the sweep directory '{out}': {e.strerror or e}") from None
    storage = storage or open_storage(url, opts, on_stale)  # the default SQLite file lives in SWEEPDIR
    epochs = max([base.train.epochs, *grid.get("train.epochs", [])])
    pruner = make_pruner(opts, epochs, base.train.warmup_epochs)
    study = open_study(storage, name, want, points[:opts.trials] if opts.trials else points, opts, pruner,
                       make_sampler(opts))
    sweep = _Sweep(recipe, data, sets, grid, opts, out, url, rep)
    rep.log(f"sweep '{name}' in {shown_url(url)}: {len(points)} grid points, sampler {opts.sampler}, metric "
            f"{opts.metric} ({opts.direction}), pruner {opts.pruner} -> {out}")
    ran = _work(sweep, study, storage, optuna)
    final = _final(sweep, study) if opts.final else _previous_final(out)
    doc = sweep_doc(study, sweep_info(sweep, name), final)
    write_summary(out, doc)
    rep.log(f"this worker ran {ran} trial(s); study: {states(study)}; summary: {out / 'sweep.json'}")
    return doc


def sweep_info(sweep: _Sweep, name: str) -> dict:
    from dataclasses import asdict

    opts = {**asdict(sweep.opts), "storage": shown_url(sweep.url)}
    return {"study": name, "sweep_dir": str(sweep.out), "storage": shown_url(sweep.url), "recipe": str(sweep.recipe),
            "recipe_sha256": sweep.recipe_sha, "sets": sweep.sets, "grid": sweep.grid, "metric": sweep.opts.metric,
            "direction": sweep.opts.direction, "options": opts}


def _work(sweep: _Sweep, study, storage, optuna) -> int:
    """Run trials until the queue is empty (grid) or the study holds `trials` (tpe/random), then wait while other
    workers still run trials (one of them may die: its trial is then failed and queued again, and run here)."""
    opts, ran, waited = sweep.opts, 0, False
    total = opts.trials or len(grid_points(sweep.grid))
    while True:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # fail_stale_trials is marked experimental
            optuna.storages.fail_stale_trials(study)
        trial_id = take_queued(study)
        if trial_id is None and opts.sampler != "grid":
            counts = states(study)
            if sum(counts.values()) < total:
                trial_id = study._storage.create_new_trial(study._study_id)
        if trial_id is None:
            running = states(study).get("RUNNING", 0)
            if running == 0:
                return ran
            if not waited:
                sweep.rep.log(f"waiting for {running} trial(s) running in other workers")
                waited = True
            time.sleep(min(opts.heartbeat, 1))
            continue
        waited = False
        _run_trial(sweep, study, optuna.Trial(study, trial_id), storage)
        ran += 1
        write_summary(sweep.out, sweep_doc(study, sweep_info(sweep, study.study_name), _previous_final(sweep.out)))


def _run_trial(sweep: _Sweep, study, trial, storage) -> None:
    optuna = optuna_module()
    params = {k: trial.suggest_categorical(k, v) for k, v in sweep.grid.items()}
    rel = f"trials/{trial.number}-{short_params(params)}"
    for key in ("error", "pruned_at_epoch", "test_top1"):  # a retry starts with the failed trial's user attrs
        if trial.user_attrs.get(key) is not None:
            trial.set_user_attr(key, None)
    trial.set_user_attr("run_dir", rel)
    run_dir = sweep.out / rel
    sweep.rep.log(f"trial {trial.number}: {', '.join(f'{k}={v}' for k, v in params.items())} -> {run_dir}")
    info = {"study": study.study_name, "trial": trial.number, "params": params,
            "retry_of": study._storage.get_trial_system_attrs(trial._trial_id).get("failed_trial")}
    with heartbeat(storage, trial._trial_id, sweep.opts.heartbeat):
        try:
            if sweep.opts.nproc > 1:
                _train_subprocess(sweep, trial, params, run_dir, info)
            else:
                _train_here(sweep, trial, params, run_dir, info)
        except _PrunedTrial as e:
            trial.set_user_attr("pruned_at_epoch", e.epoch)
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            sweep.rep.log(f"trial {trial.number} pruned at epoch {e.epoch + 1}")
            return
        except (KeyboardInterrupt, _Stopped):  # this worker stops: the trial is failed and queued again
            trial.set_user_attr("error", "interrupted")
            frozen = study.tell(trial, state=optuna.trial.TrialState.FAIL)
            retry_callback(sweep.opts)(study, frozen)
            raise SweepInterrupted(f"interrupted during trial {trial.number}; it is queued again",
                                   "rerun the same edgevp sweep command to go on") from None
        except Exception as e:  # noqa: BLE001 - a failed trial (diverged, out of memory, ...) is reported, not fatal
            error = e.line() if isinstance(e, EdgevpError) else f"{type(e).__name__}: {e}"
            trial.set_user_attr("error", error)
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            sweep.rep.log(f"trial {trial.number} failed: {error}")
            return
    value = metric_of(RunDir(run_dir).metrics(), sweep.opts.metric)
    info = RunDir(run_dir).train_info()
    trial.set_user_attr("test_top1", info and info.test_top1)
    if value is None:
        trial.set_user_attr("error", f"the run recorded no {sweep.opts.metric}")
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return
    study.tell(trial, value)
    sweep.rep.log(f"trial {trial.number}: {sweep.opts.metric} {value:.4g}")


class SweepInterrupted(EdgevpError):
    """Ctrl-C / SIGTERM stopped this worker; its running trial was failed and queued again."""

    exit_code = EXIT_INTERRUPTED


class _PrunedTrial(Exception):
    def __init__(self, epoch: int):
        super().__init__(f"pruned at epoch {epoch + 1}")
        self.epoch = epoch


class _Stopped(Exception):
    """The trial's training was interrupted (Ctrl-C / SIGTERM) and saved a checkpoint."""


def _pruning_check(sweep: _Sweep, trial, metric: str):
    """`on_epoch` for a trial: report the epoch's metric; True when the pruner says stop."""

    def should_stop(record: dict) -> bool:
        value = record.get(metric)
        if value is None or record.get("epoch", -1) < 0:
            return False
        trial.report(float(value), step=int(record["epoch"]))
        return trial.should_prune()

    return should_stop


def _train_here(sweep: _Sweep, trial, params: dict, run_dir: Path, info: dict) -> None:
    from ..train import Interrupted, Pruned, fit

    should_stop = _pruning_check(sweep, trial, sweep.opts.metric)

    def on_epoch(record: dict) -> None:
        if should_stop(record):
            raise Pruned(f"sweep trial {trial.number} pruned at epoch {record['epoch'] + 1}: {sweep.opts.metric} "
                         f"{record[sweep.opts.metric]:.4g}")

    cfg = sweep.config(params, TUNE)
    try:
        fit(cfg, out=run_dir, command=_command(sweep, params, run_dir), recipe_sha256=sweep.recipe_sha,
            reporter=Reporter(quiet=True), extra_inputs={"sweep": info}, on_epoch=on_epoch)
    except Pruned:
        last = RunDir(run_dir).metrics()
        raise _PrunedTrial(int(last[-1]["epoch"]) if last else 0) from None
    except Interrupted:
        raise _Stopped() from None


def _command(sweep: _Sweep, params: dict, run_dir: Path, protocol: str = TUNE) -> list[str]:
    """The `edgevp train` command that trains a trial's configuration (what the manifest records and --nproc runs)."""
    cmd = ["edgevp", "train", str(sweep.recipe)]
    for s in [*sweep.sets, *overrides(params), protocol]:
        cmd += ["-s", s]
    cmd += ["-o", str(run_dir)] + (["--overwrite"] if protocol == FINAL else [])
    if sweep.opts.nproc > 1:
        cmd += ["--nproc", str(sweep.opts.nproc)]
    return cmd


def _train_subprocess(sweep: _Sweep, trial, params: dict, run_dir: Path, info: dict,
                      protocol: str = TUNE) -> None:
    """`edgevp train ... --nproc N` in a child process; its metrics.jsonl is followed for pruning (a pruned child
    gets SIGTERM: it stops at a step boundary, and its run is marked pruned)."""
    cmd = [sys.executable, "-m", "edgevp", "-q", *_command(sweep, params, run_dir, protocol)[1:]]
    should_stop = _pruning_check(sweep, trial, sweep.opts.metric) if trial is not None else (lambda r: False)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen, pruned_at = 0, None
    try:
        while proc.poll() is None:
            time.sleep(1.0)
            records = RunDir(run_dir).metrics() if (run_dir / "metrics.jsonl").is_file() else []
            for record in records[seen:]:
                if pruned_at is None and should_stop(record):
                    pruned_at = int(record["epoch"])
                    proc.send_signal(signal.SIGTERM)
            seen = len(records)
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGTERM)
        proc.wait()
        raise
    err = (proc.stderr.read() if proc.stderr else "").strip().splitlines()
    if pruned_at is not None:
        with writer_lock(run_dir, create=False):
            RunDir(run_dir).set_stage("train", status="pruned", error=f"sweep trial pruned at epoch {pruned_at + 1}")
            RunDir(run_dir).update_manifest(sweep=info)
        raise _PrunedTrial(pruned_at)
    if proc.returncode == EXIT_INTERRUPTED:
        raise _Stopped()
    if proc.returncode != EXIT_OK:
        raise EdgevpError(f"edgevp train exited {proc.returncode}: {err[-1] if err else 'no message'}")
    with writer_lock(run_dir, create=False):
        RunDir(run_dir).update_manifest(sweep=info)


def _mark_dead(out: Path, trial) -> None:
    """A trial failed because its worker stopped beating: say so in its run directory when it is on this machine."""
    rel = trial.user_attrs.get("run_dir")
    run = RunDir(out / rel) if rel else None
    if run is None or not run.manifest_path.is_file():
        return
    try:
        with writer_lock(run.path, create=False):
            run.set_stage("train", status="failed", error="its sweep worker stopped (no heartbeat); the trial was "
                                                          "queued again")
    except EdgevpError:
        pass  # its worker is alive after all (it holds the lock), or the directory went away


def _best(study) -> Any:
    try:
        return study.best_trial
    except ValueError:
        return None


def _previous_final(out: Path) -> dict | None:
    """The final run's record from an earlier `--final`, if there is one."""
    from ..io import read_json

    path = out / "sweep.json"
    try:
        return read_json(path).get("final") if path.is_file() else None
    except ValueError:
        return None


def _final(sweep: _Sweep, study) -> dict | None:
    """Retrain the best trial's configuration on train+val into SWEEPDIR/final and record its test top-1 (reused when
    an earlier --final already trained the same best trial)."""
    best = _best(study)
    if best is None:
        sweep.rep.log("no completed trial: nothing to retrain with --final")
        return None
    run_dir = sweep.out / "final"
    params = {k: best.params[k] for k in sweep.grid if k in best.params}
    info = {"study": study.study_name, "best_trial": best.number, "params": params, "protocol": "final"}
    run = RunDir(run_dir)
    done = run.manifest_path.is_file() and (run.manifest().get("inputs") or {}).get("sweep") == info and \
        any(s.get("name") == "train" and s.get("status") == "completed" for s in run.manifest().get("stages", []))
    if done:
        sweep.rep.log(f"final run of trial {best.number} already trained: {run_dir}")
    else:
        sweep.rep.log(f"final: trial {best.number}'s configuration on train+val -> {run_dir}")
        if sweep.opts.nproc > 1:
            _train_subprocess(sweep, None, params, run_dir, info, FINAL)
        else:
            from ..train import fit

            fit(sweep.config(params, FINAL), out=run_dir, command=_command(sweep, params, run_dir, FINAL),
                recipe_sha256=sweep.recipe_sha, reporter=Reporter(quiet=True), extra_inputs={"sweep": info},
                overwrite=True)
    m = RunDir(run_dir).manifest()
    train_info = train_info_of(m) or TrainInfo()
    final = {"run_dir": "final", "best_trial": best.number, "params": params, "best_value": best.value,
             "test_top1": train_info.test_top1, "val_top1_monitor": train_info.best_val_top1,
             "split_sizes": (m.get("inputs") or {}).get("split_sizes")}
    sweep.rep.log(f"final: test top-1 {final['test_top1']:.2f} (trial {best.number}: "
                  f"{', '.join(f'{k}={v}' for k, v in params.items())})" if final["test_top1"] is not None else
                  "final: no test split")
    return final
