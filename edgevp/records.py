"""Typed records of a run's metrics, converted to and from their JSON form here and nowhere else.

    TrainInfo      manifest.json "train_info": what training measured (cost, best epoch, test top-1), with its
                   schema version; written once when training completes, read by reports, sweeps and profiles.
    EpochRecord    one line of metrics.jsonl: an epoch's training sums and, when it was evaluated, its validation
                   metrics (epoch -1: the starting tensors, evaluated only).

No torch: reports and the device side read these records.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from .errors import IncompatibleError

TRAIN_INFO_SCHEMA = 1


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
