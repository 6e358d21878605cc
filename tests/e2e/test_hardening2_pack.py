"""Issue 22 items 8, 10 and 11 for `pack` and `profile`: a pack's tables are bound to their pack (another pack's
tables or edited ones are one line, exit 6), a killed pack's staging folder is cleaned under the writer lock (a second
pack into the same folder exits 8), and a full disk during `pack` or `profile` is one line, exit 2, with nothing
half-written under a final name."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edgevp.cli import app

from .test_hardening2_outputs import fill, tmpfs

runner = CliRunner()
QUICK = ["--iters", "2", "--warmup", "1", "--rounds", "1"]


def _cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def _one_line(r) -> str:
    out = r.output.strip()
    assert "Traceback" not in out and len(out.splitlines()) == 1, out
    return out


@pytest.fixture(scope="module")
def packs(tmp_path_factory, run_cache):
    """Two runs on one backbone and two packs of them with tables as inputs, in either order (same table shapes)."""
    root = tmp_path_factory.mktemp("pack_bound")
    run_cache.get("vpt2", root / "vpt")
    run_cache.get("lorvp", root / "lorvp")
    for name, order in (("ab", ("vpt", "lorvp")), ("ba", ("lorvp", "vpt"))):
        r = _cli("pack", *(root / o for o in order), "-o", root / name, "--tables-as-inputs", "--gate-images", "8")
        assert r.exit_code == 0, r.output
    return root


def test_the_identity_of_the_tables_is_recorded(packs):
    tasks = json.loads((packs / "ab" / "tasks.json").read_text())
    side = json.loads((packs / "ab" / "pack.json").read_text())
    assert len(tasks["tables_sha256"]) == 64 and side["tables_sha256"] == tasks["tables_sha256"]
    assert tasks["tables_sha256"] != json.loads((packs / "ba" / "tasks.json").read_text())["tables_sha256"]


@pytest.mark.parametrize("change", ["another pack's tables", "edited tables", "no tasks.json"])
def test_tables_not_of_this_pack_are_refused(packs, tmp_path, change):
    pack = shutil.copytree(packs / "ab", tmp_path / "ab")
    assert _cli("profile", pack / "model.onnx", *QUICK, "-o", tmp_path / "p0").exit_code == 0
    if change == "another pack's tables":
        shutil.copyfile(packs / "ba" / "tables.npz", pack / "tables.npz")  # same shapes, other prompts
    elif change == "edited tables":
        with np.load(pack / "tables.npz") as npz:
            tables = {k: npz[k] for k in npz.files}
        tables["head_bias"][0, 0] += 1.0
        np.savez(pack / "tables.npz", **tables)
    else:
        (pack / "tasks.json").unlink()
    for args in (["profile", pack / "model.onnx", *QUICK, "-o", tmp_path / "p1"],
                 ["predict", pack / "model.onnx", tmp_path, "--task", "0"]):
        r = _cli(*args)
        assert r.exit_code == 6, r.output
        line = _one_line(r)
        assert ("is missing: it binds" in line) if change == "no tasks.json" else ("holds other tables" in line)


def test_update_tables_writes_tables_bound_to_the_pack(packs, tmp_path):
    pack = shutil.copytree(packs / "ab", tmp_path / "ab")
    before = json.loads((pack / "tasks.json").read_text())["tables_sha256"]
    r = _cli("pack", packs / "lorvp", packs / "vpt", "-o", pack, "--update-tables", "--gate-images", "8")
    assert r.exit_code == 0, r.output
    after = json.loads((pack / "tasks.json").read_text())["tables_sha256"]
    assert after != before and json.loads((pack / "pack.json").read_text())["tables_sha256"] == after
    assert _cli("profile", pack / "model.onnx", *QUICK, "-o", tmp_path / "p").exit_code == 0
    assert not list(pack.glob(".pack-*"))


def test_a_killed_packs_staging_is_cleaned_and_a_second_pack_exits_8(packs, tmp_path):
    from edgevp.runs import writer_lock

    out = tmp_path / "pack"
    (out / ".pack-killed123").mkdir(parents=True)  # what a pack killed mid-way leaves
    (out / ".pack-killed123" / "model.onnx").write_bytes(b"half")
    with writer_lock(out):
        r = _cli("pack", packs / "vpt", "-o", out, "--gate-images", "8")
        assert r.exit_code == 8 and "being written by another edgevp process" in _one_line(r)
    r = _cli("pack", packs / "vpt", "-o", out, "--gate-images", "8")
    assert r.exit_code == 0, r.output
    assert not list(out.glob(".pack-*")) and (out / "model.onnx").is_file() and not (out / ".edgevp.lock").exists()


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_pack_on_a_full_disk_is_one_line_and_leaves_no_file(packs, tmp_path):
    with tmpfs(tmp_path / "disk", "size=2m") as disk:
        filler = fill(disk, 256 * 1024)  # the pack's ONNX is about 1.2 MB
        out = disk / "pack"
        r = _cli("pack", packs / "vpt", packs / "lorvp", "-o", out, "--tables-as-inputs", "--gate-images", "8")
        assert r.exit_code == 2 and "No space left on device" in _one_line(r), r.output
        assert f"cannot write to '{out}'" in r.output and _files(out) == []
        filler.unlink()
        r = _cli("pack", packs / "vpt", packs / "lorvp", "-o", out, "--tables-as-inputs", "--gate-images", "8")
        assert r.exit_code == 0, r.output
        assert {"model.onnx", "tables.npz", "tasks.json", "pack.json"} <= set(_files(out))


def test_update_tables_on_a_full_disk_leaves_the_pack_as_it_was(packs, tmp_path):
    with tmpfs(tmp_path / "disk", "size=4m") as disk:
        pack = shutil.copytree(packs / "ab", disk / "ab")
        before = {f: (pack / f).read_bytes() for f in _files(pack)}
        fill(disk, 64 * 1024)
        r = _cli("pack", packs / "lorvp", packs / "vpt", "-o", pack, "--update-tables", "--gate-images", "8")
        assert r.exit_code == 2 and "No space left on device" in _one_line(r), r.output
        assert {f: (pack / f).read_bytes() for f in _files(pack)} == before


def test_profile_on_a_full_disk_is_one_line_and_leaves_no_file(packs, tmp_path):
    with tmpfs(tmp_path / "disk", "size=1m") as disk:
        filler = fill(disk, 5 * 1024)  # one 4 KiB page: profile.json fits, profile.csv does not
        r = _cli("profile", packs / "ab" / "model.onnx", *QUICK, "-o", disk / "profile")
        assert r.exit_code == 2 and "No space left on device" in _one_line(r), r.output
        assert _files(disk / "profile") == []
        filler.unlink()
        r = _cli("profile", packs / "ab" / "model.onnx", *QUICK, "-o", disk / "profile")
        assert r.exit_code == 0 and _files(disk / "profile") == ["profile.csv", "profile.json", "profile.md"]


def test_profile_refuses_an_unwritable_output_before_measuring(packs, tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    r = _cli("profile", packs / "ab" / "model.onnx", *QUICK, "-o", a_file / "sub")
    assert r.exit_code == 2 and f"cannot write to '{a_file / 'sub'}'" in _one_line(r)


def test_an_fp16_pack_is_gated_per_task_on_val_and_training_images(packs, tmp_path):
    r = _cli("pack", packs / "vpt", packs / "lorvp", "-o", tmp_path / "p", "--target", "ort-fp16", "--gate-images", "48")
    assert r.exit_code == 0, r.output
    recs = json.loads((tmp_path / "p" / "pack.json").read_text())["accuracy_vs_fp32"]
    assert [r["task"] for r in recs] == [0, 1]
    for rec in recs:  # 32 val images (labelled) topped up with 16 training images
        assert rec["images"] == 48 and rec["labelled_images"] == 32 and rec["confidence"] == 0.95
        assert rec["top1_drop_lower_bound"] <= rec["top1_drop"] and rec["top1_agreement_upper_bound"] >= 0.9
    r = _cli("pack", packs / "vpt", "-o", tmp_path / "q", "--target", "ort-fp16", "--gate-images", "8",
             "--min-agreement", "0.5", "--gate-confidence", "0.6", "--max-drop", "10")
    assert r.exit_code == 0, r.output
    rec = json.loads((tmp_path / "q" / "pack.json").read_text())["accuracy_vs_fp32"][0]
    assert (rec["min_agreement"], rec["confidence"], rec["max_drop"]) == (0.5, 0.6, 10)  # the options reach the gate
