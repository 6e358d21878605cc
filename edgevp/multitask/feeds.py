"""Inputs of a multi-task pack on the device side (numpy only): task ids and the task tables of `tables.npz`."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import ConfigError, IncompatibleError

IMAGES, TASK = "images", "task"


def is_pack(input_names: list[str]) -> bool:
    return IMAGES in input_names and TASK in input_names


def task_ids(spec: str, batch: int, num_tasks: int) -> np.ndarray:
    """`mixed` cycles over the tasks (0, 1, ..., T-1, 0, ...); an integer picks one task for the whole batch."""
    if spec == "mixed":
        return (np.arange(batch) % num_tasks).astype(np.int64)
    try:
        t = int(spec)
    except ValueError:
        raise ConfigError(f"--task takes a task id or 'mixed', got '{spec}'") from None
    if not 0 <= t < num_tasks:
        raise ConfigError(f"task {t} is out of range: this pack has tasks 0..{num_tasks - 1}",
                          "see tasks.json beside the model")
    return np.full(batch, t, dtype=np.int64)


def load_tables(model_path: str | Path, inputs: dict[str, list]) -> dict[str, np.ndarray]:
    """The tables a pack with tables as inputs needs, from `tables.npz` beside the model, checked against the
    graph's inputs (`inputs`: name -> shape, dynamic dims as strings or None). {} for a pack with constant tables."""
    wanted = {k: v for k, v in inputs.items() if k not in (IMAGES, TASK)}
    if not wanted:
        return {}
    path = Path(model_path).parent / "tables.npz"
    if not path.is_file():
        raise IncompatibleError(f"'{model_path}' takes its task tables as inputs, but '{path}' is missing",
                                "copy the pack's tables.npz beside the model")
    with np.load(path) as npz:
        tables = {k: npz[k] for k in npz.files}
    for name, shape in wanted.items():
        if name not in tables:
            raise IncompatibleError(f"'{path}' has no table '{name}' that the model needs",
                                    "write the tables with `edgevp pack ... --update-tables` for this model")
        fixed = [(i, d) for i, d in enumerate(shape) if isinstance(d, int) and i > 0]
        if tables[name].ndim != len(shape) or any(tables[name].shape[i] != d for i, d in fixed):
            raise IncompatibleError(f"table '{name}' in '{path}' has shape {list(tables[name].shape)}, the model "
                                    f"takes {shape}", "the table file does not match this model; rewrite it with "
                                    "`edgevp pack ... --update-tables`")
    counts = {len(tables[n]) for n in wanted if not n.startswith(("kv_key_", "kv_value_", "kv_mask_"))}
    if len(counts) != 1:
        raise IncompatibleError(f"the tables in '{path}' disagree on the number of tasks: {sorted(counts)}")
    for n in (n for n in wanted if n.startswith("kv_row_")):
        rows = len(tables[f"kv_key_{n.rsplit('_', 1)[1]}"])
        if tables[n].size and (tables[n].min() < 0 or tables[n].max() >= rows):
            raise IncompatibleError(f"table '{n}' in '{path}' points at rows beyond the {rows} of its key/value table")
    return {k: tables[k] if k.startswith("kv_row_") else tables[k].astype(np.float32) for k in wanted}


def num_tasks(model_path: str | Path, tables: dict[str, np.ndarray], metadata: dict[str, str]) -> int:
    """How many tasks a pack serves: the tables' task axis, else the tasks listed in its metadata."""
    if tables:
        return len(tables["head_weight"])
    return len(json.loads(metadata.get("tasks", "[]")))
