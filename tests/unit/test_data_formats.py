"""The benchmark split files users have on disk: VTAB-1k in the shared folder format (NOAH's get_vtab1k.py) and FGVC
in VPT's JSON format. Fixture trees in exactly those layouts, from real pixels (sklearn digits saved as PNG): which
file feeds which split under each protocol, labels and re-indexing, the per-dataset image root, provenance, every
refusal (one DataError line naming file and line, exit 5), a real training run, and the paper recipes."""
from __future__ import annotations

import glob
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from edgevp.cli import app
from edgevp.config import DataConfig, from_dict, load_yaml
from edgevp.data import load_splits
from edgevp.errors import ConfigError, DataError
from edgevp.recipe import build_run_config

from ..conftest import RECIPES, tiny_config

runner = CliRunner()
CLASSES = (3, 5, 8)  # digits used as the fixture's classes 0, 1, 2


def _digit_images():
    from sklearn.datasets import load_digits

    d = load_digits()
    imgs = np.clip(d.images * (255.0 / 16.0), 0, 255).round().astype(np.uint8)
    return {c: imgs[d.target == c] for c in CLASSES}


DIGITS = None


def _png(path: Path, label: int, k: int) -> None:
    """Save the k-th real digit image of fixture class `label` (8×8 upscaled to 16×16) as PNG."""
    global DIGITS
    if DIGITS is None:
        DIGITS = _digit_images()
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(DIGITS[CLASSES[label]][k]).resize((16, 16), Image.NEAREST).save(path)


# -- VTAB-1k folder format -------------------------------------------------------------------------------------------
def make_vtab(root: Path, task: str = "dtd", n_train: int = 4, n_val: int = 2, n_test: int = 2) -> Path:
    """ROOT/<task>/{train800,val200,train800val200,test}.txt with `images/<split>/NNNNNN.png <label>` lines."""
    task_dir = root / task
    lines = {"train800.txt": [], "val200.txt": [], "test.txt": []}
    idx = 0
    for name, split, n, offset in (("train800.txt", "train800val200", n_train, 0),
                                   ("val200.txt", "train800val200", n_val, n_train),
                                   ("test.txt", "test", n_test, n_train + n_val)):
        for k in range(n):
            for label in range(len(CLASSES)):
                rel = f"images/{split}/{idx:06d}.png"
                _png(task_dir / rel, label, offset + k)
                lines[name].append(f"{rel} {label}")
                idx += 1
    lines["train800val200.txt"] = lines["train800.txt"] + lines["val200.txt"]
    for name, content in lines.items():
        (task_dir / name).write_text("\n".join(content) + "\n")
    return task_dir


def _labels(path: Path) -> list[int]:
    return [int(line.split()[1]) for line in path.read_text().splitlines() if line.strip()]


def _rel(ds, base: Path) -> list[str]:
    return [str(Path(p).relative_to(base)) for p in ds.items]


def test_vtab1k_tune_protocol_reads_train800_val200_test(tmp_path):
    task_dir = make_vtab(tmp_path)
    s = load_splits(DataConfig(name="vtab1k", root=str(tmp_path), task="dtd"))
    assert (len(s.train), len(s.val), len(s.test)) == (12, 6, 6)
    assert s.classes == ["0", "1", "2"]
    for ds, name in ((s.train, "train800.txt"), (s.val, "val200.txt"), (s.test, "test.txt")):
        lines = [line.split() for line in (task_dir / name).read_text().splitlines()]
        assert _rel(ds, task_dir) == [p for p, _ in lines]  # in file order, paths relative to the task folder
        assert ds.labels.tolist() == [int(label) for _, label in lines]
    assert s.source["files"] == {"train": ["train800.txt"], "val": "val200.txt", "test": "test.txt"}
    assert set(s.source["sha256"]) == {"train800.txt", "val200.txt", "test.txt"}
    assert s.source["sha256"]["test.txt"] == hashlib.sha256((task_dir / "test.txt").read_bytes()).hexdigest()
    assert s.source["root"] == str(tmp_path) and s.source["task"] == "dtd" and s.source["split_protocol"] == "tune"
    assert s.train.train and not s.val.train  # augmentation only on train


