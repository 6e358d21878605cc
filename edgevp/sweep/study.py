"""The Optuna side of a sweep: open the storage, open or create the study, hand out trials.

Storage: any SQLAlchemy URL through Optuna's RDBStorage with heartbeats (a trial whose worker stopped beating for
`grace` seconds is marked FAIL and queued again by RetryHeartbeatStaleTrialCallback). On SQLite every transaction
starts with BEGIN IMMEDIATE and waits up to 60 s for the lock, so several worker processes on one file serialise
their writes instead of failing with "database is locked" or both taking the same queued trial.

Grid: the study's creator queues every grid point as a WAITING trial (`enqueue_trial`); workers only ever take a
queued trial, and taking one is a single locked state change (WAITING -> RUNNING), so each point runs exactly once
however many workers share the study. (Optuna's GridSampler does not promise that: its own docs say distributed
workers may repeat a point.) tpe/random ask the sampler for new trials until the study holds `trials`.
"""
from __future__ import annotations

import contextlib
import fcntl
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

from ..errors import ConfigError, IncompatibleError, MissingError
from ..optional import require
from .options import SweepOptions

ATTR = "edgevp_sweep"  # the study's user attribute that ties it to a grid and a resolved recipe
SQLITE_TIMEOUT_S = 60


def optuna_module():
    """optuna, or one line naming the extra that installs it (exit 4); its own logging kept to warnings (the
    sweep logs each trial itself) and its "experimental feature" warnings (heartbeats) silenced."""
    optuna = require("optuna", "edgevp sweep", "pip install 'edgevp[scale]'")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def shown_url(url: str) -> str:
    """The URL with its password hidden (for messages and sweep.json)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL is shown as given (it has no password field to hide)
        return url


def sqlite_path(url: str) -> Path | None:
    """The database file of a sqlite:/// URL (None for another database or an in-memory one)."""
    from sqlalchemy.engine import make_url

    u = make_url(url)
    return Path(u.database) if u.get_backend_name() == "sqlite" and u.database not in (None, "", ":memory:") else None


@contextlib.contextmanager
def file_lock(url: str) -> Iterator[None]:
    """For a SQLite file: an flock beside it, held while the storage's tables and the study are created (several
    workers may start at once on a new file). Other databases need none (their create is atomic)."""
    path = sqlite_path(url)
    if path is None or not path.parent.is_dir():
        yield
        return
    with open(path.parent / f".{path.name}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _immediate_transactions(engine) -> None:
    """SQLite: let SQLAlchemy emit BEGIN IMMEDIATE itself (pysqlite's implicit BEGIN comes only before a write, so
    a read-then-write transaction of two processes could interleave)."""
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection, _record):
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin(connection):
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections made before the listeners were added


def open_storage(url: str, opts: SweepOptions, on_stale: Callable | None = None):
    """Optuna RDBStorage for `url` with heartbeats; one line (exit 2, or 4 for a missing database driver) when it
    cannot be opened."""
    optuna = optuna_module()
    import sqlalchemy

    try:
        backend = sqlalchemy.engine.make_url(url).get_backend_name()
    except Exception as e:  # noqa: BLE001 - sqlalchemy's ArgumentError for a malformed URL
        raise ConfigError(f"--storage '{url}' is not a database URL ({e})",
                          "give a SQLAlchemy URL, e.g. sqlite:///sweep.db or postgresql://user@host/db") from None
    engine_kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}} if backend == "sqlite" else {}
    stale_kw = ("heartbeat_stale_trial_callback" if hasattr(optuna.storages, "RetryHeartbeatStaleTrialCallback")
                else "failed_trial_callback")
    try:
        with file_lock(url):
            storage = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=opts.heartbeat,
                                                 grace_period=opts.grace_seconds, **{stale_kw: on_stale})
    except ImportError as e:
        raise MissingError(f"the database driver for '{shown_url(url)}' is not installed ({e.__cause__ or e})",
                           "install the database's driver, e.g. pip install 'psycopg[binary]' (PostgreSQL) or "
                           "pymysql (MySQL)") from None
    except Exception as e:  # noqa: BLE001 - any SQLAlchemy/driver error: the URL cannot be opened
        first = str(getattr(e, "orig", None) or e).splitlines()[0]
        full = "disk is full" in first or "No space left" in first  # SQLite's words for ENOSPC
        raise ConfigError(f"cannot open the sweep storage '{shown_url(url)}': {first}",
                          "free space on that disk, or choose another directory" if full else
                          "check the URL, that the database server is reachable, and that the file's folder "
                          "exists") from None
    if backend == "sqlite":
        _immediate_transactions(storage.engine)
    return storage


