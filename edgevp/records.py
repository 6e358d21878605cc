"""Typed records of a run's metrics, converted to and from their JSON form here and nowhere else.

    TrainInfo      manifest.json "train_info": what training measured (cost, best epoch, test top-1), with its
                   schema version; written once when training completes, read by reports, sweeps and profiles.
    EpochRecord    one line of metrics.jsonl: an epoch's training sums and, when it was evaluated, its validation
                   metrics (epoch -1: the starting tensors, evaluated only).
    ExportRecord   an export's or a pack's sidecar (model.json, trt-<precision>.json, pack.json ...).
    ProfileRecord  profile.json.
    EvalRecord     eval.json.

No torch: reports and the device side read these records.
"""
from __future__ import annotations

import json
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar

from .errors import IncompatibleError

TRAIN_INFO_SCHEMA = 1
EXPORT_SCHEMA = 1
PROFILE_SCHEMA = 1
EVAL_SCHEMA = 1


@dataclass(frozen=True)
class TrainInfo:
    """manifest.json "train_info". A record written before the schema version existed reads as version 1 with the
    fields it lacks as None; a newer version than this edgevp knows is refused (exit 6)."""

    macs: int | None = None  # analytic MACs per image of the prompted model (ViT, Swin; None: not counted)
    bare_macs: int | None = None  # the same for the bare backbone + head
    trainable_params: int | None = None
    total_params: int | None = None
    prompt_params: int | None = None
    head_params: int | None = None
    train_seconds: float | None = None
    peak_mem_mib: float | None = None
    best_epoch: int | None = None  # -1: the starting tensors (fine-tuning a condensed run) stayed best
    best_val_top1: float | None = None
    test_top1: float | None = None  # None: no test split
    test_loss: float | None = None
    schema_version: int = TRAIN_INFO_SCHEMA

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def metrics(self) -> dict[str, Any]:
        """The measured values, without the schema version (what trackers get as final metrics)."""
        return {k: v for k, v in self.to_json().items() if k != "schema_version"}

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str = "train_info") -> TrainInfo:
        if not isinstance(data, dict):
            raise IncompatibleError(f"{where} is not a JSON object")
        version = data.get("schema_version", 1)
        if not isinstance(version, int) or version > TRAIN_INFO_SCHEMA:
            raise IncompatibleError(f"{where} was written by a newer edgevp (train_info schema {version})",
                                    "upgrade edgevp")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def train_info_of(manifest: dict, where: str = "train_info") -> TrainInfo | None:
    """The run's TrainInfo from its manifest; None while training has not completed."""
    data = manifest.get("train_info")
    return None if data is None else TrainInfo.from_json(data, where)


@dataclass(frozen=True)
class EpochRecord:
    """One line of metrics.jsonl. Fields that are None are left out of the line: an epoch that was not evaluated has
    no val_* keys, the starting tensors' line (epoch -1) has no train_* keys."""

    epoch: int
    train_loss: float | None = None
    train_top1: float | None = None
    lr: float | None = None
    epoch_seconds: float | None = None
    val_loss: float | None = None
    val_top1: float | None = None
    val_top5: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str = "metrics.jsonl") -> EpochRecord:
        if not isinstance(data, dict) or not isinstance(data.get("epoch"), int):
            raise IncompatibleError(f"{where}: a line without an integer epoch")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def with_val(self, metrics: dict[str, float]) -> EpochRecord:
        """This record with an evaluation's {"loss", "top1", "top5"} as its val_* fields."""
        return replace(self, **{f"val_{k}": v for k, v in metrics.items()})


# -- the records the deployment stages write: one header of typed fields each, the rest of the document as `details`
# (what a target, a profiler or an evaluation adds), flattened into the same JSON object. Each carries its schema
# version; a reader refuses a newer one (exit 6) and reads a record written before the version existed as version 1.


