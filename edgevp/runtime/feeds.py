"""Inputs of a multi-task pack (numpy only), read by the device and profile and written by `edgevp pack`: the wire
names of its inputs, task ids, and the task tables of `tables.npz` bound to their pack."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from ..errors import ConfigError, IncompatibleError

IMAGES, TASK = "images", "task"
IDENTITY = "tables_sha256"  # in tasks.json and pack.json: binds tables.npz to its pack
TABLES = "tables.npz"
TABLES_FILE = "tables_file"  # in tasks.json while an add/remove commits: the (versioned) tables file it is bound to


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
    path = tables_path(model_path)
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
    check_bound(path, list(wanted), tables)
    # row ids stay int64, fp16 tables (pack --table-dtype float16) are the graph's fp16 inputs
    return {k: tables[k] if k.startswith("kv_row_") or tables[k].dtype == np.float16 else tables[k].astype(np.float32)
            for k in wanted}


def tables_path(model_path: str | Path) -> Path:
    """The tables file of the pack beside `model_path`: the one its tasks.json names (`tables_file`: a versioned name
    for the moment between an add/remove's commit and its clean-up), else `tables.npz`."""
    folder = Path(model_path).parent
    try:
        doc = json.loads((folder / "tasks.json").read_text())
    except (OSError, ValueError):
        return folder / TABLES
    name = doc.get(TABLES_FILE) if isinstance(doc, dict) else None
    ok = isinstance(name, str) and name.startswith("tables") and name.endswith(".npz") and "/" not in name
    return folder / name if ok else folder / TABLES


def live_tasks(doc: dict) -> dict[int, dict]:
    """Task id -> record of the tasks a pack serves (tasks.json's `tasks`; ids of removed tasks are `retired`)."""
    tasks = doc.get("tasks") if isinstance(doc, dict) else None
    if not isinstance(tasks, list):
        return {}
    return {int(t.get("id", i)): t for i, t in enumerate(tasks) if isinstance(t, dict)}


def retired_ids(doc: dict) -> dict[int, dict]:
    """Retired task id -> its record (`--remove`d tasks: their ids give NaN logits and are never reused)."""
    retired = doc.get("retired") if isinstance(doc, dict) else None
    return {int(r["id"]): r for r in retired if isinstance(r, dict) and "id" in r} if isinstance(retired, list) else {}


def tables_identity(names: list[str], tasks: list, tables: dict[str, np.ndarray]) -> str:
    """sha256 over the graph's table inputs `names`, the pack's task list and those tables (dtype, shape, bytes)."""
    h = hashlib.sha256(json.dumps({"inputs": sorted(names), "tasks": tasks}, sort_keys=True).encode())
    for name in sorted(names):
        a = np.ascontiguousarray(tables[name])
        h.update(f"{name}:{a.dtype.str}:{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def check_bound(path: Path, names: list[str], tables: dict[str, np.ndarray]) -> None:
    """Refuse tables that are not the ones the pack's `tasks.json` (beside them) records: another pack's, or edited
    by hand. A tasks.json from before tables were bound records none."""
    side = path.parent / "tasks.json"
    try:
        doc = json.loads(side.read_text())
    except FileNotFoundError:
        raise IncompatibleError(f"'{side}' is missing: it binds '{path.name}' to its pack",
                                "copy the pack's tasks.json beside the model") from None
    except (OSError, ValueError) as e:
        raise IncompatibleError(f"'{side}' is unreadable: {e}") from None
    want = doc.get(IDENTITY) if isinstance(doc, dict) else None
    if want is not None and tables_identity(names, doc.get("tasks"), tables) != want:
        raise IncompatibleError(f"'{path}' holds other tables than the pack's tasks.json records (another pack's, or "
                                "edited)", "copy the pack's own tables.npz and tasks.json, or write new ones with "
                                "`edgevp pack ... --update-tables`")


def num_tasks(model_path: str | Path, tables: dict[str, np.ndarray], metadata: dict[str, str]) -> int:
    """How many tasks a pack serves: the tables' task axis, else the tasks listed in its metadata."""
    if tables:
        return len(tables["head_weight"])
    return len(json.loads(metadata.get("tasks", "[]")))
