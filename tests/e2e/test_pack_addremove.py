"""`edgevp pack --add RUN... PACK` and `--remove TASK... PACK` on a pack with tables as inputs: the graph stays byte for
byte, the other tasks' logits stay bit-identical, an added task equals its own export, a removed id is retired and
never reused, a failure at any write (or a kill) leaves either the old or the new tables, never a mix, and every
refusal (a foreign run, a full reserve, an unknown id) is one line with its exit code. The device side serves a pack
with its tables bound once and a mixed batch routed per sample."""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from typer.testing import CliRunner

from edgevp.cli import app
from edgevp.errors import EXIT_INCOMPATIBLE, EXIT_USAGE
from edgevp.export.pipeline import ExportOptions, export_run
from edgevp.runtime import feeds
from edgevp.train import fit

from ..conftest import tiny_config

runner = CliRunner()
SMALL = {"limit_train": 48, "limit_val": 16, "limit_test": 16, "batch_size": 16}
GATE = ["--gate-images", "8"]


def _cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def _one_line(r, code: int) -> str:
    out = r.output.strip()
    assert r.exit_code == code, out
    assert "Traceback" not in out and len(out.splitlines()) == 1, out
    return out


def _files(pack: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(pack.iterdir()) if p.is_file() and p.name != ".edgevp.lock"}


def _logits(pack: Path, x: np.ndarray, task: np.ndarray) -> np.ndarray:
    """The pack's logits the plain way (a fresh session, the tables fed): independent of the code under test."""
    sess = ort.InferenceSession(str(pack / "model.onnx"), providers=["CPUExecutionProvider"])
    tables = feeds.load_tables(pack / "model.onnx", {i.name: i.shape for i in sess.get_inputs()})
    return sess.run(None, {"images": x, "task": task.astype(np.int64), **tables})[0]


def _ids(pack: Path) -> tuple[list[int], list[int]]:
    doc = json.loads((pack / "tasks.json").read_text())
    return [t["id"] for t in doc["tasks"]], [r["id"] for r in doc.get("retired", [])]


