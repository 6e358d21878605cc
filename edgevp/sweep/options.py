"""Sweep options and the grid: `--grid train.lr=0.1,0.05` parsed and type-checked by the recipe schema, exactly as
`-s train.lr=0.1` is (an unknown key gets the same "did you mean", a wrong type the same message). No optuna here."""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from ..config import RunConfig, check_options
from ..errors import ConfigError
from ..recipe import build_run_config

METRICS = {"val_top1": "maximize", "val_loss": "minimize"}  # metric -> Optuna study direction


@dataclass
class SweepOptions:
    """What to sweep and how; checks itself on construction (the names are the CLI's: `pruner` is `--pruner`).

    `grid` holds `KEY=V1,V2,...` strings (dotted recipe keys, YAML scalar values). `trials`: the study's total
    number of trials; grid: at most the grid's size (default: all of it), tpe/random: default the grid's size.
    `heartbeat`/`grace`: seconds between a running trial's heartbeats, and without one before it counts as dead
    (its worker was killed): it is then marked failed and queued again."""

    grid: list[str] = field(default_factory=list)
    sampler: Literal["grid", "tpe", "random"] = "grid"
    trials: int | None = None
    metric: Literal["val_top1", "val_loss"] = "val_top1"
    pruner: Literal["none", "median", "hyperband"] = "median"
    pruner_startup: int = 5
    storage: str | None = None
    study: str | None = None
    seed: int = 0
    nproc: int = 1
    final: bool = False
    heartbeat: int = 30
    grace: int | None = None
    max_retry: int = 2

    def __post_init__(self):
        check_options(self)
        if not self.grid:
            raise ConfigError("give at least one --grid KEY=V1,V2,...", "example: --grid train.lr=0.1,0.05,0.01")
        for name, low in (("trials", 1), ("nproc", 1), ("heartbeat", 1), ("grace", 1), ("pruner_startup", 0),
                          ("max_retry", 0)):
            value = getattr(self, name)
            if value is not None and value < low:
                raise ConfigError(f"{name} / --{name.replace('_', '-')}: must be >= {low}, got {value}")
        if self.grace is not None and self.grace <= self.heartbeat:
            raise ConfigError(f"grace / --grace: must be longer than --heartbeat ({self.heartbeat} s), got "
                              f"{self.grace}")
        if self.study is not None and not self.study.strip():
            raise ConfigError("study / --study: must not be empty")

    @property
    def direction(self) -> str:
        return METRICS[self.metric]

    @property
    def grace_seconds(self) -> int:
        return self.grace if self.grace is not None else 2 * self.heartbeat


def split_grid_item(item: str) -> tuple[str, list[str]]:
    """'train.lr=0.1,0.05' -> ('train.lr', ['0.1', '0.05']): the key and each value's text, before any check."""
    if "=" not in item:
        raise ConfigError(f"--grid '{item}' is not of the form KEY=V1,V2,...", "example: --grid train.lr=0.1,0.05")
    key, raw = (part.strip() for part in item.split("=", 1))
    if not key:
        raise ConfigError(f"--grid '{item}' has an empty key")
    texts = [t.strip() for t in raw.split(",")]
    if not all(texts):
        raise ConfigError(f"--grid '{item}' has an empty value", "example: --grid train.lr=0.1,0.05,0.01")
    return key, texts


def _get(cfg: RunConfig, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


def resolve_grid(recipe: dict, sets: list[str], items: list[str]) -> dict[str, list[Any]]:
    """{key: [typed values]} of `--grid` items, each value checked by building the run config with it (the same
    messages as `-s`); values are the schema's types (`train.weight_decay=0` gives 0.0). A key given twice, a value
    given twice or a value Optuna cannot store (not a scalar) is refused."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, texts = split_grid_item(item)
        if key == "method":  # before its values are tried: another method's recipe keys are unknown to it
            raise ConfigError("--grid method: sweep one method per study", "run one sweep per recipe")
        if key in grid:
            raise ConfigError(f"--grid {key} is given twice", "give all its values in one --grid KEY=V1,V2")
        typed = []
        for text in texts:
            cfg = build_run_config(recipe, [*sets, f"{key}={text}"])  # the checks and messages of -s
            value = _get(cfg, key)
            if not (value is None or isinstance(value, (str, int, float, bool))):
                raise ConfigError(f"--grid {key}: {text!r} is not a scalar", "grid values are numbers, strings or "
                                                                             "true/false")
            typed.append(value)
        if len(set(map(repr, typed))) != len(typed):
            raise ConfigError(f"--grid {key}: a value is given twice ({', '.join(map(repr, typed))})")
        grid[key] = typed
    return grid


def grid_points(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination, in the order of the keys and values given (the first key varies slowest)."""
    points: list[dict[str, Any]] = [{}]
    for key, values in grid.items():
        points = [{**p, key: v} for p in points for v in values]
    return points


def overrides(params: dict[str, Any]) -> list[str]:
    """`-s` strings that set `params` (YAML scalars, so they round-trip exactly)."""
    return [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().replace(chr(10) + '...', '')}"
            for k, v in params.items()]


def recipe_sha256(recipe: dict, sets: list[str]) -> str:
    """sha256 of the recipe's content (its parsed YAML, so comments do not count) and the -s overrides: what a study
    is tied to (not the resolved config, which a new edgevp's added defaults would change)."""
    return hashlib.sha256(json.dumps({"recipe": recipe, "sets": list(sets)}, sort_keys=True, default=str)
                          .encode()).hexdigest()


def default_study_name(recipe_path: Path) -> str:
    """'recipes/vtab1k/vpt_deep.yaml' -> 'vtab1k-vpt_deep'."""
    parts = [p for p in (recipe_path.parent.name, recipe_path.stem) if p and p not in (".", "recipes")]
    return re.sub(r"[^A-Za-z0-9._-]+", "_", "-".join(parts)) or "sweep"


def short_params(params: dict[str, Any]) -> str:
    """A file-name form of a trial's params: {'train.lr': 0.1, 'train.weight_decay': 0.0} -> 'lr0.1-weight_decay0.0'."""
    text = "-".join(f"{k.rsplit('.', 1)[-1]}{v}" for k, v in params.items())
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)[:80]