def test_vtab1k_final_protocol_trains_on_train800val200(tmp_path):
    task_dir = make_vtab(tmp_path, task="cifar")
    s = load_splits(DataConfig(name="vtab1k", root=str(tmp_path), task="cifar100", split_protocol="final"))
    assert (len(s.train), len(s.val), len(s.test)) == (18, 6, 6)
    assert s.train.labels.tolist() == _labels(task_dir / "train800val200.txt")
    assert _rel(s.val, task_dir) == [line.split()[0] for line in (task_dir / "val200.txt").read_text().splitlines()]
    assert set(_rel(s.val, task_dir)) <= set(_rel(s.train, task_dir))  # val200 is inside train: monitoring only
    assert s.test.labels.tolist() == _labels(task_dir / "test.txt")
    assert s.source["task"] == "cifar"  # cifar100 is the shared format's folder `cifar`
    assert set(s.source["sha256"]) == {"train800val200.txt", "val200.txt", "test.txt"}


def test_vtab1k_limits_subset_the_given_splits(tmp_path):
    make_vtab(tmp_path)
    s = load_splits(DataConfig(name="vtab1k", root=str(tmp_path), task="dtd", limit_train=6, limit_test=3))
    assert (len(s.train), len(s.val), len(s.test)) == (6, 6, 3)
    assert np.bincount(s.train.labels).tolist() == [2, 2, 2]


def _edit(path: Path, line: int, text: str) -> None:
    lines = path.read_text().splitlines()
    lines[line - 1] = text
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("breakage, message", [
    (lambda d: (d / "test.txt").unlink(), r"split file '.*dtd/test\.txt' not found"),
    (lambda d: _edit(d / "train800.txt", 3, "images/train800val200/000002.png"), r"train800\.txt:3: cannot parse"),
    (lambda d: _edit(d / "train800.txt", 3, "images/train800val200/000002.png two"), r"train800\.txt:3: cannot parse"),
    (lambda d: _edit(d / "val200.txt", 2, "images/train800val200/000013.png -1"),
     r"val200\.txt:2: label -1 is outside 0\.\.46"),
    (lambda d: _edit(d / "test.txt", 4, "images/test/000021.png 47"), r"test\.txt:4: label 47 is outside 0\.\.46"),
    (lambda d: [p.write_text(p.read_text().replace(" 1\n", " 3\n"))
                for p in (d / "train800.txt", d / "val200.txt", d / "test.txt")],
     r"labels of '.*dtd' skip class 1 of 0\.\.3"),
    (lambda d: (d / "images/train800val200/000013.png").unlink(),
     r"val200\.txt:2: image 'images/train800val200/000013\.png' not found"),
    (lambda d: (d / "train800.txt").write_text("\n\n"), r"train800\.txt' is empty"),
])
def test_vtab1k_refusals_name_the_file_and_line(tmp_path, breakage, message):
    task_dir = make_vtab(tmp_path)
    breakage(task_dir)
    with pytest.raises(DataError, match=message) as e:
        load_splits(DataConfig(name="vtab1k", root=str(tmp_path), task="dtd"))
    assert "\n" not in str(e.value)


def test_vtab1k_missing_task_folder(tmp_path):
    make_vtab(tmp_path, task="dtd")
    with pytest.raises(DataError, match=r"task folder '.*kitti' does not exist"):
        load_splits(DataConfig(name="vtab1k", root=str(tmp_path), task="kitti"))


