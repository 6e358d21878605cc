"""Issue 22 (hardening, round two), the training side: config checked before any image is decoded, `epochs=0`
refused, a resume on a copy of the data that lost its mtimes, recipe links, symlinked class folders, no PyTorch
warning on the normal path, and `--help` showing its <placeholders>."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import typer.main
from PIL import Image
from typer.testing import CliRunner

from edgevp import images
from edgevp.runtime import decode
from edgevp.cli import app

RECIPE = Path(__file__).parents[2] / "recipes" / "tiny" / "vpt_deep.yaml"
runner = CliRunner()


def _one_line(r) -> str:
    out = r.output.strip()
    assert "Traceback" not in out and len(out.splitlines()) == 1, out
    return out


def _folder(root: Path, ext: str = ".png", classes=(0, 1, 2), per_class: int = 8) -> Path:
    """ROOT/c<digit>/<i><ext>: real digit pixels (sklearn), 16x16."""
    from sklearn.datasets import load_digits

    d = load_digits()
    for c in classes:
        (root / f"c{c}").mkdir(parents=True, exist_ok=True)
        for i, img in enumerate(d.images[d.target == c][:per_class]):
            pixels = Image.fromarray((img * 16).clip(0, 255).astype(np.uint8)).resize((16, 16))
            pixels.save(root / f"c{c}" / f"{i}{ext}")
    return root


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """An empty image-check cache: a check that reaches the data must decode every image."""
    monkeypatch.setenv("EDGEVP_CACHE", str(tmp_path / "cache"))


FOLDER = ["-s", "data.name=folder", "-s", "train.epochs=1"]


@pytest.mark.parametrize("sets, code, words", [
    (["backbone.name=not_a_model"], 2, "unknown backbone"),
    (["backbone.name=resnet18", "backbone.weights=offline"], 4, "no offline weights for 'resnet18'"),
    (["backbone.weights={tmp}/nope.safetensors"], 4, "weights file"),
    (["backbone.name=resnet18", "backbone.weights=none"], 2, "needs a timm"),
    (["prompt.num_tokens=-1"], 2, "num_tokens must be >= 0"),
])
def test_config_is_checked_before_any_image_is_decoded(tmp_path, fresh_cache, sets, code, words):
    data = _folder(tmp_path / "data")
    before = decode.decoded_count()
    args = ["train", str(RECIPE), *FOLDER, "-s", f"data.root={data}", "-o", str(tmp_path / "run")]
    for s in sets:
        args += ["-s", s.format(tmp=tmp_path)]
    r = runner.invoke(app, args)
    assert r.exit_code == code and words in _one_line(r), r.output
    assert decode.decoded_count() == before  # not one image decoded
    assert not (tmp_path / "run").exists()  # nor a run directory created


def test_an_unwritable_run_directory_is_found_before_any_image_is_decoded(tmp_path, fresh_cache):
    data = _folder(tmp_path / "data")
    (tmp_path / "a_file").write_text("x")
    before = decode.decoded_count()
    out = tmp_path / "a_file" / "run"
    r = runner.invoke(app, ["train", str(RECIPE), *FOLDER, "-s", f"data.root={data}", "-o", str(out)])
    assert r.exit_code == 2 and "cannot write to" in _one_line(r)
    assert decode.decoded_count() == before


def test_the_decode_counter_counts_the_images_a_training_checks(tmp_path, fresh_cache):
    before = decode.decoded_count()
    images.check_images([str(p) for p in sorted(_folder(tmp_path / "data").rglob("*.png"))])
    assert decode.decoded_count() == before + 24


def test_zero_epochs_is_refused_in_one_line(tmp_path):
    r = runner.invoke(app, ["train", str(RECIPE), "-s", "train.epochs=0", "-o", str(tmp_path / "run")])
    assert r.exit_code == 2 and "train.epochs=0 trains nothing" in _one_line(r)
    assert not (tmp_path / "run").exists()
    r = runner.invoke(app, ["sweep", str(RECIPE), "--grid", "train.epochs=0,1", "-o", str(tmp_path / "sweep")])
    assert r.exit_code == 2 and "train.epochs=0 trains nothing" in _one_line(r)
    assert not (tmp_path / "sweep").exists()


def test_a_recipe_that_is_a_symlink_loop_or_dangling_link_says_so(tmp_path):
    (tmp_path / "a.yaml").symlink_to(tmp_path / "b.yaml")
    (tmp_path / "b.yaml").symlink_to(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").symlink_to(tmp_path / "gone.yaml")
    r = runner.invoke(app, ["train", str(tmp_path / "a.yaml")])
    assert r.exit_code == 2 and "is a symbolic link loop" in _one_line(r)
    r = runner.invoke(app, ["train", str(tmp_path / "c.yaml")])
    assert r.exit_code == 2 and "is a symbolic link to" in _one_line(r) and "which does not exist" in r.output
    r = runner.invoke(app, ["train", str(tmp_path / "nope.yaml")])
    assert r.exit_code == 2 and "not found" in _one_line(r)


def test_a_symlinked_class_folder_is_refused_or_followed_once(tmp_path):
    from edgevp.config import DataConfig
    from edgevp.data import load_splits

    data = _folder(tmp_path / "data")
    (data / "c9").symlink_to(data / "c0", target_is_directory=True)  # the same images as a second class
    r = runner.invoke(app, ["train", str(RECIPE), *FOLDER, "-s", f"data.root={data}", "-o", str(tmp_path / "r")])
    assert r.exit_code == 5 and "'c9' and 'c0'" in _one_line(r) and "through a link" in r.output
    (data / "c9").unlink()
    (data / "c0" / "loop").symlink_to(data, target_is_directory=True)  # a loop inside a class: not followed
    (data / "up").symlink_to(tmp_path, target_is_directory=True)  # a class folder holding the dataset: a loop
    r = runner.invoke(app, ["train", str(RECIPE), *FOLDER, "-s", f"data.root={data}", "-o", str(tmp_path / "r")])
    assert r.exit_code == 5 and "holds the dataset itself (a loop)" in _one_line(r)
    (data / "up").unlink()
    elsewhere = _folder(tmp_path / "elsewhere", classes=(7,))
    (data / "c7").symlink_to(elsewhere / "c7", target_is_directory=True)  # a class kept elsewhere: followed once
    s = load_splits(DataConfig(name="folder", root=str(data), test_fraction=0.0, val_fraction=0.25))
    assert s.classes == ["c0", "c1", "c2", "c7"] and len(s.files) == 32


def test_a_symlinked_class_folder_is_refused_by_eval_too(tmp_path):
    from edgevp.device.evaluate import load_data
    from edgevp.errors import DataError

    data = _folder(tmp_path / "data")
    (data / "c9").symlink_to(data / "c1", target_is_directory=True)
    with pytest.raises(DataError, match="through a link"):
        load_data(data)


def test_a_resume_on_a_copy_that_lost_the_mtimes_compares_content(tmp_path):
    data = _folder(tmp_path / "data", ext=".bmp")  # uncompressed: a pixel can change without changing the size
    out = tmp_path / "run"
    r = runner.invoke(app, ["train", str(RECIPE), *FOLDER, "-s", f"data.root={data}", "-o", str(out)])
    assert r.exit_code == 0, r.output
    fp = json.loads((out / "manifest.json").read_text())["inputs"]["data"]["fingerprint"]
    assert fp["files"] == 24 and len(fp["content_sha256"]) == 64
    copy = tmp_path / "copy"
    shutil.copytree(data, copy, copy_function=shutil.copyfile)  # like `cp -r`: new mtimes
    shutil.rmtree(data)
    copy.rename(data)
    for p in data.rglob("*.bmp"):
        os.utime(p, ns=(p.stat().st_atime_ns, p.stat().st_mtime_ns + 10**9))
    r = runner.invoke(app, ["train", "--resume", str(out)])
    assert r.exit_code == 0, r.output  # the same content: resumed (this run had nothing left to train)
    victim = data / "c1" / "3.bmp"
    raw = bytearray(victim.read_bytes())
    raw[-1] ^= 0xFF  # one pixel, same size, still a valid image
    victim.write_bytes(bytes(raw))
    r = runner.invoke(app, ["train", "--resume", str(out)])
    assert r.exit_code == 6 and "some of their content changed" in _one_line(r)


def test_the_fingerprint_tells_names_sizes_and_content_apart(tmp_path):
    files = []
    for i in range(3):
        f = tmp_path / f"{i}.bin"
        f.write_bytes(bytes([i]) * 100)
        files.append(str(f))
    fp = {**images.fingerprint(files, tmp_path), "content_sha256": images.content_sha256(files, tmp_path)}
    assert images.dataset_change(fp, images.fingerprint(files, tmp_path), files, tmp_path) is None
    os.utime(files[0], ns=(0, 10**9))
    assert images.dataset_change(fp, images.fingerprint(files, tmp_path), files, tmp_path) is None  # same content
    Path(files[1]).write_bytes(b"x" * 100)
    assert "content changed" in images.dataset_change(fp, images.fingerprint(files, tmp_path), files, tmp_path)
    Path(files[2]).write_bytes(b"x" * 101)
    assert "some were changed" in images.dataset_change(fp, images.fingerprint(files, tmp_path), files, tmp_path)
    assert "3 files then, 2 now" in images.dataset_change(fp, images.fingerprint(files[:2], tmp_path), files[:2],
                                                          tmp_path)


def test_decoded_images_are_writable_and_torch_does_not_warn(tmp_path):
    """The normal path (train on an image folder) with PyTorch's "NumPy array is not writable" warning as an error;
    a fresh process, since PyTorch gives that warning once per process."""
    data = _folder(tmp_path / "data")
    assert decode.read_image(data / "c0" / "0.png").flags.writeable
    env = {**os.environ, "EDGEVP_CACHE": str(tmp_path / "cache")}
    r = subprocess.run([sys.executable, "-W", "error:The given NumPy array is not writable:UserWarning", "-m",
                        "edgevp", "-q", "train", str(RECIPE), *FOLDER, "-s", f"data.root={data}", "-o",
                        str(tmp_path / "run")], capture_output=True, text=True, env=env, timeout=600, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "not writable" not in r.stderr


def test_help_shows_every_placeholder_of_every_command():
    """<derived name>, ROOT/<class>/<image>, [0, 1]: what the help texts say is what --help shows."""
    command = typer.main.get_command(app)
    for name, sub in command.commands.items():
        texts = [sub.help or "", sub.epilog or "", *(getattr(p, "help", None) or "" for p in sub.params)]
        wanted = {m for t in texts for m in re.findall(r"<[^<>\s][^<>]*>|\[[^\[\]]+\]", t)}
        r = runner.invoke(app, [name, "--help"], env={"COLUMNS": "400", "TERMINAL_WIDTH": "400"})
        shown = " ".join(r.output.replace("│", " ").split())
        assert r.exit_code == 0 and not [w for w in wanted if " ".join(w.split()) not in shown], (name, wanted)
    r = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "400", "TERMINAL_WIDTH": "400"})
    assert "runs/<derived name>" in r.output