def retry_callback(opts: SweepOptions, also: Callable | None = None) -> Callable:
    """What a stale (killed worker's) trial gets: queued again with the same params, up to `max_retry` times;
    `also(study, trial)` runs after (the sweep marks the trial's run directory failed)."""
    optuna = optuna_module()
    cls = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) or optuna.storages.RetryFailedTrialCallback
    retry = cls(max_retry=opts.max_retry)

    def on_stale(study, trial):
        retry(study, trial)
        if also is not None:
            also(study, trial)

    return on_stale


def make_pruner(opts: SweepOptions, epochs: int, warmup_epochs: float):
    """median: prune a trial whose metric at an epoch is worse than the median of earlier trials at that epoch,
    after `pruner_startup` finished trials and never during the lr warm-up; hyperband: Optuna's HyperbandPruner
    over epochs; none: never."""
    import math

    optuna = optuna_module()
    if opts.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=opts.pruner_startup,
                                           n_warmup_steps=math.ceil(warmup_epochs))
    if opts.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(epochs, 1))
    return optuna.pruners.NopPruner()


def make_sampler(opts: SweepOptions):
    optuna = optuna_module()
    if opts.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=opts.seed)
    return optuna.samplers.RandomSampler(seed=opts.seed)  # grid: never asked (every trial is queued with its params)


def identity(grid: dict[str, list[Any]], recipe_sha: str, opts: SweepOptions) -> dict:
    """What a study is tied to: joining it with anything else is refused."""
    return {"grid": grid, "recipe_sha256": recipe_sha, "metric": opts.metric, "sampler": opts.sampler}


def _differences(have: dict, want: dict) -> list[str]:
    names = {"grid": "grid", "recipe_sha256": "recipe (with -s)", "metric": "metric", "sampler": "sampler"}
    return [names[k] for k in names if have.get(k) != want.get(k)]


def check_study(storage, name: str, want: dict) -> bool:
    """Whether study `name` exists; refuse (exit 6) one made for another grid, recipe, metric or sampler."""
    optuna = optuna_module()
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return False
    have = study.user_attrs.get(ATTR)
    if have is None:
        return True  # being created by another worker right now (checked again when joining)
    diff = _differences(have, want)
    if diff:
        raise IncompatibleError(f"study '{name}' exists with a different {' and '.join(diff)}",
                                "give another --study NAME (or another --storage), or the same grid and recipe")
    return True


def open_study(storage, name: str, want: dict, points: list[dict], opts: SweepOptions, pruner, sampler,
               wait_s: float = 60.0):
    """Create study `name` (queueing the grid points) or join it; on another worker's half-made study wait for it."""
    optuna = optuna_module()
    with file_lock(storage.url):
        try:
            study = optuna.create_study(study_name=name, storage=storage, direction=opts.direction, pruner=pruner,
                                        sampler=sampler)
        except optuna.exceptions.DuplicatedStudyError:
            study = optuna.load_study(study_name=name, storage=storage, pruner=pruner, sampler=sampler)
        else:
            if opts.sampler == "grid":
                for p in points:
                    study.enqueue_trial(p)
            study.set_user_attr(ATTR, want)  # written last: marks the study complete
            return study
    deadline = time.monotonic() + wait_s
    while (have := study.user_attrs.get(ATTR)) is None:
        if time.monotonic() > deadline:
            raise IncompatibleError(f"study '{name}' exists but its creator never finished setting it up",
                                    "give another --study NAME")
        time.sleep(1.0)
        study = optuna.load_study(study_name=name, storage=storage, pruner=pruner, sampler=sampler)
    diff = _differences(have, want)
    if diff:
        raise IncompatibleError(f"study '{name}' exists with a different {' and '.join(diff)}",
                                "give another --study NAME (or another --storage), or the same grid and recipe")
    return study


def take_queued(study) -> int | None:
    """Take one WAITING trial (RUNNING now, for this worker only); None when the queue is empty."""
    optuna = optuna_module()
    waiting = study._storage.get_all_trials(study._study_id, deepcopy=False,
                                            states=(optuna.trial.TrialState.WAITING,))
    for t in waiting:
        try:
            if study._storage.set_trial_state_values(t._trial_id, state=optuna.trial.TrialState.RUNNING):
                return t._trial_id
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
    return None


def states(study) -> dict[str, int]:
    """Trial counts by state name."""
    out: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


@contextlib.contextmanager
def heartbeat(storage, trial_id: int, interval: int) -> Iterator[None]:
    """Record the trial's heartbeat every `interval` seconds while it runs (a thread; stops with the trial)."""
    stop = threading.Event()

    def beat():
        while True:
            storage.record_heartbeat(trial_id)
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, name=f"edgevp-heartbeat-{trial_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
