"""The tasks of a pack: its options (`PackOptions`, also the CLI's and the record's), the runs loaded as tasks,
their compatibility (one frozen backbone, one input), each run's own export (the gate's reference), the packed
model and tables, the reserve, and the task records of `tasks.json`. `pipeline.py` (a new pack, new tables) and
`edit.py` (tasks added and removed) both build on it.
"""
from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..config import check_options
from ..errors import ConfigError
from ..io import sha256_file

@dataclass
class PackOptions:
    """Options of `edgevp pack` (the CLI options have the same names)."""

    # the export targets a pack is built for (each a registered export target: tests/e2e/test_pack.py checks it);
    # int8 is not one: its calibration is per task
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
        for name in ("kv_capacity", "max_classes"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
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


def task_records(tasks: list[Task], checkpoint: str) -> list[dict]:
    from ..runs import RunDir

    return [{"id": i, "run": t.run.name, "run_path": str(t.run.resolve()), "run_id": RunDir(t.run).manifest()["run_id"],
             "method": t.cfg.method, "classes": t.classes, "num_classes": len(t.classes),
             "checkpoint_sha256": sha256_file(RunDir(t.run).checkpoint(checkpoint))} for i, t in enumerate(tasks)]


