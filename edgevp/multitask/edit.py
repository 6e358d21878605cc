"""`edgevp pack --add RUN... PACK` and `edgevp pack --remove TASK... PACK`: change the tasks of a deployed pack whose
tables are graph inputs (`--tables-as-inputs`), its graph (and so its engine) untouched byte for byte.

- Task ids are stable. A new task takes the next id never used (tasks.json `slots`); a removed task's id is retired
  (tasks.json `retired`): its head bias becomes NaN, so a client still sending it gets NaN logits, and it is never
  given to another task. Retired ids keep their head row (the task axis is indexed by id) and count against the
  pack's `max_tasks`.
- Add: the new task's tables, padded to the graph's reserve (head columns, key/value columns per block), are appended
  along the task axis and its key/value rows at the end of each block's table; running out of the reserve is one line
  naming the rebuild. Remove: the task's rows are cleared and key/value rows no task uses any more are dropped (the
  others' rows are re-indexed; they gather the same values).
- Gate, before anything is written: on probe images the other tasks' logits are bit-identical with the old and the
  new tables; an added task equals its own export on its gate images (max abs <= atol, top-1 agreement 1) and in a
  shuffled mixed batch; a removed id gives NaN.
- Commit (`commit`): the new tables go in under a versioned name, then one rename of tasks.json (which names its
  tables file) switches the pack over; `settle` renames them back to tables.npz. A crash before the switch leaves the
  old tables serving, after it the new ones: never a mix. Remove needs no PyTorch (numpy and ONNX Runtime).
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError, IncompatibleError, VerificationError
from ..io import read_json, write_json
from ..records import ExportRecord
from ..runtime.feeds import (IDENTITY, IMAGES, TABLES, TABLES_FILE, TASK, check_bound, live_tasks, retired_ids,
                             tables_identity)

TASK_AXIS_FILL = {"head_bias": np.nan}  # a retired id's head: NaN logits; its masks -inf, its other rows zeros
PROBES_PER_TASK = 2


@dataclass
class PackState:
    """A pack with tables as inputs, as found on disk (under its writer lock)."""

    out: Path
    sidecar: dict  # pack.json
    doc: dict  # tasks.json
    tables: dict[str, np.ndarray]
    names: list[str]  # the graph's table inputs

    @property
    def slots(self) -> int:
        return len(self.tables["head_weight"])

    @property
    def max_tasks(self) -> int:
        cap = self.sidecar.get("capacity") or {}
        return int(cap.get("max_tasks") or max(self.sidecar.get("options", {}).get("max_tasks", 0), self.slots))


def existing_pack(out: Path) -> dict:
    """The sidecar of the pack in `out` whose tables can change (an fp32 ONNX, tables as inputs); exit 6 otherwise."""
    side = out / "pack.json"
    if not side.is_file():
        raise IncompatibleError(f"'{out}' holds no pack (no pack.json)", "pack the runs into it first")
    meta = ExportRecord.read(side).to_json()
    if meta.get("status") != "ok" or not meta.get("options", {}).get("tables_as_inputs") or \
            not (out / "model.onnx").is_file():
        raise IncompatibleError(f"the pack in '{out}' does not take its tables as inputs (or is not an fp32 ONNX "
                                "pack)", "only a pack made with --tables-as-inputs --target onnx can take new tables")
    return meta


def table_inputs(onnx_meta: dict) -> list[str]:
    """The graph's table inputs (every input but the images and the task ids)."""
    return [n for n in onnx_meta["inputs"] if n not in (IMAGES, TASK)]


def read_pack(out: Path) -> PackState:
    """The pack in `out` (exit 6 when it is not one with tables as inputs, or its tables are not bound to it)."""
    from ..runtime.feeds import tables_path

    sidecar = existing_pack(out)
    settle(out)  # finish a change a crash interrupted after its commit
    path = tables_path(out / "model.onnx")
    try:
        doc = read_json(out / "tasks.json")
        with np.load(path) as npz:
            tables = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as e:
        raise IncompatibleError(f"the pack in '{out}' has no readable tasks.json and {path.name}: {e}",
                                "copy the whole pack folder") from None
    names = table_inputs(sidecar["onnx"])
    check_bound(path, names, tables)
    return PackState(out, sidecar, doc, tables, names)


