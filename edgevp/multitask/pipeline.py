"""`edgevp pack RUN [RUN ...] -o DIR`: several trained runs on one shared backbone as one graph.

Checks that the runs share the backbone (name, frozen weights, input size, preprocessing), makes sure each run has
its own folded export (exporting it when missing), stacks the tasks' folded prompts into tables (`tables.py`),
exports the multi-task graph (`model.py`) and gates it: for each task, the pack on that task's validation images
equals the run's own export, and a shuffled mixed-task batch equals the per-sample results. A failed gate leaves
the artifact only as `*.failed` (exit 3). Files in DIR: `model.onnx` (or `model.fp16.onnx`), `tasks.json`,
`pack.json` (the sidecar), `tables.npz` with `tables_as_inputs`, and a TensorRT bundle for `trt-*` targets.
"""
from __future__ import annotations

import copy
import hashlib
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from ..config import check_options
from ..errors import ConfigError, MissingError, VerificationError
from ..optional import optional
from ..io import sha256_file, write_json
from ..runtime.feeds import IDENTITY, tables_identity
from ..runtime.sidecar import target_precision
from .edit import existing_pack, table_inputs

TARGETS = ("onnx", "ort-fp16", "trt-fp32", "trt-fp16")


@dataclass
class PackOptions:
    """Options of `edgevp pack` (the CLI options have the same names)."""

    target: Literal["onnx", "ort-fp16", "trt-fp32", "trt-fp16"] = "onnx"
    tables_as_inputs: bool = False  # tables are graph inputs read from tables.npz: add tasks without a rebuild
    include_preprocess: bool = True  # the graph takes [0, 1] images (normalisation inside)
    platform: str = "all"  # the TensorRT platforms the pack must import on (as `edgevp export --platform`)
    opset: int | None = None  # None: the newest opset every platform imports
    checkpoint: Literal["best", "last"] = "best"
    gate_images: int = 32  # images per task for the gates: validation, topped up with training images
    atol: float = 1e-4  # max abs logit difference, pack vs each run's own export
    # fp16: the precision gate per task vs the fp32 pack, as `edgevp export`'s (export/precision.py)
    max_drop: float = 2.0
    min_agreement: float = 0.9
    gate_confidence: float = 0.95
    trt_max_batch: int = 8
    max_tasks: int = 16  # TensorRT with tables as inputs: the task axis of the profile goes up to this
    kv_capacity: int = 0  # tables as inputs: key/value columns every block reserves for tasks added later
    table_dtype: Literal["float32", "float16"] = "float32"  # per-task tables stored in fp16: gated per task (gate.py)
    max_classes: int = 0  # tables as inputs: head columns reserved for tasks added later (0: the widest task's)
    update_tables: bool = False  # keep `out`'s graph (tables as inputs) and write new tables for these runs
    add: bool = False  # add the runs as new tasks of the pack in `out` (edit.add_tasks)
    remove: bool = False  # the "runs" are task ids or run names to remove from the pack in `out` (edit.remove_tasks)

    def __post_init__(self):
        check_options(self)
        if self.kv_capacity < 0 or self.max_classes < 0:
            raise ConfigError(f"kv_capacity and max_classes must be >= 0, got {self.kv_capacity}, {self.max_classes}")
        if self.gate_images < 1 or self.trt_max_batch < 1 or self.max_tasks < 1:
            raise ConfigError("gate_images, trt_max_batch and max_tasks must be >= 1")
        if self.add + self.remove + self.update_tables > 1:
            raise ConfigError("--add, --remove and --update-tables are separate edits of a pack: give one")
        if self.atol < 0 or self.max_drop < 0:
            raise ConfigError("atol and max_drop must be >= 0")
        if self.table_dtype == "float16" and self.target.endswith("fp16"):
            raise ConfigError(f"--table-dtype float16 is for the fp32 targets (onnx, trt-fp32): --target {self.target} "
                              "converts the whole graph to fp16 itself", "drop --table-dtype, or use an fp32 target")
        from ..export.pipeline import check_gate, platform_opset

        check_gate(self)
        self.opset = platform_opset(self.platform, (17, 18), self.opset)


