"""Issue 22 (hardening, round two), the output side: `report` after `eval`, `eval` on an export directory, images
over Pillow's decompression-bomb limit, a truncated test.npz, outputs that cannot be written and a full disk (a
small tmpfs) in report, eval, predict and training: one line, exit 2, nothing half-written under its final name."""
from __future__ import annotations

import contextlib
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from edgevp.cli import app
from edgevp.errors import MissingError
from edgevp.export.pipeline import ExportOptions, export_run


RECIPE = Path(__file__).parents[2] / "recipes" / "tiny" / "vpt_deep.yaml"


def _cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _one_line(r) -> str:
    out = r.output.strip()
    assert "Traceback" not in out and len(out.splitlines()) == 1, out
    return out


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def bomb_png(path: Path, side: int = 15000) -> Path:
    """A 225-megapixel grey PNG header (and a token of pixel data): Pillow refuses it on opening."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory, run_cache):
    """A linear run exported (onnx) and a VPT run exported (onnx, and a TensorRT bundle without TensorRT), with a
    folder of real digit images."""
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("hardening2")
    lin, vpt = root / "lin", root / "vpt"
    run_cache.get("linear", lin)
    run_cache.get("vpt2", vpt)
    export_run(lin, ExportOptions(exporter="legacy", test_images=64))
    export_run(vpt, ExportOptions(exporter="legacy", test_images=64))
    with contextlib.suppress(MissingError):
        export_run(vpt, ExportOptions(target="trt-fp32", exporter="legacy", simplify="none", gate_images=16))
    d = load_digits()
    folder = root / "digits"
    for c in range(10):
        (folder / str(c)).mkdir(parents=True)
        for j, i in enumerate(np.flatnonzero(d.target == c)[:3]):
            Image.fromarray(np.clip(d.images[i] * 255 / 16, 0, 255).astype(np.uint8)).save(folder / str(c) / f"{j}.png")
    a_file = root / "a_file"
    a_file.write_text("x")
    return {"root": root, "lin": lin, "vpt": vpt, "folder": folder, "file": a_file}


# -- report after eval, eval on a directory ----------------------------------------------------------------------
def test_report_reads_an_evaluated_run_beside_a_profiled_one(world, tmp_path):
    """The README's workflow: export -> profile -> eval -> report (eval's results folder is named model.onnx)."""
    lin, vpt = world["lin"], world["vpt"]
    r = _cli("profile", lin, "--iters", "3", "--warmup", "1", "--rounds", "1")
    assert r.exit_code == 0, r.output
    r = _cli("eval", vpt / "export" / "model.onnx")
    assert r.exit_code == 0, r.output
    assert (vpt / "export" / "eval" / "model.onnx" / "eval.json").is_file()
    r = _cli("report", lin, vpt, "-o", tmp_path / "report")
    assert r.exit_code == 0, r.output
    rows = {row["run"]: row for row in json.loads((tmp_path / "report" / "summary.json").read_text())}
    assert rows["lin"]["latency_p50_ms"] > 0 and "fp32" in rows["vpt"]["deployed_top1_values"]
    assert not list((tmp_path / "report").glob(".staging-*"))


def test_eval_takes_an_export_directory_and_a_bundle_directory(world, tmp_path):
    export = world["vpt"] / "export"
    r = _cli("eval", export, "--json", "-o", tmp_path / "e1")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert doc["artifact"]["name"] == "model.onnx" and doc["data"]["kind"] == "test.npz" and doc["images"] == 32
    r = _cli("eval", export / "trt-fp32", "--json", "-o", tmp_path / "e2")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["top1"] == doc["top1"]


# -- decompression bombs, truncated test.npz ------------------------------------------------------------------------
@pytest.fixture
def bombed(world, tmp_path) -> Path:
    import shutil

    folder = shutil.copytree(world["folder"], tmp_path / "digits")
    bomb_png(folder / "3" / "huge.png")
    return folder


def test_an_image_over_the_pixel_limit_is_skipped_like_an_undecodable_one(world, bombed):
    model = world["vpt"] / "export" / "model.onnx"
    r = _cli("predict", model, bombed, "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output[r.output.index("{"):])
    assert doc["images"] == 30 and doc["skipped"] == 1 and "decompression-bomb" in doc["skipped_images"][0]["error"]
    r = _cli("predict", model, bombed, "--strict")
    assert r.exit_code == 5 and "huge.png" in _one_line(r) and "178,956,970 pixels" in r.output
    r = _cli("eval", model, "--data", bombed, "-o", bombed.parent / "eval")
    assert r.exit_code == 0 and "1 unreadable image(s) skipped" in r.output, r.output
    r = _cli("eval", model, "--data", bombed, "--strict", "-o", bombed.parent / "eval2")
    assert r.exit_code == 5 and "decompression-bomb" in _one_line(r)
    assert "178,956,970 pixels" in CliRunner().invoke(app, ["predict", "--help"], env={"COLUMNS": "300"}).output


def test_training_refuses_an_image_over_the_pixel_limit_by_name(bombed):
    from edgevp.errors import DataError
    from edgevp.images import check_images
    from edgevp.runtime.decode import read_image

    with pytest.raises(DataError, match="huge.png': more than 178,956,970 pixels"):
        check_images([str(p) for p in sorted(bombed.rglob("*.png"))])
    with pytest.raises(DataError, match="decompression-bomb"):
        read_image(bombed / "3" / "huge.png")


def test_a_truncated_test_split_is_one_line_exit_6(world, tmp_path):
    whole = (world["vpt"] / "export" / "test.npz").read_bytes()
    cut = tmp_path / "test.npz"
    cut.write_bytes(whole[: len(whole) // 2])
    r = _cli("eval", world["vpt"] / "export" / "model.onnx", "--data", cut, "-o", tmp_path / "e")
    assert r.exit_code == 6 and "is corrupt or truncated" in _one_line(r)
    assert _files(tmp_path / "e") == []


# -- outputs that cannot be written ---------------------------------------------------------------------------------
@contextlib.contextmanager
def tmpfs(path: Path, *options: str):
    """A size-limited (or read-only) tmpfs at `path`, or a skip where this machine cannot mount one."""
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(options), "tmpfs", str(path)], capture_output=True,
                       check=False)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()[:200]}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def fill(disk: Path, leave: int) -> Path:
    """Fill `disk` up to `leave` bytes free; returns the filler file (delete it to free the space)."""
    st = os.statvfs(disk)
    filler = disk / "filler"
    filler.write_bytes(b"\0" * max(st.f_bavail * st.f_frsize - leave, 0))
    return filler


@pytest.fixture
def read_only(tmp_path):
    """A folder this process cannot write into: chmod where permissions apply, a read-only tmpfs for root."""
    if os.geteuid() != 0:
        folder = tmp_path / "ro"
        folder.mkdir()
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    with tmpfs(tmp_path / "ro", "ro", "size=1m") as folder:
        yield folder


@pytest.mark.parametrize("command", ["report", "eval"])
def test_an_unwritable_output_is_exit_2_with_the_sentence_of_the_others(world, tmp_path, read_only, command):
    args = ([command, world["vpt"]] if command == "report" else [command, world["vpt"] / "export" / "model.onnx"])
    for out in (world["file"] / "sub", read_only / "out"):
        r = _cli(*args, "-o", out)
        assert r.exit_code == 2 and f"cannot write to '{out}" in _one_line(r), r.output
        assert "(choose a writable directory)" in r.output


def test_report_on_a_full_disk_leaves_no_file(world, tmp_path):
    with tmpfs(tmp_path / "disk", "size=2m") as disk:
        filler = fill(disk, 24 * 1024)
        r = _cli("report", world["lin"], world["vpt"], "-o", disk / "report")
        assert r.exit_code == 2 and "No space left on device" in _one_line(r), r.output
        assert _files(disk / "report") == []
        filler.unlink()
        r = _cli("report", world["lin"], world["vpt"], "-o", disk / "report")
        assert r.exit_code == 0 and "report.md" in _files(disk / "report"), r.output


def test_eval_on_a_full_disk_leaves_no_file(world, tmp_path):
    model = world["vpt"] / "export" / "model.onnx"
    with tmpfs(tmp_path / "disk", "size=1m") as disk:
        filler = fill(disk, 8 * 1024)
        r = _cli("eval", model, "-o", disk / "eval")
        assert r.exit_code == 2 and "No space left on device" in _one_line(r), r.output
        assert _files(disk / "eval") == []
        filler.unlink()
        assert _cli("eval", model, "-o", disk / "eval").exit_code == 0
        assert "eval.json" in _files(disk / "eval")


def test_predict_into_a_full_disk_is_one_line(world, tmp_path):
    with tmpfs(tmp_path / "disk", "size=1m") as disk:
        fill(disk, 0)
        with open(disk / "predictions.json", "w") as stdout:
            r = subprocess.run([sys.executable, "-m", "edgevp", "predict", str(world["vpt"] / "export" / "model.onnx"),
                                str(world["folder"]), "--json"], stdout=stdout, stderr=subprocess.PIPE, text=True,
                               timeout=300, check=False)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().count("\n") == 0 and "No space left on device" in r.stderr, r.stderr


def test_training_on_a_full_disk_keeps_every_file_whole_and_resumes(tmp_path):
    with tmpfs(tmp_path / "disk", "size=1m") as disk:
        filler = fill(disk, 48 * 1024)
        out = disk / "run"
        args = ["-q", "train", RECIPE, "-o", out, "-s", "train.epochs=2", "-s", "data.limit_train=64"]
        r = _cli(*args)
        assert r.exit_code == 2 and "No space left on device" in _one_line(r), r.output
        assert not list(out.rglob("*.tmp")) and not list(out.rglob(".*.tmp"))
        json.loads((out / "manifest.json").read_text())  # whole JSON
        for line in (out / "metrics.jsonl").read_text().splitlines() if (out / "metrics.jsonl").exists() else []:
            json.loads(line)
        filler.unlink()
        resumable = (out / "checkpoints" / "resume.pt").is_file()
        r = _cli("train", "--resume", out) if resumable else _cli(*args)
        assert r.exit_code == 0, r.output
        assert json.loads((out / "manifest.json").read_text())["stages"][-1]["status"] == "completed"


@pytest.mark.parametrize("target", ["onnx", "trt-int8"])
def test_export_on_a_full_disk_leaves_no_artifact(world, tmp_path, target):
    """Export stages every file in `.export-*` inside the output and moves them in at the end: a full disk is one
    line, exit 2, and no artifact, bundle or staging folder under the output; with space freed it succeeds."""
    with tmpfs(tmp_path / "disk", "size=16m") as disk:  # room for the artifacts once the filler is gone
        out = disk / "export"
        out.mkdir()
        filler = fill(disk, 64 * 1024)
        args = ["export", world["vpt"], "--target", target, "-o", out, "--exporter", "legacy", "--gate-images", "16",
                "--min-agreement", "0", "--max-drop", "100"]
        r = _cli(*args)
        assert r.exit_code == 2 and "No space left on device" in _one_line(r), r.output
        assert _files(out) == [] and not list(out.glob(".export-*"))
        filler.unlink()
        r = _cli(*args)
        assert r.exit_code in (0, 4), r.output  # 4: a TensorRT bundle is written, TensorRT is not here
        assert (out / ("model.onnx" if target == "onnx" else "trt-int8/model.int8.onnx")).is_file()


def test_condense_on_a_full_disk_is_one_line_and_runs_again(world, tmp_path):
    with tmpfs(tmp_path / "disk", "size=1m") as disk:
        filler = fill(disk, 16 * 1024)
        args = ["-q", "condense", world["vpt"], "-o", disk / "pc", "--keep", "0.5", "--finetune-epochs", "0"]
        r = _cli(*args)
        assert r.exit_code == 2 and "No space left on device" in _one_line(r), r.output
        assert not list((disk / "pc").rglob("*.tmp")) if (disk / "pc").exists() else True
        filler.unlink()
        r = _cli(*args)
        assert r.exit_code == 0, r.output


def test_sweep_on_a_full_disk_is_one_line_and_runs_again(tmp_path):
    """SQLite says 'database or disk is full' (not an OSError): still one line, exit 2, the disk named as the cause;
    the same sweep completes once space is freed."""
    tiny = Path(__file__).parents[2] / "recipes" / "tiny" / "linear.yaml"
    with tmpfs(tmp_path / "disk", "size=4m") as disk:
        filler = fill(disk, 16 * 1024)
        args = ["-q", "sweep", tiny, "-o", disk / "sweep", "--grid", "train.lr=0.01,0.003", "-s", "train.epochs=1",
                "-s", "data.limit_train=64", "-s", "data.limit_val=32", "-s", "data.limit_test=32"]
        r = _cli(*args)
        assert r.exit_code == 2 and "disk is full" in _one_line(r) and "free space on that disk" in r.output, r.output
        filler.unlink()
        r = _cli(*args)
        assert r.exit_code == 0 and "2 complete" in r.output, r.output