def resolve_ids(specs: list[str], state: PackState) -> list[int]:
    """Task ids from ids or run names; an unknown, retired or repeated one is one line, exit 2."""
    live, retired = live_tasks(state.doc), retired_ids(state.doc)
    by_run = {t.get("run"): i for i, t in live.items()}
    known = ", ".join(f"{i} {t.get('run')}" for i, t in sorted(live.items()))
    ids = []
    for spec in specs:
        i = int(spec) if str(spec).lstrip("-").isdigit() else by_run.get(str(spec))
        if i in retired:
            raise ConfigError(f"task {i} of '{state.out}' was removed already ({retired[i].get('run')}); a retired id "
                              "is never reused", f"the pack's tasks: {known}")
        if i not in live:
            raise ConfigError(f"task '{spec}' is not in the pack '{state.out}'", f"its tasks: {known}")
        if i in ids:
            raise ConfigError(f"task {i} is given twice", "list each task once")
        ids.append(i)
    if len(ids) == len(live):
        raise ConfigError(f"removing every task of '{state.out}' leaves an empty pack", "delete the pack instead")
    return ids


# -- tables ----------------------------------------------------------------------------------------------------------
def _row_tables(name: str) -> tuple[str, str, str, str] | None:
    """(key, value, mask, row index) table names of the key/value block `name` belongs to (None: a task-axis table)."""
    if not name.startswith("kv_"):
        return None
    b = name.rsplit("_", 1)[1]
    return f"kv_key_{b}", f"kv_value_{b}", f"kv_mask_{b}", f"kv_row_{b}"


def _blocks(tables: dict) -> list[str]:
    return sorted({n.rsplit("_", 1)[1] for n in tables if n.startswith("kv_row_")}, key=int)


def _empty_row(tables: dict, b: str) -> int:
    """The index of an all-masked key/value row of block `b` (appended when there is none)."""
    k, v, m, _ = _row_tables(f"kv_row_{b}")
    empty = np.flatnonzero(np.isneginf(tables[m]).all(axis=1))
    if len(empty):
        return int(empty[0])
    tables[k] = np.concatenate([tables[k], np.zeros_like(tables[k][:1])])
    tables[v] = np.concatenate([tables[v], np.zeros_like(tables[v][:1])])
    tables[m] = np.concatenate([tables[m], np.full_like(tables[m][:1], -np.inf)])
    return len(tables[m]) - 1


def check_reserve(new: dict[str, np.ndarray], state: PackState, run: str, classes: int) -> None:
    """Refuse a task that does not fit the graph's reserve, in one line naming the rebuild it needs (exit 2)."""
    rebuild = "a new graph (and engine): edgevp pack RUN... -o NEW_DIR --tables-as-inputs"
    have = state.tables
    width = have["head_weight"].shape[1]
    if classes > width:
        raise ConfigError(f"run '{run}' has {classes} classes, the pack's head reserves {width}",
                          f"{rebuild} --max-classes {classes}")
    for name, t in new.items():
        kv = _row_tables(name)
        if kv and name == kv[0] and np.isfinite(new[kv[2]][new[kv[3]][0]]).any():
            cols = int(np.isfinite(new[kv[2]][new[kv[3]][0]]).sum())
            if name not in have:
                raise ConfigError(f"run '{run}' has key/value prompts in block {name.rsplit('_', 1)[1]}, where the "
                                  "pack reserves no key/value columns", f"{rebuild} --kv-capacity {cols}")
            if cols > have[name].shape[2]:
                raise ConfigError(f"run '{run}' needs {cols} key/value columns in block {name.rsplit('_', 1)[1]}, the "
                                  f"pack reserves {have[name].shape[2]}", f"{rebuild} --kv-capacity {cols}")
        elif not kv and name not in have:
            raise ConfigError(f"run '{run}' needs a '{name}' table that the pack's graph has no input for",
                              rebuild)
        elif not kv and any(n > m for n, m in zip(t.shape[1:], have[name].shape[1:])):
            raise ConfigError(f"run '{run}' needs a '{name}' table of {list(t.shape[1:])}, the pack's graph takes "
                              f"{list(have[name].shape[1:])}", rebuild)