@dataclass
class Task:
    """One run as a task of the pack."""

    run: Path
    cfg: object  # RunConfig
    model: object  # PromptedModel
    header: dict
    classes: list[str]
    fingerprint: str  # sha256 of the frozen backbone's tensors (the classifier excluded)


def backbone_fingerprint(model) -> str:
    """sha256 over the frozen backbone's tensors, the classifier excluded: equal iff the backbones compute alike."""
    work = copy.deepcopy(model)
    backbone = work.detach_method()
    head = {id(p) for p in backbone.get_classifier().parameters()}
    h = hashlib.sha256()
    for name, p in backbone.state_dict(keep_vars=True).items():
        if id(p) not in head:
            h.update(name.encode())
            h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def load_tasks(runs: list[Path], checkpoint: str) -> list[Task]:
    """Load every run; one line and exit 2 for an empty list, a repeated run or the first incompatibility."""
    from ..data import load_splits
    from ..model import load_run
    from ..runs import RunDir

    if not runs:
        raise ConfigError("give at least one run directory to pack")
    seen: dict[Path, Path] = {}
    for r in runs:
        key = Path(r).resolve()
        if key in seen:
            raise ConfigError(f"run '{r}' is given twice", "each task is one run; list it once")
        seen[key] = Path(r)
        RunDir(r).manifest()
    tasks = []
    for r in runs:
        cfg, model, header = load_run(r, checkpoint)
        classes = list(load_splits(cfg.data).classes)
        tasks.append(Task(Path(r), cfg, model, header, classes, backbone_fingerprint(model)))
    _check_compatible(tasks)
    return tasks


def task_facts(t: Task) -> dict[str, object]:
    """What a task shares with every other task of its pack (JSON values: recorded in pack.json as `shared`)."""
    info = t.model.info
    return {"backbone": t.cfg.backbone.name, "input size": list(info.input_size),
            "normalisation mean": list(info.mean), "normalisation std": list(info.std),
            "resize policy": t.cfg.data.resize, "backbone weights (sha256 of the frozen tensors)": t.fingerprint}


def _check_compatible(tasks: list[Task]) -> None:
    first = tasks[0]
    for t in tasks[1:]:
        for (what, want), got in zip(task_facts(first).items(), task_facts(t).values()):
            if want != got:
                raise ConfigError(f"runs '{first.run}' and '{t.run}' differ in {what}: {want} vs {got}",
                                  "a pack shares one backbone: pack runs trained on the same backbone and input")


def own_export(task: Task, opts: PackOptions) -> Path:
    """The run's own folded fp32 export (`RUN/export/model.onnx`), exported now when missing or not comparable."""
    from ..export.pipeline import ExportOptions, export_run
    from ..io import read_json

    onnx_path, side = task.run / "export" / "model.onnx", task.run / "export" / "model.json"
    ok = onnx_path.is_file() and side.is_file()
    if ok:
        meta = read_json(side)
        ok = (meta.get("status") == "ok" and meta.get("fold", {}).get("include_preprocess") == opts.include_preprocess
              and meta.get("source_checkpoint_sha256") == sha256_file(task.run / "checkpoints" /
                                                                         f"{opts.checkpoint}.safetensors"))
    if not ok:
        export_run(task.run, ExportOptions(include_preprocess=opts.include_preprocess, checkpoint=opts.checkpoint))
    return onnx_path