def test_a_bad_split_file_is_exit_5_before_training(tmp_path):
    task_dir = make_vtab(tmp_path / "vtab")
    _edit(task_dir / "val200.txt", 2, "images/train800val200/000013.png x")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(Path(RECIPES, "tiny", "linear.yaml").read_text())
    r = runner.invoke(app, ["train", str(recipe), "--out", str(tmp_path / "run"), "-s", "data.name=vtab1k",
                            "-s", f"data.root={tmp_path / 'vtab'}", "-s", "data.task=dtd"])
    assert r.exit_code == 5, r.output
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "val200.txt:2: cannot parse" in lines[0] and "Traceback" not in r.output
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("data, message", [
    ({"name": "vtab1k", "root": "/x"}, "name=vtab1k needs data.task, one of cifar, cifar100"),
    ({"name": "vtab1k", "task": "dtd"}, "name=vtab1k needs data.root"),
    ({"name": "digits", "task": "dtd"}, "data.task is only for name=vtab1k"),
    ({"name": "vtab1k", "root": "/x", "task": "imagenet"}, "'imagenet' is not one of cifar, cifar100"),
    ({"name": "fgvc", "root": "/x"}, "name=fgvc needs data.dataset, one of cub, nabirds"),
    ({"name": "fgvc", "dataset": "cub"}, "name=fgvc needs data.root"),
    ({"name": "folder", "root": "/x", "dataset": "cub"}, "data.dataset is only for name=fgvc"),
    ({"name": "fgvc", "root": "/x", "dataset": "aircraft"}, "'aircraft' is not one of cub, nabirds"),
    ({"name": "vtab1k", "root": "/x", "task": "dtd", "split_protocol": "all"}, "'all' is not one of tune, final"),
    ({"name": "digits", "crop_pct": 1.5}, r"crop_pct must be in \(0, 1\]"),
])
def test_config_refusals(data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(DataConfig, data, "data")


def test_final_protocol_merges_a_held_out_val_back_into_train():
    tune = load_splits(DataConfig(name="digits", limit_train=64, limit_val=32, limit_test=16))
    final = load_splits(DataConfig(name="digits", limit_train=64, limit_val=32, limit_test=16, split_protocol="final"))
    assert len(final.train) == len(tune.train) + len(tune.val) == 96
    assert np.array_equal(final.val.items, tune.val.items) and np.array_equal(final.test.items, tune.test.items)
    assert np.array_equal(final.train.items, np.concatenate([tune.train.items, tune.val.items]))
    assert final.source["split_protocol"] == "final"


def test_config_refusal_is_exit_2(tmp_path):
    r = runner.invoke(app, ["train", str(Path(RECIPES, "tiny", "linear.yaml")), "--out", str(tmp_path / "run"),
                            "-s", "data.name=vtab1k", "-s", "data.root=/x"])
    assert r.exit_code == 2 and "data.task" in r.output, r.output


# -- FGVC JSON format -------------------------------------------------------------------------------------------------
FGVC_ROOT = {"cub": "images", "nabirds": "images", "stanford_dogs": "Images", "stanford_cars": "",
             "oxford_flowers": ""}
IDS = (17, 4, 250)  # non-contiguous class ids of the fixture classes 0, 1, 2: sorted, they become 1, 0, 2


def make_fgvc(root: Path, dataset: str, counts=(("train", 3), ("val", 1), ("test", 2))) -> dict[str, dict]:
    """ROOT/{train,val,test}.json, each {relative path: class id}, images under the dataset's image root."""
    image_root = root / FGVC_ROOT[dataset]
    out, k = {}, 0
    for split, n in counts:
        entries = {}
        for i in range(n):
            for label, cid in enumerate(IDS):
                rel = (f"car_ims/{k:06d}.png" if dataset == "stanford_cars"
                       else f"{cid:03d}.class_{cid}/{split}_{i}.png")
                _png(image_root / rel, label, k % 20)
                entries[rel] = cid
                k += 1
        (root / f"{split}.json").write_text(json.dumps(entries, indent=2))
        out[split] = entries
    return out


@pytest.mark.parametrize("dataset", list(FGVC_ROOT))
def test_fgvc_reads_each_json_under_the_dataset_image_root(tmp_path, dataset):
    files = make_fgvc(tmp_path, dataset)
    s = load_splits(DataConfig(name="fgvc", root=str(tmp_path), dataset=dataset))
    image_root = tmp_path / FGVC_ROOT[dataset]
    remap = {cid: i for i, cid in enumerate(sorted(IDS))}  # contiguous, in sorted id order
    for ds, split in ((s.train, "train"), (s.val, "val"), (s.test, "test")):
        assert _rel(ds, image_root) == list(files[split])
        assert ds.labels.tolist() == [remap[c] for c in files[split].values()]
    assert (len(s.train), len(s.val), len(s.test)) == (9, 3, 6)
    if dataset == "stanford_cars":  # one folder for every class: the names are the original ids
        assert s.classes == ["4", "17", "250"]
    else:  # each class in a folder of its own: its name
        assert s.classes == ["004.class_4", "017.class_17", "250.class_250"]
    assert s.source["class_ids"] == [4, 17, 250] and s.source["image_root"] == str(image_root)
    assert s.source["sha256"]["val.json"] == hashlib.sha256((tmp_path / "val.json").read_bytes()).hexdigest()


def test_fgvc_image_root_matters(tmp_path):
    make_fgvc(tmp_path, "cub")  # images under images/: read as oxford_flowers (the root itself) they are missing
    with pytest.raises(DataError, match=r"train\.json:2: image '017\.class_17/train_0\.png' not found"):
        load_splits(DataConfig(name="fgvc", root=str(tmp_path), dataset="oxford_flowers"))


def test_fgvc_final_protocol_trains_on_train_and_val(tmp_path):
    files = make_fgvc(tmp_path, "nabirds")
    s = load_splits(DataConfig(name="fgvc", root=str(tmp_path), dataset="nabirds", split_protocol="final"))
    assert (len(s.train), len(s.val), len(s.test)) == (12, 3, 6)
    assert _rel(s.train, tmp_path / "images") == [*files["train"], *files["val"]]
    assert s.source["files"] == {"train": ["train.json", "val.json"], "val": "val.json", "test": "test.json"}


def test_fgvc_reindexes_over_all_files(tmp_path):
    make_fgvc(tmp_path, "stanford_dogs")
    val = json.loads((tmp_path / "val.json").read_text())
    (tmp_path / "val.json").write_text(json.dumps({k: v for k, v in val.items() if v != 4}))  # val lacks id 4
    s = load_splits(DataConfig(name="fgvc", root=str(tmp_path), dataset="stanford_dogs"))
    assert sorted(set(s.val.labels.tolist())) == [1, 2]  # 17 -> 1 and 250 -> 2 as in train, not re-numbered per file


@pytest.mark.parametrize("breakage, message", [
    (lambda r: (r / "val.json").unlink(), r"split file '.*val\.json' not found"),
    (lambda r: (r / "test.json").write_text('{\n  "a.png": 1,\n  "b.png" 2\n}'), r"test\.json:3: not valid JSON"),
    (lambda r: (r / "test.json").write_text('[["a.png", 1]]'), r"test\.json:1: expected a non-empty JSON object"),
    (lambda r: (r / "train.json").write_text('{\n  "x/a.png": 1,\n  "x/b.png": "bird"\n}'),
     r"train\.json:3: class id of 'x/b\.png' is 'bird', not an integer"),
    (lambda r: (r / "train.json").write_text('{\n  "x/a.png": 1,\n  "x/b.png": -3\n}'),
     r"train\.json:3: class id -3 of 'x/b\.png' is negative"),
    (lambda r: (r / "images" / "250.class_250" / "test_1.png").unlink(),
     r"test\.json:\d+: image '250\.class_250/test_1\.png' not found"),
])
def test_fgvc_refusals_name_the_file_and_line(tmp_path, breakage, message):
    make_fgvc(tmp_path, "cub")
    breakage(tmp_path)
    with pytest.raises(DataError, match=message) as e:
        load_splits(DataConfig(name="fgvc", root=str(tmp_path), dataset="cub"))
    assert "\n" not in str(e.value)


def test_fgvc_missing_image_line_is_its_line(tmp_path):
    files = make_fgvc(tmp_path, "cub")
    key = list(files["test"])[4]
    (tmp_path / "images" / key).unlink()
    text = (tmp_path / "test.json").read_text()
    line = text[:text.index(json.dumps(key))].count("\n") + 1
    with pytest.raises(DataError, match=rf"test\.json:{line}: image"):
        load_splits(DataConfig(name="fgvc", root=str(tmp_path), dataset="cub"))


# -- the loader feeds training ------------------------------------------------------------------------------------
def test_vtab1k_fixture_trains(tmp_path):
    from edgevp.runs import RunDir
    from edgevp.train import fit

    make_vtab(tmp_path / "vtab", n_train=6)
    cfg = tiny_config("linear", data={"name": "vtab1k", "root": str(tmp_path / "vtab"), "task": "dtd",
                                      "split_protocol": "final", "batch_size": 8},
                      train={"epochs": 3, "lr": 0.01})
    result = fit(cfg, out=tmp_path / "run")
    run = RunDir(result.run_dir)
    metrics = run.metrics()
    assert len(metrics) == 3 and metrics[-1]["train_loss"] < metrics[0]["train_loss"]
    inputs = run.manifest()["inputs"]
    assert inputs["split_sizes"] == {"train": 24, "val": 6, "test": 6}
    assert inputs["data"]["format"] == "vtab1k" and set(inputs["data"]["sha256"]) == {
        "train800val200.txt", "val200.txt", "test.txt"}
    assert result.test_top1 is not None and 0 <= result.test_top1 <= 100


# -- the paper recipes -----------------------------------------------------------------------------------------------
PAPER_RECIPES = sorted(glob.glob(os.path.join(RECIPES, "vtab1k", "*.yaml"))
                       + glob.glob(os.path.join(RECIPES, "fgvc", "*.yaml")))


def test_paper_recipes_exist_with_readmes():
    names = {os.path.relpath(p, RECIPES) for p in PAPER_RECIPES}
    assert {"vtab1k/vpt_deep.yaml", "vtab1k/e2vpt.yaml", "fgvc/vpt_deep.yaml", "fgvc/e2vpt.yaml"} <= names
    for folder, switch in (("vtab1k", "-s data.task=dtd"), ("fgvc", "-s data.dataset=")):
        readme = Path(RECIPES, folder, "README.md").read_text()
        assert "Table" in readme and switch in readme


@pytest.mark.parametrize("path", PAPER_RECIPES, ids=lambda p: os.path.relpath(p, RECIPES))
def test_paper_recipe_parses(path):
    cfg = build_run_config(load_yaml(path))
    assert cfg.backbone.name.startswith("vit_base_patch16_224") and cfg.backbone.weights == "hub"
    assert cfg.backbone.img_size == 224 and cfg.train.optimizer == "sgd"
    assert cfg.train.epochs == 100 and cfg.train.warmup_epochs == 10
    assert cfg.data.name in ("vtab1k", "fgvc")
    if cfg.data.name == "vtab1k":
        assert cfg.data.resize == "direct" and cfg.data.augment == "none"
        other = build_run_config(load_yaml(path), ["data.task=dtd"])
        assert other.data.task == "dtd"
    else:
        assert cfg.data.augment == "crop_flip" and cfg.data.crop_pct == 0.875
        assert build_run_config(load_yaml(path), ["data.dataset=stanford_dogs"]).data.dataset == "stanford_dogs"