def append_task(tables: dict[str, np.ndarray], new: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`tables` with one more task: `new` (padded to `tables`' shapes by `fit_to_capacity`, one task) appended along
    the task axis, its key/value rows (if any) after the existing rows. Nothing already there changes."""
    out = {k: v.copy() for k, v in tables.items()}
    for name in out:
        if _row_tables(name) is None:
            out[name] = np.concatenate([out[name], new[name].astype(out[name].dtype)])
    for b in _blocks(out):
        k, v, m, r = _row_tables(f"kv_row_{b}")
        row = int(new[r][0])
        if np.isneginf(new[m][row]).all():
            index = _empty_row(out, b)
        else:
            out[k] = np.concatenate([out[k], new[k][row:row + 1].astype(out[k].dtype)])
            out[v] = np.concatenate([out[v], new[v][row:row + 1].astype(out[v].dtype)])
            out[m] = np.concatenate([out[m], new[m][row:row + 1].astype(out[m].dtype)])
            index = len(out[m]) - 1
        out[r] = np.concatenate([out[r], np.asarray([index], out[r].dtype)])
    return out


def retire_tasks(tables: dict[str, np.ndarray], ids: list[int]) -> dict[str, np.ndarray]:
    """`tables` with tasks `ids` cleared (head bias NaN, other task rows zero, key/value rows to an empty row) and the
    key/value rows no task uses dropped. The other tasks gather exactly the values they gathered before."""
    out = {k: v.copy() for k, v in tables.items()}
    for name in out:
        if _row_tables(name) is None:
            out[name][ids] = TASK_AXIS_FILL.get(name, -np.inf if name.endswith("_mask") else 0)
    for b in _blocks(out):
        k, v, m, r = _row_tables(f"kv_row_{b}")
        out[r][ids] = _empty_row(out, b)
        used = np.unique(out[r])
        remap = np.full(len(out[m]), -1, dtype=out[r].dtype)
        remap[used] = np.arange(len(used), dtype=out[r].dtype)
        out[k], out[v], out[m], out[r] = out[k][used], out[v][used], out[m][used], remap[out[r]]
    return out


# -- gate ------------------------------------------------------------------------------------------------------------
def probe_images(sess, n: int, include_preprocess: bool) -> np.ndarray:
    """`n` seeded probe images of the graph's input shape ([0, 1] pixels, or normalised values)."""
    shape = next(i.shape for i in sess.get_inputs() if i.name == IMAGES)[1:]
    rng = np.random.default_rng(0)
    x = rng.random((n, *shape)) if include_preprocess else rng.standard_normal((n, *shape))
    return x.astype(np.float32)


def others_unchanged(sess, old: dict, new: dict, ids: list[int], include_preprocess: bool) -> dict:
    """The tasks `ids` on probe images (a mixed batch) with the old and the new tables: bit-identical or exit 3."""
    from .graph import run_pack

    task = np.repeat(np.asarray(ids, np.int64), PROBES_PER_TASK)
    x = probe_images(sess, len(task), include_preprocess)
    before, after = run_pack(sess, x, task, old), run_pack(sess, x, task, new)
    same = before.shape == after.shape and bool(np.array_equal(before, after))
    if not same:
        raise VerificationError("the other tasks' logits changed with the new tables (they must be bit-identical)",
                                "the pack is unchanged")
    return {"tasks": list(ids), "images": len(task), "bit_identical": True}


def gate_added(sess, out: Path, task, task_id: int, reference: Path, new: dict, others: list[int], opts) -> dict:
    """The added task through the pack vs its own export on its gate images, alone and in a shuffled mixed batch.
    With fp16 tables (`--table-dtype float16`) the task passes the precision gate against its own export instead of
    `atol`, as in a new pack (gate.py); the mixed batch must still equal the per-sample results."""
    from ..export.onnx import compare, run_ort
    from ..export.onnx import session as ort_session
    from ..export.precision import precision_gate
    from .gate import _normalised, task_images
    from .graph import run_pack

    x, y = task_images(task, opts.gate_images)
    x = _normalised(task, x, opts.include_preprocess)
    ref = run_ort(ort_session(reference), x, 8)
    got = run_pack(sess, x, np.full(len(x), task_id), new)
    rep = compare(ref, got[:, :ref.shape[1]])
    fp16 = getattr(opts, "table_dtype", "float32") == "float16"
    if fp16:
        rep["fp16_tables"] = precision_gate(ref, got[:, :ref.shape[1]], y, opts.max_drop, opts.min_agreement,
                                            opts.gate_confidence)
    m = len(y)
    rep.update(task=task_id, run=task.run.name, labelled_images=m,
               top1_pack=float((got[:m].argmax(1) == y).mean() * 100),
               top1_own_export=float((ref[:m].argmax(1) == y).mean() * 100))
    probe_ids = np.repeat(np.asarray(others, np.int64), PROBES_PER_TASK)
    xp = probe_images(sess, len(probe_ids), opts.include_preprocess)
    x_all = np.concatenate([x, xp])
    t_all = np.concatenate([np.full(len(x), task_id), probe_ids])
    single = np.concatenate([got, run_pack(sess, xp, probe_ids, new)])
    order = np.random.default_rng(0).permutation(len(x_all))
    mixed = compare(single[order], run_pack(sess, x_all[order], t_all[order], new))
    alone_ok = not rep["fp16_tables"]["failed"] if fp16 else rep["max_abs"] <= opts.atol and \
        rep["top1_agreement"] == 1.0
    if fp16 and not alone_ok:
        raise VerificationError(f"run '{task.run}' with fp16 tables vs its own export: {rep['fp16_tables']['failed']}",
                                f"'{out}' is unchanged")
    if not (alone_ok and mixed["max_abs"] <= opts.atol and mixed["top1_agreement"] == 1.0):
        raise VerificationError(f"run '{task.run}' through the pack differs from its own export: max abs "
                                f"{rep['max_abs']:.3g}, mixed batch {mixed['max_abs']:.3g} (tolerance {opts.atol:g})",
                                f"'{out}' is unchanged")
    return {"per_task": rep, "mixed_batch": mixed}


# -- commit ----------------------------------------------------------------------------------------------------------
def commit(out: Path, tables: dict[str, np.ndarray], doc: dict, sidecar: dict) -> None:
    """Swap in new tables, tasks.json and pack.json. The tables go in under a versioned name tasks.json does not name
    yet; the rename of tasks.json (naming them) is the one commit point; `settle` then restores the usual names."""
    from ..io import disk_full_is_one_line

    versioned = f"tables.{doc[IDENTITY][:16]}.npz"
    work = Path(tempfile.mkdtemp(prefix=".pack-", dir=out))
    try:
        with disk_full_is_one_line(work, out):
            np.savez(work / TABLES, **tables)
            write_json(work / "tasks.json", {**doc, TABLES_FILE: versioned})
            ExportRecord.from_json(sidecar, "pack.json").write(work / "pack.json")
        os.replace(work / TABLES, out / versioned)  # not named by tasks.json yet: the old tables still serve
        os.replace(work / "tasks.json", out / "tasks.json")  # the commit point
        os.replace(work / "pack.json", out / "pack.json")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    settle(out)


def settle(out: Path) -> None:
    """After a commit (or a crash after one): tables.npz becomes the tables tasks.json names, tasks.json names
    tables.npz again, and versioned or temporary table files nothing names are removed. Each step leaves tasks.json
    naming a whole tables file bound to it."""
    side = out / "tasks.json"
    doc = read_json(side) if side.is_file() else {}
    name = doc.get(TABLES_FILE) if isinstance(doc, dict) else None
    if name and name != TABLES and (out / name).is_file():
        tmp = out / f".{TABLES}.{os.getpid()}.tmp"
        try:
            os.link(out / name, tmp)
        except OSError:
            shutil.copyfile(out / name, tmp)
        os.replace(tmp, out / TABLES)  # the same bytes as the file tasks.json names
        write_json(side, {k: v for k, v in doc.items() if k != TABLES_FILE})
    for stray in [*out.glob("tables.*.npz"), *out.glob(f".{TABLES}.*.tmp")]:
        if stray.name != TABLES:
            stray.unlink(missing_ok=True)


# -- the two commands ------------------------------------------------------------------------------------------------
def add_tasks(runs: list[str | Path], pack: str | Path, opts=None) -> dict:
    """Add each run as a new task of the pack in `pack` (made with tables as inputs); returns the new sidecar.

    The graph is not touched; each new task is gated against its own export, the other tasks' logits stay
    bit-identical, ids are the next never used. Raises ConfigError (2): a run foreign to the pack (another backbone,
    weights, input size or preprocessing), already in it, or beyond the pack's reserve (more task ids than
    `max_tasks`, more key/value columns or classes than reserved: the message names the rebuild); IncompatibleError
    (6): no such pack, or not one with tables as inputs; VerificationError (3): a gate failed (nothing written);
    BusyError (8): another edgevp process writes the pack.

    Example:
        >>> edgevp.add_tasks(["runs/digits-e2vpt"], "runs/pack")
    """
    from dataclasses import asdict

    from ..runs import writer_lock
    from .tasks import PackOptions, load_tasks

    out = Path(pack)
    opts = opts or PackOptions()
    existing_pack(out)  # before any run is loaded (and again under the lock)
    with writer_lock(out, create=False, staging=".pack-"):
        state = read_pack(out)
        if state.slots + len(runs) > state.max_tasks:
            raise ConfigError(f"the pack '{out}' holds at most {state.max_tasks} task ids and has {state.slots} "
                              f"({len(retired_ids(state.doc))} retired): {len(runs)} more do not fit",
                              "a new graph (and engine): edgevp pack RUN... -o NEW_DIR --tables-as-inputs "
                              f"--max-tasks {state.slots + len(runs)}")
        tasks = load_tasks([Path(r) for r in runs], opts.checkpoint)
        _check_foreign(tasks, state, opts.checkpoint)
        packed = state.sidecar["options"]
        opts = PackOptions(**{**asdict(opts), "tables_as_inputs": True, "kv_capacity": 0, "max_classes": 0,
                              "include_preprocess": packed["include_preprocess"],
                              "table_dtype": packed.get("table_dtype", "float32")})
        return _add(tasks, state, opts)


def _check_foreign(tasks, state: PackState, checkpoint: str) -> None:
    """Refuse a run on another backbone / input than the pack's, or one the pack already serves (exit 2)."""
    from .tasks import task_facts

    shared = state.sidecar.get("shared") or {"backbone weights (sha256 of the frozen tensors)":
                                             state.sidecar.get("backbone_sha256")}
    served = {(t.get("run_id"), t.get("checkpoint_sha256")): i for i, t in live_tasks(state.doc).items()}
    for t in tasks:
        for what, want in shared.items():
            got = task_facts(t).get(what)
            if got != want:
                raise ConfigError(f"run '{t.run}' is foreign to the pack '{state.out}': its {what} is {got}, the "
                                  f"pack's {want}", "a pack serves the backbone and input it was built on")
    from .tasks import task_records

    for t, rec in zip(tasks, task_records(tasks, checkpoint)):
        hit = served.get((rec["run_id"], rec["checkpoint_sha256"]))
        if hit is not None:
            raise ConfigError(f"run '{t.run}' is task {hit} of the pack '{state.out}' already",
                              "remove that task first to replace it")


def _add(tasks, state: PackState, opts) -> dict:
    import torch

    from ..runs import now
    from .graph import session
    from .tasks import build_packed, own_export, task_records
    from .tables import fit_to_capacity

    t0 = time.perf_counter()
    capacity = {k: v.shape[1:] for k, v in state.tables.items()}
    tables, ids = state.tables, []
    for t in tasks:
        new = {k: v.numpy() for k, v in build_packed([t], opts)[1].flat().items()}
        check_reserve(new, state, str(t.run), len(t.classes))
        padded = fit_to_capacity({k: torch.from_numpy(v) for k, v in new.items()}, capacity)
        ids.append(len(tables["head_weight"]))
        tables = append_task(tables, {k: v.numpy() for k, v in padded.items()})
    built = time.perf_counter() - t0
    t0 = time.perf_counter()
    references = [own_export(t, opts) for t in tasks]
    sess = session(state.out / "model.onnx")
    live = sorted(live_tasks(state.doc))
    unchanged = others_unchanged(sess, state.tables, tables, live, opts.include_preprocess)
    gates = [gate_added(sess, state.out, t, i, ref, tables, live, opts) for t, i, ref in zip(tasks, ids, references)]
    gated = time.perf_counter() - t0
    records = [{**r, "id": i} for r, i in zip(task_records(tasks, opts.checkpoint), ids)]
    edit = {"op": "add", "tasks": ids, "runs": [t.run.name for t in tasks], "at": now(),
            "others_unchanged": unchanged, "mixed_batch": [g["mixed_batch"] for g in gates],
            "seconds": {"tables": round(built, 4), "gate": round(gated, 4)}}
    return _write(state, tables, [*state.doc.get("tasks", []), *records], [g["per_task"] for g in gates], edit)


def remove_tasks(tasks: list[str | int], pack: str | Path) -> dict:
    """Remove tasks (ids or run names) from the pack in `pack`; their ids are retired, never reused. Needs no PyTorch.

    Raises ConfigError (2): an unknown or already retired task, a task twice, every task; IncompatibleError (6): no
    such pack, or not one with tables as inputs; VerificationError (3): another task's logits would change;
    BusyError (8): another edgevp process writes the pack.

    Example:
        >>> edgevp.remove_tasks([1], "runs/pack")
    """
    from ..runs import now, writer_lock
    from .graph import run_pack, session

    out = Path(pack)
    existing_pack(out)
    with writer_lock(out, create=False, staging=".pack-"):
        state = read_pack(out)
        ids = resolve_ids([str(t) for t in tasks], state)
        t0 = time.perf_counter()
        tables = retire_tasks(state.tables, ids)
        built = time.perf_counter() - t0
        t0 = time.perf_counter()
        sess = session(out / "model.onnx")
        include_preprocess = state.sidecar["options"]["include_preprocess"]
        keep = sorted(set(live_tasks(state.doc)) - set(ids))
        unchanged = others_unchanged(sess, state.tables, tables, keep, include_preprocess)
        gone = run_pack(sess, probe_images(sess, len(ids), include_preprocess), np.asarray(ids, np.int64), tables)
        if not np.isnan(gone).all():
            raise VerificationError("a removed task still gives logits with the new tables", f"'{out}' is unchanged")
        gated = time.perf_counter() - t0
        live = live_tasks(state.doc)
        retired = [{"id": i, "run": live[i].get("run"), "run_id": live[i].get("run_id"),
                    "checkpoint_sha256": live[i].get("checkpoint_sha256"), "retired_at": now()} for i in ids]
        edit = {"op": "remove", "tasks": ids, "runs": [live[i].get("run") for i in ids], "at": now(),
                "others_unchanged": unchanged, "seconds": {"tables": round(built, 4), "gate": round(gated, 4)}}
        kept = [t for t in state.doc.get("tasks", []) if t.get("id") not in ids]
        return _write(state, tables, kept, [], edit, retired)


def edit_line(side: dict, out: str | Path) -> str:
    """The CLI's line for an add or remove."""
    edit = side["edits"][-1]
    sec = edit["seconds"]
    parity = [p for p in side["parity"]["per_task"] if p.get("task") in edit["tasks"]]
    worst = f", max abs vs own export {max(p['max_abs'] for p in parity):.2e}" if parity else ""
    verb = "added" if edit["op"] == "add" else "removed (ids retired)"
    return (f"done: {verb} task {', '.join(f'{i} {r}' for i, r in zip(edit['tasks'], edit['runs']))} in {out}: "
            f"graph unchanged, other tasks bit-identical{worst}; {len(side['tasks'])} tasks, "
            f"{len(side['retired'])} retired ids; tables {sec['tables']:.2f} s + commit {sec['commit']:.2f} s, "
            f"gate {sec['gate']:.2f} s")


def _write(state: PackState, tables: dict, task_list: list[dict], parity: list[dict], edit: dict,
           retired: list[dict] = ()) -> dict:
    """The new tasks.json and pack.json for `tables`, committed; returns the sidecar (with the commit's seconds)."""
    t0 = time.perf_counter()
    identity = tables_identity(state.names, task_list, tables)
    all_retired = [*state.doc.get("retired", []), *retired]
    doc = {**{k: v for k, v in state.doc.items() if k != TABLES_FILE}, "tasks": task_list, "retired": all_retired,
           "slots": len(tables["head_weight"]), "retired_task": "NaN logits for that sample", IDENTITY: identity}
    ids = {t["id"] for t in task_list}
    old = state.sidecar.get("parity") or {}
    per_task = [p for p in old.get("per_task", []) if p.get("task") in ids] + parity
    sidecar = {**state.sidecar, "tasks": task_list, "retired": all_retired, IDENTITY: identity,
               "parity": {**old, "per_task": per_task}, "edits": [*state.sidecar.get("edits", []), edit]}
    commit(state.out, tables, doc, sidecar)
    edit["seconds"]["commit"] = round(time.perf_counter() - t0, 4)
    return sidecar