def build_packed(tasks: list[Task], opts: PackOptions):
    """(PackedModel, PackTables, fold report) of the tasks."""
    from ..export.fold import deploy_copy
    from .model import PackedModel
    from .tables import stack_tables, task_fold

    folds, shared = [], None
    for t in tasks:  # one copy at a time; folding reads the backbone, never changes it: the first copy is shared
        work, backbone, _ = deploy_copy(t.model)
        folds.append(task_fold(work, backbone))
        shared = shared or (work, backbone)
    work, backbone = shared
    tables, report = stack_tables(folds, backbone, work.std[0], reserve=opts.tables_as_inputs,
                                  kv_capacity=opts.kv_capacity)
    if opts.tables_as_inputs:
        _reserve_classes(tables, opts.max_classes)
    if opts.table_dtype == "float16":
        import torch

        tables = tables.stored(torch.float16)
    model = PackedModel(backbone, work.mean, work.std, opts.include_preprocess, tables, opts.tables_as_inputs)
    return model, tables, report


def _reserve_classes(tables, max_classes: int) -> None:
    """Widen the head tables to `max_classes` columns (zero weights, PAD_LOGIT biases), so wider tasks fit later."""
    import torch

    from .tables import PAD_LOGIT

    t, c, d = tables.head_weight.shape
    if max_classes > c:
        tables.head_weight = torch.cat([tables.head_weight, torch.zeros(t, max_classes - c, d)], dim=1)
        tables.head_bias = torch.cat([tables.head_bias, torch.full((t, max_classes - c), PAD_LOGIT)], dim=1)


def capacity_record(tasks: list[Task], opts: PackOptions) -> dict | None:
    """The reserve of a pack with tables as inputs (pack.json `capacity`): the task ids it holds at most; its tables'
    columns are the graph's input shapes."""
    if not opts.tables_as_inputs:
        return None
    return {"max_tasks": max(opts.max_tasks, len(tasks)), "kv_capacity": opts.kv_capacity,
            "max_classes": max([opts.max_classes] + [len(t.classes) for t in tasks])}


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
            task_list = _task_records(tasks, opts.checkpoint)
            identity = _write_tasks(work, task_list, table_inputs(onnx_meta), flat)
            files.append("tasks.json")
            if opts.target.startswith("trt-"):
                files = [write_trt_bundle(work, files, tasks, opts, gate)]
                gate = gate_bundle(work / files[0], gate)  # every file against the device tools' rules
            status = gate["status"]
            sidecar = {"status": status, "kind": "pack", "target": opts.target,
                       "precision": target_precision(opts.target), "created_at": now(),
                       "edgevp_version": __version__, "backbone_sha256": tasks[0].fingerprint, "tasks": task_list,
                       IDENTITY: identity, "fold": fold, "onnx": onnx_meta, "shared": task_facts(tasks[0]),
                       "capacity": capacity_record(tasks, opts),
                       "options": {k: v for k, v in asdict(opts).items()}, **{k: v for k, v in gate.items()
                                                                              if k != "status"}}
            sidecar["files"] = [final_name(f, status == "failed") for f in files]
            write_json(work / "pack.json", sidecar)  # written before anything is installed: a full disk stops here
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


def _task_records(tasks: list[Task], checkpoint: str) -> list[dict]:
    from ..runs import RunDir

    return [{"id": i, "run": t.run.name, "run_path": str(t.run.resolve()), "run_id": RunDir(t.run).manifest()["run_id"],
             "method": t.cfg.method, "classes": t.classes, "num_classes": len(t.classes),
             "checkpoint_sha256": sha256_file(RunDir(t.run).checkpoint(checkpoint))} for i, t in enumerate(tasks)]


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
    task_list = _task_records(tasks, opts.checkpoint)
    arrays = {k: v.numpy() for k, v in flat.items()}
    identity = tables_identity(table_inputs(existing["onnx"]), task_list, arrays)
    doc = {"tasks": task_list, "pad_logit": PAD_LOGIT, "out_of_range_task": "NaN logits for that sample",
           IDENTITY: identity}
    sidecar = {**existing, "tasks": task_list, IDENTITY: identity, "fold": fold, "tables_updated_at": now(), **gate}
    commit(out, arrays, doc, sidecar)
    return sidecar