@dataclass(frozen=True)
class _StageRecord:
    """Base of the stage records: typed header fields + `details`, read and written as one JSON object."""

    details: dict[str, Any] = field(default_factory=dict, kw_only=True)
    schema_version: int | None = field(default=None, kw_only=True)  # None: this edgevp's (SCHEMA)

    SCHEMA: ClassVar[int] = 1
    WHAT: ClassVar[str] = "record"

    def __post_init__(self):
        if self.schema_version is None:  # a record made here, not read: it is written in this edgevp's schema
            object.__setattr__(self, "schema_version", self.SCHEMA)

    def to_json(self) -> dict[str, Any]:
        head = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("details", "schema_version")}
        return {**head, **self.details, "schema_version": self.schema_version}

    @classmethod
    def from_json(cls, data: Any, where: str):
        if not isinstance(data, dict):
            raise IncompatibleError(f"'{where}' is not a readable edgevp {cls.WHAT} (not a JSON object)",
                                    f"give the {cls.WHAT} edgevp wrote")
        version = data.get("schema_version", 1)
        if not isinstance(version, int) or version > cls.SCHEMA:
            raise IncompatibleError(f"'{where}' was written by a newer edgevp ({cls.WHAT} schema {version})",
                                    "upgrade edgevp")
        head = {f.name for f in fields(cls)} - {"details", "schema_version"}
        missing = [f.name for f in fields(cls) if f.name in head and f.name not in data
                   and f.default is MISSING and f.default_factory is MISSING]
        if missing:
            raise IncompatibleError(f"'{where}' is not a readable edgevp {cls.WHAT} (no {', '.join(missing)})",
                                    f"give the {cls.WHAT} edgevp wrote")
        return cls(**{k: data[k] for k in head if k in data}, schema_version=version,
                   details={k: v for k, v in data.items() if k not in head and k != "schema_version"})

    @classmethod
    def read(cls, path: str | Path):
        """The record in JSON file `path`; one line (exit 6) when it is unreadable or not this record."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise IncompatibleError(f"'{path}' is not a readable edgevp {cls.WHAT} ({e})",
                                    f"give the {cls.WHAT} edgevp wrote") from None
        return cls.from_json(data, str(path))

    def write(self, path: str | Path) -> None:
        from .io import write_json

        write_json(Path(path), self.to_json())


@dataclass(frozen=True)
class ExportRecord(_StageRecord):
    """The sidecar of `edgevp export` (`model.json`, `model.fp16.json`, `trt-<precision>.json` ...) and of `edgevp
    pack` (`pack.json`, kind "pack"): what was made, from what, and whether it passed its gates."""

    status: str  # ok | failed | missing
    target: str
    precision: str  # fp32 | fp16 | int8, from the target (runtime.sidecar.target_precision)
    created_at: str
    files: list[str] = field(default_factory=list)
    kind: str = "export"  # export | pack
    source_run: str | None = None  # an export's run (a pack names its tasks' runs in `tasks`)
    error: str | None = None

    SCHEMA: ClassVar[int] = EXPORT_SCHEMA
    WHAT: ClassVar[str] = "export or pack sidecar"

    def to_json(self) -> dict[str, Any]:
        doc = super().to_json()
        if self.kind == "export":  # an export's sidecar has no kind (its layout before the records were typed)
            doc.pop("kind")
        for name in ("source_run", "error"):  # only where there is one
            if doc[name] is None:
                doc.pop(name)
        return doc


@dataclass(frozen=True)
class ProfileRecord(_StageRecord):
    """`profile.json` of `edgevp profile`: one row per variant and batch, the reference variant the ratios are to,
    the measuring conditions per variant and the machine."""

    rows: list[dict[str, Any]]
    reference: str | None
    conditions: dict[str, Any] = field(default_factory=dict)
    machine: dict[str, Any] = field(default_factory=dict)

    SCHEMA: ClassVar[int] = PROFILE_SCHEMA
    WHAT: ClassVar[str] = "profile.json"

    @classmethod
    def from_json(cls, data: Any, where: str):
        record = super().from_json(data, where)
        if not isinstance(record.rows, list) or not all(isinstance(r, dict) for r in record.rows):
            raise IncompatibleError(f"'{where}' is not a readable edgevp {cls.WHAT} (rows is not a list of objects)",
                                    f"give the {cls.WHAT} edgevp wrote")
        return replace(record, rows=[_task_field(r) for r in record.rows])


def _task_field(row: dict[str, Any]) -> dict[str, Any]:
    """A profile row with the pack's task as its `task` field: profiles written before it was one carried it in the
    artifact's path ("model.onnx#task=2")."""
    artifact, sep, task = str(row.get("artifact") or "").partition("#task=")
    return {**row, "artifact": artifact, "task": task} if sep else row


@dataclass(frozen=True)
class EvalRecord(_StageRecord):
    """`eval.json` of `edgevp eval`: an artifact's top-1/top-5 on a dataset, what the artifact and data were and how
    it compares with the run's PyTorch numbers."""

    artifact: dict[str, Any]  # kind (onnx | engine | pack), precision, name, sha256, task ...
    data: dict[str, Any]  # source, kind (test.npz | folder ...), classes
    images: int
    top1: float
    top5: float
    top5_k: int = 5
    created_at: str = ""
    kind: str = "edgevp-eval"

    SCHEMA: ClassVar[int] = EVAL_SCHEMA
    WHAT: ClassVar[str] = "eval.json"

    @property
    def form(self) -> str:
        """What was evaluated, as the report labels it: fp32 / fp16 / int8, engine-<precision>."""
        precision = str(self.artifact.get("precision"))
        return f"engine-{precision}" if self.artifact.get("kind") == "engine" else precision
