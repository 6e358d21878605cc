"""Hyper-parameter sweeps on Optuna (`edgevp sweep`): each trial an ordinary run directory, grid / TPE / random
samplers, pruning from the per-epoch validation metric, a shared study storage (SQLite file or any SQLAlchemy URL) for
several workers, and `--final` retraining on train+val. Optuna is imported only when a sweep runs."""
from __future__ import annotations

from .options import SweepOptions
from .runner import run_sweep

__all__ = ["SweepOptions", "run_sweep"]
