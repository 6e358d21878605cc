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
from edgevp.records import TRAIN_INFO_SCHEMA, EpochRecord, TrainInfo, train_info_of
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
