"""Typed stage records (edgevp.records): TrainInfo (manifest train_info) and EpochRecord (metrics.jsonl) convert to
and from JSON losslessly, old records read, newer schemas are refused; training writes them and reports read them;
the dataset loaders return one typed LoadedSplits."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from edgevp.config import DataConfig
from edgevp.errors import EXIT_INCOMPATIBLE, IncompatibleError
from edgevp.records import (TRAIN_INFO_SCHEMA, EpochRecord, EvalRecord, ExportRecord, ProfileRecord, TrainInfo,
                            train_info_of)
from edgevp.runs import RunDir

from ..conftest import tiny_config

INFO = {"macs": 2485120, "bare_macs": 1445248, "trainable_params": 2954, "total_params": 303050, "prompt_params": 2304,
        "head_params": 650, "train_seconds": 3.25, "peak_mem_mib": 812.5, "best_epoch": 1, "best_val_top1": 21.875,
        "test_top1": 18.75, "test_loss": 2.25}


def test_train_info_round_trips_with_its_schema_version_last():
    info = TrainInfo(**INFO)
    assert info.to_json() == {**INFO, "schema_version": TRAIN_INFO_SCHEMA}
    assert list(info.to_json()) == [*INFO, "schema_version"]  # the manifest's key order before the version existed
    assert TrainInfo.from_json(json.loads(json.dumps(info.to_json()))) == info
    assert info.metrics() == INFO  # what trackers get: no schema version among the final metrics


def test_a_train_info_without_schema_version_reads_as_version_1_and_a_newer_one_is_refused():
    old = {k: v for k, v in INFO.items() if k not in ("bare_macs", "peak_mem_mib")}
    info = TrainInfo.from_json({**old, "some_later_key": 1})
    assert (info.schema_version, info.bare_macs, info.peak_mem_mib, info.test_top1) == (1, None, None, 18.75)
    assert train_info_of({}) is None  # training has not completed
    with pytest.raises(IncompatibleError, match=r"newer edgevp \(train_info schema 2\)") as e:
        TrainInfo.from_json({**INFO, "schema_version": TRAIN_INFO_SCHEMA + 1})
    assert e.value.exit_code == EXIT_INCOMPATIBLE
    with pytest.raises(IncompatibleError, match="not a JSON object"):
        TrainInfo.from_json([1, 2])


def test_epoch_record_leaves_out_what_was_not_measured():
    trained = EpochRecord(epoch=0, train_loss=2.5, train_top1=12.5, lr=0.003, epoch_seconds=1.5)
    assert list(trained.to_json()) == ["epoch", "train_loss", "train_top1", "lr", "epoch_seconds"]
    evaluated = trained.with_val({"loss": 2.0, "top1": 25.0, "top5": 62.5})
    assert list(evaluated.to_json()) == [*trained.to_json(), "val_loss", "val_top1", "val_top5"]
    assert evaluated.val_top1 == 25.0 and trained.val_top1 is None
    start = EpochRecord(epoch=-1).with_val({"loss": 2.0, "top1": 9.375, "top5": 50.0})
    assert start.to_json() == {"epoch": -1, "val_loss": 2.0, "val_top1": 9.375, "val_top5": 50.0}
    for r in (trained, evaluated, start):
        assert EpochRecord.from_json(json.loads(json.dumps(r.to_json()))) == r
    with pytest.raises(IncompatibleError, match="without an integer epoch"):
        EpochRecord.from_json({"train_loss": 1.0})


def test_run_dir_appends_cuts_and_reads_typed_records(tmp_path):
    run = RunDir(tmp_path)
    records = [EpochRecord(epoch=e, train_loss=1.0 / (e + 1), train_top1=10.0 * e, lr=0.1, epoch_seconds=0.5)
               for e in range(3)]
    for r in records:
        run.append_epoch(r)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [r.to_json() for r in records] == run.metrics()
    assert run.epochs() == records
    run.keep_epochs_before(2)  # a resume at epoch 2
    assert run.epochs() == records[:2]
    assert (tmp_path / "metrics.jsonl").read_text().splitlines() == lines[:2]  # the kept lines byte for byte
    (tmp_path / "manifest.json").write_text(json.dumps({"schema_version": 1}))
    assert run.train_info() is None
    run.set_train_info(TrainInfo(**INFO))
    assert run.train_info() == TrainInfo(**INFO)
    assert json.loads((tmp_path / "manifest.json").read_text())["train_info"]["schema_version"] == TRAIN_INFO_SCHEMA


def test_training_writes_records_the_report_reads_and_a_newer_train_info_is_refused(tmp_path):
    from edgevp.report import summarize, write_report
    from edgevp.train import fit

    result = fit(tiny_config(train={"epochs": 2, "eval_every": 2}), out=tmp_path / "run")
    run = RunDir(result.run_dir)
    info = run.train_info()
    assert (info.test_top1, info.best_epoch, info.best_val_top1) == (result.test_top1, result.best_epoch,
                                                                     result.best_val_top1)
    assert info.trainable_params == result.params["trainable"] and info.macs == result.macs
    # every line is exactly what its typed record writes back (the typed reading loses nothing)
    assert [r.to_json() for r in run.epochs()] == run.metrics()
    assert [r.val_top1 is None for r in run.epochs()] == [True, False]  # evaluated every 2 epochs
    row = summarize(result.run_dir)
    assert (row["test_top1"], row["val_top1"], row["trainable_params"]) == (info.test_top1, info.best_val_top1,
                                                                            info.trainable_params)
    manifest = run.manifest()
    manifest["train_info"]["schema_version"] = TRAIN_INFO_SCHEMA + 1
    run.manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(IncompatibleError, match="train_info schema"):
        write_report([result.run_dir], tmp_path / "report")


def test_records_import_no_torch():
    code = "import sys, edgevp.records, edgevp.runs; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"


# -- the dataset loaders' one split object -------------------------------------------------------------------------
def test_each_loader_returns_one_typed_split_object(tmp_path):
    from PIL import Image

    from edgevp.data import BUILTIN, LoadedSplits, load_splits

    digits = BUILTIN["digits"](DataConfig(name="digits"))
    assert isinstance(digits, LoadedSplits) and digits.val is None and digits.test is None
    assert len(digits.train) == 1797 and digits.info == {"source": "sklearn.datasets.load_digits"}
    for split, n in (("train", 3), ("val", 2)):
        for c in ("a", "b"):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(np.full((4, 4), 40 * i, np.uint8)).save(tmp_path / split / c / f"{i}.png")
    # the folder loader's own val split is used as it is (not held out of train); no test split: none held out
    s = load_splits(DataConfig(name="folder", root=str(tmp_path), test_fraction=0.0))
    assert (len(s.train), len(s.val), s.test) == (6, 4, None)
    assert s.val.items == sorted(str(p) for p in (tmp_path / "val").rglob("*.png"))
    assert (s.source["root"], s.source["splits"]) == (str(tmp_path), ["train", "val"])


# -- the deployment stages' records: export/pack sidecars, profile.json, eval.json -------------------------------------
EXPORT_DOC = {"status": "ok", "target": "ort-fp16", "precision": "fp16", "created_at": "2026-12-04T00:00:00Z",
              "files": ["model.fp16.onnx"], "source_run": "vpt", "parity": {"max_abs": 1e-5}, "options": {"opset": 17}}
PACK_DOC = {"status": "failed", "kind": "pack", "target": "onnx", "precision": "fp32", "created_at": "t",
            "files": ["model.onnx.failed"], "error": "pack vs own exports max abs 0.3", "tasks": [{"run": "a"}]}
PROFILE_DOC = {"reference": "bare", "rows": [{"variant": "bare", "batch": 1, "p50_ms": 2.0}],
               "conditions": {"bare": {"backend": "ort-cpu"}}, "machine": {"cpu": "x"}, "rounds": 3}
EVAL_DOC = {"kind": "edgevp-eval", "created_at": "t", "artifact": {"kind": "engine", "precision": "int8"},
            "data": {"kind": "test.npz"}, "images": 10, "top1": 90.0, "top5": 100.0, "top5_k": 5, "per_class": []}


@pytest.mark.parametrize("cls, doc", [(ExportRecord, EXPORT_DOC), (ExportRecord, PACK_DOC),
                                      (ProfileRecord, PROFILE_DOC), (EvalRecord, EVAL_DOC)])
def test_stage_records_round_trip_and_carry_their_schema_version(tmp_path, cls, doc):
    record = cls.from_json(doc, "x.json")
    assert record.schema_version == 1  # written before the version existed: read as 1
    assert record.to_json() == {**doc, "schema_version": 1}  # every field kept, the target's own ones too
    record.write(tmp_path / "x.json")
    again = cls.read(tmp_path / "x.json")
    assert again == record and json.loads((tmp_path / "x.json").read_text())["schema_version"] == 1


def test_a_record_made_here_carries_this_edgevps_schema(monkeypatch):
    monkeypatch.setattr(ExportRecord, "SCHEMA", 2)  # as after a change of shape
    made = ExportRecord(status="ok", target="onnx", precision="fp32", created_at="t")
    assert made.schema_version == 2 and made.to_json()["schema_version"] == 2
    assert ExportRecord.from_json(EXPORT_DOC, "m.json").schema_version == 1  # a read record keeps its own


def test_stage_records_typed_fields():
    assert ExportRecord.from_json(EXPORT_DOC, "m.json").kind == "export"
    pack = ExportRecord.from_json(PACK_DOC, "pack.json")
    assert (pack.kind, pack.status, pack.source_run, pack.details["tasks"]) == ("pack", "failed", None, [{"run": "a"}])
    assert "source_run" not in pack.to_json() and "kind" not in ExportRecord.from_json(EXPORT_DOC, "m").to_json()
    assert EvalRecord.from_json(EVAL_DOC, "e").form == "engine-int8"
    old = {"reference": "m", "rows": [{"variant": "m", "artifact": "p/model.onnx#task=2"}]}
    assert ProfileRecord.from_json(old, "p").rows == [{"variant": "m", "artifact": "p/model.onnx", "task": "2"}]
    assert old["rows"][0]["artifact"] == "p/model.onnx#task=2"  # the caller's document is not changed
    bare = ProfileRecord.from_json({"reference": "bare", "rows": []}, "p")  # conditions and machine may be absent
    assert (bare.conditions, bare.machine) == ({}, {})
    assert EvalRecord.from_json({**EVAL_DOC, "artifact": {"kind": "onnx", "precision": "fp16"}}, "e").form == "fp16"


@pytest.mark.parametrize("cls, doc", [(ExportRecord, EXPORT_DOC), (ProfileRecord, PROFILE_DOC),
                                      (EvalRecord, EVAL_DOC)])
def test_stage_records_refuse_newer_schemas_missing_fields_and_non_json(tmp_path, cls, doc):
    with pytest.raises(IncompatibleError, match="newer edgevp") as e:
        cls.from_json({**doc, "schema_version": 99}, "x.json")
    assert e.value.exit_code == 6
    required = next(k for k in doc if k not in ("kind", "created_at", "files", "conditions", "machine", "top5_k"))
    with pytest.raises(IncompatibleError, match=f"no {required}"):
        cls.from_json({k: v for k, v in doc.items() if k != required}, "x.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(IncompatibleError, match="not a readable"):
        cls.read(tmp_path / "bad.json")
    with pytest.raises(IncompatibleError, match="not a JSON object"):
        cls.from_json([1], "x.json")
