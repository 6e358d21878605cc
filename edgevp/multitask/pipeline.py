"""`edgevp pack RUN [RUN ...] -o DIR`: several trained runs on one shared backbone as one graph.

Checks that the runs share the backbone (name, frozen weights, input size, preprocessing), makes sure each run has
its own folded export (exporting it when missing), stacks the tasks' folded prompts into tables (`tables.py`),
exports the multi-task graph (`model.py`) and gates it: for each task, the pack on that task's validation images
equals the run's own export, and a shuffled mixed-task batch equals the per-sample results. A failed gate leaves
the artifact only as `*.failed` (exit 3). Files in DIR: `model.onnx` (or `model.fp16.onnx`), `tasks.json`,
`pack.json` (the sidecar), `tables.npz` with `tables_as_inputs`, and a TensorRT bundle for `trt-*` targets.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..errors import ConfigError, MissingError, VerificationError
from ..optional import optional
from ..io import write_json
from ..records import ExportRecord
from ..runtime.feeds import IDENTITY, tables_identity
from ..runtime.sidecar import target_precision
from .edit import existing_pack, table_inputs
from .tasks import (PackOptions, Task, build_packed, capacity_record, load_tasks, own_export, task_facts,  # noqa: F401
                    task_records)

def pack(runs: list[str | Path], out: str | Path, opts: PackOptions | None = None) -> dict:
    """Pack `runs` into one multi-task artifact in `out`; returns the sidecar (also written as `pack.json`).

    Raises:
        ConfigError (2): no runs, a run twice, runs on different backbones/inputs, a method with no task form, an
            output that cannot be written (a full disk too: nothing is left under a final name).
        IncompatibleError (6): not a run directory. VerificationError (3): the exactness gate failed.
        BusyError (8): another pack is writing into `out`.

    Example:
        >>> edgevp.pack(["runs/fmnist-vpt", "runs/digits-lorvp"], "runs/pack")
    """
    from ..export.pipeline import writable_dir
    from ..runs import writer_lock

    opts = opts or PackOptions()
    out = Path(out)
    if opts.add or opts.remove:
        from .edit import add_tasks, remove_tasks

        return add_tasks(runs, out, opts) if opts.add else remove_tasks([str(r) for r in runs], out)
    if opts.update_tables:
        existing_pack(out)  # checked before any run is loaded (and again under the lock)
    tasks = load_tasks([Path(r) for r in runs], opts.checkpoint)
    if not opts.update_tables and out.resolve() in {t.run.resolve() for t in tasks}:
        raise ConfigError(f"output '{out}' is one of the runs", "pack into a new directory")
    writable_dir(out)
    with writer_lock(out, staging=".pack-"):  # one pack into a directory at a time; a killed one's staging goes
        if opts.update_tables:
            return update_tables(tasks, out, existing_pack(out), opts)
        sidecar = _pack_into(tasks, out, opts)
    if sidecar["status"] == "failed":
        raise VerificationError(f"pack failed its gate: {sidecar.get('error')}",
                                f"artifact kept as {sidecar['files'][0]} with {out / 'pack.json'}")
    if opts.target.startswith("trt-") and optional("tensorrt") is None:  # as `edgevp export` does: exit 4
        raise MissingError(f"TensorRT is not installed here; the pack's device bundle is in {out / sidecar['files'][0]}"
                           ": copy it to the device and run build_engine.sh there")
    return sidecar


def _pack_into(tasks: list[Task], out: Path, opts: PackOptions) -> dict:
    """Build, gate and install the pack in a `.pack-*` staging folder inside `out` (the writer lock is held)."""
    from .. import __version__
    from ..conformance.bundle import gate_bundle
    from ..export.pipeline import final_name, install_staged
    from ..io import disk_full_is_one_line
    from ..runs import now
    from .bundle import write_trt_bundle
    from .gate import gate_pack
    from .graph import export_pack

    references = [own_export(t, opts) for t in tasks]
    model, tables, fold = build_packed(tasks, opts)
    work = Path(tempfile.mkdtemp(prefix=".pack-", dir=out))
    try:
        with disk_full_is_one_line(work, out):
            onnx_meta = export_pack(model, tables, tasks, opts, fold, work / "model.onnx")
            flat = {k: v.numpy() for k, v in tables.flat().items()} if opts.tables_as_inputs else None
            files = ["model.onnx", *(["tables.npz"] if flat else [])]
            if flat:
                np.savez(work / "tables.npz", **flat)
            gate = gate_pack(work, tasks, references, tables, opts)
            if "accuracy_vs_fp32" in gate:  # the fp16 graph replaced the fp32 one
                files = [f.replace("model.onnx", "model.fp16.onnx") for f in files]
            task_list = task_records(tasks, opts.checkpoint)
            identity = _write_tasks(work, task_list, table_inputs(onnx_meta), flat)
            files.append("tasks.json")
            if opts.target.startswith("trt-"):
                files = [write_trt_bundle(work, files, tasks, opts, gate)]
                gate = gate_bundle(work / files[0], gate)  # every file against the device tools' rules
            status = gate["status"]
            record = ExportRecord(
                status=status, kind="pack", target=opts.target, precision=target_precision(opts.target),
                created_at=now(), files=[final_name(f, status == "failed") for f in files], error=gate.get("error"),
                details={"edgevp_version": __version__, "backbone_sha256": tasks[0].fingerprint, "tasks": task_list,
                         IDENTITY: identity, "fold": fold, "onnx": onnx_meta, "shared": task_facts(tasks[0]),
                         "capacity": capacity_record(tasks, opts), "options": asdict(opts),
                         **{k: v for k, v in gate.items() if k not in ("status", "error")}})
            record.write(work / "pack.json")  # written before anything is installed: a full disk stops here
            sidecar = record.to_json()
        install_staged(work, out, files, failed=status == "failed")
        os.replace(work / "pack.json", out / "pack.json")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return sidecar


def _write_tasks(folder: Path, task_list: list[dict], names: list[str], flat: dict | None) -> str | None:
    """`tasks.json` in `folder`; with tables as inputs it records their identity (`feeds.tables_identity`), which
    binds `tables.npz` to this pack. Returns the identity (None for constant tables)."""
    identity = tables_identity(names, task_list, flat) if flat else None
    from .tables import PAD_LOGIT

    write_json(folder / "tasks.json", {"tasks": task_list, "pad_logit": PAD_LOGIT,
                                       "out_of_range_task": "NaN logits for that sample",
                                       **({IDENTITY: identity} if identity else {})})
    return identity


def update_tables(tasks: list[Task], out: Path, existing: dict, opts: PackOptions) -> dict:
    """New `tables.npz` and `tasks.json` for the graph already in `out` (no new graph): the tasks' tables padded to
    the graph's capacity, gated against each run's own export like a new pack, written into a staging folder and
    swapped in with one commit (`edit.commit`: a full disk or a crash leaves the pack as it was). Task i is RUNS[i]:
    a pack with retired ids (`--remove`) is refused, as this would give them to other tasks."""
    from ..io import disk_full_is_one_line
    from ..runs import now
    from .edit import commit, read_pack
    from .gate import gate_pack
    from .tables import PAD_LOGIT, PackTables, fit_to_capacity

    state = read_pack(out)
    if state.doc.get("retired"):
        ids = ", ".join(str(r["id"]) for r in state.doc["retired"])
        raise ConfigError(f"the pack in '{out}' has retired task ids ({ids}); --update-tables would give them to "
                          "other tasks",
                          "add tasks with --add, or pack the runs into a new directory")
    if tasks[0].fingerprint != existing.get("backbone_sha256"):
        raise ConfigError(f"run '{tasks[0].run}' is on another backbone than the pack in '{out}'",
                          "a pack's tables serve the backbone it was built on")
    opts = PackOptions(**{**asdict(opts), "include_preprocess": existing["options"]["include_preprocess"]})
    capacity = {k: v.shape[1:] for k, v in state.tables.items()}
    references = [own_export(t, opts) for t in tasks]
    _, tables, fold = build_packed(tasks, opts)
    flat = fit_to_capacity(tables.flat(), capacity)
    work = Path(tempfile.mkdtemp(prefix=".pack-", dir=out))
    try:
        with disk_full_is_one_line(work, out):
            shutil.copy2(out / "model.onnx", work / "model.onnx")
            gate = gate_pack(work, tasks, references, PackTables.from_flat(flat), opts)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if gate["status"] != "ok":
        raise VerificationError(f"the new tables fail the exactness gate: {gate['error']}", f"'{out}' is unchanged")
    task_list = task_records(tasks, opts.checkpoint)
    arrays = {k: v.numpy() for k, v in flat.items()}
    identity = tables_identity(table_inputs(existing["onnx"]), task_list, arrays)
    doc = {"tasks": task_list, "pad_logit": PAD_LOGIT, "out_of_range_task": "NaN logits for that sample",
           IDENTITY: identity}
    sidecar = {**existing, "tasks": task_list, IDENTITY: identity, "fold": fold, "tables_updated_at": now(), **gate}
    commit(out, arrays, doc, sidecar)
    return sidecar