X = np.random.default_rng(3).random((12, 3, 32, 32), dtype=np.float32)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Tiny runs on one backbone (each exported), one foreign run, and a 2-task pack (kv capacity 3, 4 task ids)."""
    root = tmp_path_factory.mktemp("addremove")
    for name, method, prompt in (("vpt", "vpt", {"num_tokens": 2}), ("lorvp", "lorvp", None),
                                 ("vpt3", "vpt", {"num_tokens": 3}), ("e2vpt", "e2vpt", {"num_tokens": 2, "num_kv": 2})):
        fit(tiny_config(method, prompt, train={"epochs": 1}, data=SMALL), out=root / name)
        if name != "e2vpt":  # refused before its export would be needed
            export_run(root / name, ExportOptions(exporter="legacy"))
    fit(tiny_config("linear", train={"epochs": 1, "seed": 5}, data=SMALL), out=root / "foreign")
    r = _cli("pack", root / "vpt", root / "lorvp", "-o", root / "base", "--tables-as-inputs", "--kv-capacity", "3",
             "--max-tasks", "4", *GATE)
    assert r.exit_code == 0, r.output
    return root


@pytest.fixture(scope="module")
def added(runs):
    """The base pack with vpt3 added, and what the tasks computed before."""
    pack = runs / "added"
    shutil.copytree(runs / "base", pack)
    before = {"files": _files(pack), "logits": _logits(pack, X, np.arange(len(X)) % 2)}
    r = _cli("pack", "--add", runs / "vpt3", pack, *GATE)
    assert r.exit_code == 0, r.output
    assert "done: added task 2 vpt3" in r.output and "other tasks bit-identical" in r.output
    return pack, before


def test_add_keeps_the_graph_and_the_other_tasks_bit_identical(runs, added):
    pack, before = added
    after = _files(pack)
    assert after["model.onnx"] == before["files"]["model.onnx"]  # the graph, and so any engine, is unchanged
    assert after["tables.npz"] != before["files"]["tables.npz"] and set(after) == set(before["files"])
    assert np.array_equal(_logits(pack, X, np.arange(len(X)) % 2), before["logits"])  # bit for bit
    assert _ids(pack) == ([0, 1, 2], [])
    own = ort.InferenceSession(str(runs / "vpt3" / "export" / "model.onnx"), providers=["CPUExecutionProvider"])
    ref = own.run(None, {own.get_inputs()[0].name: X})[0]
    got = _logits(pack, X, np.full(len(X), 2))
    assert np.abs(got[:, :ref.shape[1]] - ref).max() <= 1e-4 and (got.argmax(1) == ref.argmax(1)).all()
    assert not np.allclose(got, before["logits"], atol=1e-3)  # task 2 is not one of the others
    side = json.loads((pack / "pack.json").read_text())
    edit = side["edits"][-1]
    assert edit["op"] == "add" and edit["tasks"] == [2] and edit["others_unchanged"]["bit_identical"]
    assert [p["task"] for p in side["parity"]["per_task"]] == [0, 1, 2]
    assert side["tables_sha256"] == json.loads((pack / "tasks.json").read_text())["tables_sha256"]
    assert "tables_file" not in json.loads((pack / "tasks.json").read_text())  # settled back to tables.npz


def test_remove_retires_the_id_and_a_readded_run_gets_a_new_one(runs, added, tmp_path):
    pack = shutil.copytree(added[0], tmp_path / "pack")
    graph, others = (pack / "model.onnx").read_bytes(), _logits(pack, X, np.arange(len(X)) % 2 + 1)
    with np.load(pack / "tables.npz") as npz:
        rows = len(npz["kv_key_0"])
    r = _cli("pack", "--remove", "0", pack)
    assert "done: removed (ids retired) task 0 vpt" in _one_line(r, 0)
    assert (pack / "model.onnx").read_bytes() == graph and _ids(pack) == ([1, 2], [0])
    assert np.array_equal(_logits(pack, X, np.arange(len(X)) % 2 + 1), others)  # tasks 1 and 2, bit for bit
    assert np.isnan(_logits(pack, X[:2], np.zeros(2))).all()  # the retired id: NaN, never a plausible answer
    with np.load(pack / "tables.npz") as npz:
        assert len(npz["kv_key_0"]) == rows - 1  # vpt's key/value row is freed; the head row stays (ids are stable)
    for task, message in (("0", "was removed already"), ("9", "is not in the pack"), ("vpt", "not in the pack")):
        assert message in _one_line(_cli("pack", "--remove", task, pack), EXIT_USAGE)
    r = _cli("eval", pack / "model.onnx", "--task", "0")
    assert "task 0 of" in _one_line(r, EXIT_USAGE) and "retired" in r.output
    r = _cli("pack", "--add", runs / "vpt", pack, *GATE)
    assert "added task 3 vpt" in _one_line(r, 0)  # the same run again: a new id, 0 stays retired
    assert _ids(pack) == ([1, 2, 3], [0]) and np.array_equal(_logits(pack, X, np.arange(len(X)) % 2 + 1), others)
    r = _cli("pack", "--remove", "vpt", "2", pack)  # by run name and by id
    assert _one_line(r, 0) and _ids(pack) == ([1], [0, 3, 2])


@pytest.mark.parametrize("case", ["foreign run", "task ids", "key/value columns", "run already in"])
def test_refusals_are_one_line_and_leave_the_pack(runs, added, tmp_path, case):
    pack = shutil.copytree(added[0], tmp_path / "pack")
    before = _files(pack)
    args, message = {
        "foreign run": ([runs / "foreign"], "is foreign to the pack"),
        "task ids": ([runs / "e2vpt", runs / "foreign"], "holds at most 4 task ids and has 3 (0 retired): 2 more"),
        "key/value columns": ([runs / "e2vpt"], "needs 4 key/value columns in block 0, the pack reserves 3"),
        "run already in": ([runs / "vpt3"], "is task 2 of the pack"),
    }[case]
    line = _one_line(_cli("pack", "--add", *args, pack, *GATE), EXIT_USAGE)
    assert message in line
    if case in ("task ids", "key/value columns"):  # names the rebuild
        assert "--tables-as-inputs --" + ("max-tasks 5" if case == "task ids" else "kv-capacity 4") in line
    assert _files(pack) == before


def test_a_wider_head_than_reserved_names_the_rebuild(added):
    from edgevp.errors import ConfigError
    from edgevp.multitask.edit import check_reserve, read_pack

    state = read_pack(added[0])
    new = {"head_weight": np.zeros((1, 12, 64), np.float32), "head_bias": np.zeros((1, 12), np.float32)}
    with pytest.raises(ConfigError, match=r"has 12 classes, the pack's head reserves 10 .*--max-classes 12"):
        check_reserve(new, state, "wide", 12)
    check_reserve({k: v[:, :10] for k, v in new.items()}, state, "fits", 10)


def test_edits_of_what_is_not_an_editable_pack(runs, tmp_path):
    assert "holds no pack" in _one_line(_cli("pack", "--remove", "0", tmp_path), EXIT_INCOMPATIBLE)
    assert "give one" in _one_line(_cli("pack", "--add", "--remove", runs / "vpt", runs / "base"), EXIT_USAGE)


def test_a_failure_at_any_write_leaves_the_old_or_the_new_tables(added, tmp_path, monkeypatch):
    """os.replace fails at its k-th call during --remove, for every k until the remove succeeds: after each failure
    the pack serves either the old tables (its files as before) or the new ones (committed), both bound to their
    tasks.json, and the next edit settles what the failure left."""
    old = _files(added[0])
    real, seen = os.replace, []
    for k in range(1, 20):
        pack = shutil.copytree(added[0], tmp_path / f"k{k}")
        calls = []

        def flaky(src, dst, k=k, calls=calls):
            calls.append(dst)
            if len(calls) == k:
                raise OSError("injected failure")
            return real(src, dst)

        monkeypatch.setattr(os, "replace", flaky)
        r = _cli("pack", "--remove", "1", pack)
        monkeypatch.setattr(os, "replace", real)
        live, retired = _ids(pack)
        logits = _logits(pack, X[:4], np.array([0, 1, 2, 1]))  # the tables load: bound to tasks.json
        if r.exit_code == 0:
            assert len(calls) < k and (live, retired) == ([0, 2], [1]) and set(_files(pack)) == set(old)
            break
        if (live, retired) == ([0, 1, 2], []):
            assert {n: b for n, b in _files(pack).items() if n in old} == old  # the old files, byte for byte
            seen.append("old")
        else:
            assert (live, retired) == ([0, 2], [1]) and np.isnan(logits[[1, 3]]).all()
            seen.append("new")
        r = _cli("pack", "--remove", "0", pack)  # the next edit settles what the failure left
        assert r.exit_code == 0 and set(_files(pack)) == set(old), r.output
    assert "old" in seen and "new" in seen and len(seen) == k - 1  # failures before and after the commit point


def test_a_killed_add_leaves_the_old_or_the_new_tables(runs, tmp_path):
    pack = shutil.copytree(runs / "base", tmp_path / "pack")
    old = _files(pack)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    p = subprocess.Popen([sys.executable, "-m", "edgevp", "pack", "--add", str(runs / "vpt3"), str(pack), *GATE],
                         env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    while not (pack / ".edgevp.lock").exists() and p.poll() is None and time.time() - t0 < 120:
        time.sleep(0.01)
    time.sleep(random.Random(0).uniform(0.0, 3.0))
    p.send_signal(signal.SIGKILL)
    p.wait()
    live, _ = _ids(pack)
    assert live in ([0, 1], [0, 1, 2])
    _logits(pack, X[:2], np.array(live[-2:]))  # whichever: its tables load, bound to tasks.json
    if live == [0, 1]:
        assert {n: b for n, b in _files(pack).items() if n in ("model.onnx", "tables.npz", "tasks.json")} == \
            {n: old[n] for n in ("model.onnx", "tables.npz", "tasks.json")}
    r = _cli("pack", "--remove", "1", pack)  # the next edit takes the lock and cleans what the kill left
    assert r.exit_code == 0, r.output
    assert not list(pack.glob(".pack-*")) and not list(pack.glob("tables.*.npz"))


def test_the_device_keeps_the_tables_resident_and_routes_a_mixed_batch(added, monkeypatch):
    from edgevp.device.pack_session import open_pack

    pack = added[0]
    made = []
    real = ort.OrtValue.ortvalue_from_numpy
    monkeypatch.setattr(ort.OrtValue, "ortvalue_from_numpy", staticmethod(lambda *a: made.append(a) or real(*a)))
    served = open_pack(pack)
    assert len(made) == len(served.tables)  # bound once, at open
    task = np.array([2, 0, 1, 1, 2, 0, 7, 2, 0, 1, 2, 1])
    mixed = [served.run(X, task) for _ in range(3)]
    assert len(made) == len(served.tables)  # no table handed to ONNX Runtime again
    plain = _logits(pack, X, task)
    assert all(np.array_equal(m, plain, equal_nan=True) for m in mixed)
    for t in (0, 1, 2):  # each sample of the mixed batch = its task run alone
        alone = served.run(X[task == t], np.full(int((task == t).sum()), t))
        assert np.abs(mixed[0][task == t] - alone).max() <= 1e-5
    assert np.isnan(mixed[0][6]).all() and not np.isnan(np.delete(mixed[0], 6, axis=0)).any()
    assert [p[0] for p in served.predict(X[:3], task[:3])] == [2, 0, 1]
    assert served.classes(2) == [str(i) for i in range(10)]


def test_remove_needs_no_torch(added, tmp_path, no_torch_env):
    """A remove runs on the device itself: numpy and ONNX Runtime, no training stack."""
    pack = shutil.copytree(added[0], tmp_path / "pack")
    r = subprocess.run([sys.executable, "-m", "edgevp", "pack", "--remove", "2", str(pack)], env=no_torch_env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert _ids(pack) == ([0, 1], [2]) and (pack / "model.onnx").read_bytes() == (added[0] / "model.onnx").read_bytes()


def test_add_to_a_pack_with_fp16_tables_keeps_them_fp16_and_uses_the_precision_gate(runs, tmp_path):
    pack = tmp_path / "half"
    loose = ["--min-agreement", "0.5", "--gate-confidence", "0.6", "--max-drop", "50"]  # 8 images: bounds are loose
    r = _cli("pack", runs / "vpt", runs / "lorvp", "-o", pack, "--tables-as-inputs", "--table-dtype", "float16",
             "--kv-capacity", "3", *GATE, *loose)
    assert r.exit_code == 0, r.output
    graph, others = (pack / "model.onnx").read_bytes(), _logits(pack, X, np.arange(len(X)) % 2)
    r = _cli("pack", "--add", runs / "vpt3", pack, *GATE, *loose)
    assert "added task 2 vpt3" in _one_line(r, 0)
    assert (pack / "model.onnx").read_bytes() == graph
    assert np.array_equal(_logits(pack, X, np.arange(len(X)) % 2), others)
    with np.load(pack / "tables.npz") as npz:
        assert npz["head_weight"].dtype == np.float16 and npz["kv_key_0"].dtype == np.float16
    rec = json.loads((pack / "pack.json").read_text())["parity"]["per_task"][-1]
    assert rec["task"] == 2 and rec["fp16_tables"]["failed"] is None and rec["fp16_tables"]["min_agreement"] == 0.5


def test_an_edit_while_another_writes_the_pack_exits_8(added, tmp_path):
    from edgevp.errors import EXIT_BUSY
    from edgevp.runs import writer_lock

    pack = shutil.copytree(added[0], tmp_path / "pack")
    before = _files(pack)
    with writer_lock(pack):
        assert "being written by another edgevp process" in _one_line(_cli("pack", "--remove", "1", pack), EXIT_BUSY)
    assert _files(pack) == before
