"""Experiment tracking (`train.track`): scalars per step and per epoch, the flattened config as hyper-parameters and
the final metrics, sent to TensorBoard (RUN/tb/) or MLflow (`sqlite:///RUN/mlflow.db` unless MLFLOW_TRACKING_URI is set).

The run directory stays the source of truth; trackers are copies for browsing. Only rank 0 tracks. Backends are
imported when a run starts, never by `import edgevp`; a missing one is one line (exit 4) before training starts.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any, Callable

from .config import RunConfig, to_dict
from .errors import MissingError

# tracker name -> (module it needs, the pip extra of edgevp that installs it)
REQUIRES = {"tensorboard": ("tensorboard", "scale"), "mlflow": ("mlflow", "track-mlflow")}


class Tracker:
    """One tracking backend. `start` is called once per (re)start of training with the global step it starts at."""

    def start(self, run_dir: Path, params: dict[str, Any], step: int) -> None:
        raise NotImplementedError

    def scalars(self, values: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def final(self, params: dict[str, Any], metrics: dict[str, float]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


TRACKERS: dict[str, Callable[[], Tracker]] = {}


def register_tracker(name: str):
    def deco(cls):
        TRACKERS[name] = cls
        return cls

    return deco


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def check_available(names: list[str]) -> None:
    """Refuse a tracker whose package is not installed (exit 4, naming the install), before any work."""
    for name in names:
        module, extra = REQUIRES[name]
        if not installed(module):
            raise MissingError(f"train.track lists '{name}', but {module} is not installed",
                               f"pip install 'edgevp[{extra}]', or drop it from train.track")


def flat_params(cfg: RunConfig) -> dict[str, Any]:
    """The config as dotted keys with scalar values (lists and None as text), for hyper-parameter tables."""
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        elif isinstance(value, (bool, int, float, str)):
            out[prefix] = value
        else:
            out[prefix] = str(value)

    walk("", to_dict(cfg))
    return out


@register_tracker("tensorboard")
class TensorBoardTracker(Tracker):
    """Event files in RUN/tb/; a resumed run purges the events after the step it resumes from."""

    def start(self, run_dir: Path, params: dict[str, Any], step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / "tb"), purge_step=step or None)
        if not step:
            self.writer.add_text("config", "\n".join(f"    {k}: {v}" for k, v in params.items()), 0)

    def scalars(self, values: dict[str, float], step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def final(self, params: dict[str, Any], metrics: dict[str, float]) -> None:
        from torch.utils.tensorboard.summary import hparams

        # written into this run's own event file (SummaryWriter.add_hparams would start a sub-run)
        for event in hparams(params, {f"final/{k}": v for k, v in metrics.items()}):
            self.writer.file_writer.add_summary(event)
        for k, v in metrics.items():
            self.writer.add_scalar(f"final/{k}", v, 0)

    def close(self) -> None:
        self.writer.close()


@register_tracker("mlflow")
class MLflowTracker(Tracker):
    """One MLflow run per edgevp run (its id kept in RUN/mlflow_run_id, so a resume continues it)."""

    def start(self, run_dir: Path, params: dict[str, Any], step: int) -> None:
        import mlflow

        # MLflow 3 refuses its file store by default; a SQLite file in the run directory needs no server
        default = f"sqlite:///{(run_dir / 'mlflow.db').resolve()}"
        mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI") or default)
        id_file = run_dir / "mlflow_run_id"
        run_id = id_file.read_text().strip() if step and id_file.is_file() else None
        self.run = mlflow.start_run(run_id=run_id, run_name=None if run_id else run_dir.name)
        id_file.write_text(self.run.info.run_id)
        if run_id is None:
            mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
        self.mlflow = mlflow

    def scalars(self, values: dict[str, float], step: int) -> None:
        self.mlflow.log_metrics({k.replace("/", "_"): v for k, v in values.items()}, step=step)

    def final(self, params: dict[str, Any], metrics: dict[str, float]) -> None:
        self.mlflow.log_metrics({f"final_{k}": v for k, v in metrics.items()})

    def close(self) -> None:
        self.mlflow.end_run()


class Tracking:
    """The trackers of one run (none: every call is a no-op)."""

    def __init__(self, names: list[str]):
        self.trackers = [TRACKERS[n]() for n in names]

    def start(self, run_dir: Path, cfg: RunConfig, step: int) -> None:
        params = flat_params(cfg)
        for t in self.trackers:
            t.start(run_dir, params, step)

    def scalars(self, values: dict[str, Any], step: int) -> None:
        numbers = {k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        for t in self.trackers:
            t.scalars(numbers, step)

    def final(self, cfg: RunConfig, metrics: dict[str, Any]) -> None:
        numbers = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        params = flat_params(cfg)
        for t in self.trackers:
            t.final(params, numbers)

    def close(self) -> None:
        for t in self.trackers:
            t.close()
