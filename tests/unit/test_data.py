"""Datasets: built-ins, image folders, splits, subsets and the errors users hit."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from edgevp.config import DataConfig
from edgevp.data import FASHION_MNIST_DIR, ImageTransform, balanced_order, load_splits
from edgevp.errors import DataError


def _transform(size=32, **kw):
    return ImageTransform(size=size, **kw)


def test_digits_are_scikit_learns_load_digits_read_without_importing_it():
    import subprocess
    import sys

    from sklearn.datasets import load_digits

    from edgevp.data import digits_arrays

    images, target = digits_arrays()
    d = load_digits()
    assert images.dtype == d.images.dtype and np.array_equal(images, d.images) and np.array_equal(target, d.target)
    code = "import sys; from edgevp.data import digits_arrays; digits_arrays(); print('sklearn' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


def test_digits_splits_are_stratified_disjoint_and_limited():
    s = load_splits(DataConfig(name="digits", limit_train=100, limit_val=20))
    assert len(s.train) == 100 and len(s.val) == 20 and 340 <= len(s.test) <= 380
    assert s.classes == [str(i) for i in range(10)]
    assert np.bincount(s.train.labels, minlength=10).tolist() == [10] * 10  # class-balanced subset
    s.set_transform(_transform(), 0)
    x, y = s.train[0]
    assert x.shape == (3, 32, 32) and 0.0 <= x.min() and x.max() <= 1.0 and isinstance(y, int)
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])  # grayscale expanded to 3 channels


def test_split_is_reproducible_and_seed_dependent():
    a = load_splits(DataConfig(name="digits", limit_train=50))
    b = load_splits(DataConfig(name="digits", limit_train=50))
    c = load_splits(DataConfig(name="digits", limit_train=50, split_seed=1))
    assert np.array_equal(a.train.items, b.train.items)
    assert not np.array_equal(a.train.items, c.train.items)


def test_balanced_order_prefixes_are_balanced():
    labels = np.repeat(np.arange(4), [10, 20, 30, 40])
    order = balanced_order(labels, 0)
    assert sorted(order.tolist()) == list(range(100))
    assert np.bincount(labels[order[:20]], minlength=4).tolist() == [5, 5, 5, 5]


def _write_folder(root, classes=("cat", "dog"), n=6, mode="RGB"):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            arr = rng.integers(0, 255, (20, 30, 3) if mode == "RGB" else (20, 30), dtype=np.uint8)
            Image.fromarray(arr).save(root / c / f"{i}.png")


def test_image_folder_with_split_ratio(tmp_path):
    _write_folder(tmp_path)
    (tmp_path / "cat" / "notes.txt").write_text("not an image")  # ignored: not an image extension
    s = load_splits(DataConfig(name="folder", root=str(tmp_path), val_fraction=0.25, test_fraction=0.25))
    assert s.classes == ["cat", "dog"] and len(s.train) + len(s.val) + len(s.test) == 12
    s.set_transform(_transform(16, resize="timm", crop_pct=0.9), 0)
    x, _ = s.val[0]
    assert x.shape == (3, 16, 16)


def test_image_folder_with_train_val_subfolders(tmp_path):
    _write_folder(tmp_path / "train")
    _write_folder(tmp_path / "val", n=2, mode="L")
    s = load_splits(DataConfig(name="folder", root=str(tmp_path), test_fraction=0.0))
    assert len(s.train) == 12 and len(s.val) == 4 and s.test is None


def test_augmentation_is_a_function_of_seed_epoch_and_index():
    s = load_splits(DataConfig(name="digits", limit_train=10, augment="crop_flip"))
    s.set_transform(_transform(24, augment="crop_flip", crop_pct=0.8), 3)
    a, b = s.train[4][0], s.train[4][0]
    s.train.epoch = 1
    views = [s.train[4][0] for _ in range(2)]
    assert torch.equal(a, b) and torch.equal(views[0], views[1])  # same (seed, epoch, index) -> same view
    s.train.epoch = 0
    before = [s.train[i][0] for i in range(10)]
    s.train.epoch = 1
    assert any(not torch.equal(before[i], s.train[i][0]) for i in range(10))  # a new epoch, new views
    assert not s.val.train and torch.equal(s.val[0][0], s.val[0][0])  # no augmentation outside train


@pytest.mark.parametrize("cfg, message", [
    (DataConfig(name="fashion_mnist", root="/nonexistent"), "apt-get install dataset-fashion-mnist"),
    (DataConfig(name="folder"), "needs data.root"),
    (DataConfig(name="folder", root="/nonexistent"), "does not exist"),
])
def test_dataset_errors_are_one_line(cfg, message):
    with pytest.raises(DataError, match=message):
        load_splits(cfg)


def test_bad_limits_are_refused_when_the_config_is_built():
    from edgevp.config import from_dict
    from edgevp.errors import ConfigError

    with pytest.raises(ConfigError, match="limit_train/limit_val/limit_test must be >= 1"):
        from_dict(DataConfig, {"name": "digits", "limit_train": 0}, "data")
    with pytest.raises(ConfigError, match="unknown dataset 'cifar'"):  # exit 2 before any data is read
        from_dict(DataConfig, {"name": "cifar"}, "data")


def test_empty_and_corrupt_folders(tmp_path):
    (tmp_path / "a").mkdir()
    with pytest.raises(DataError, match="no images"):
        load_splits(DataConfig(name="folder", root=str(tmp_path)))
    _write_folder(tmp_path / "b_root")
    (tmp_path / "b_root" / "cat" / "broken.png").write_bytes(b"not a png")
    s = load_splits(DataConfig(name="folder", root=str(tmp_path / "b_root"), val_fraction=0.5, test_fraction=0.0))
    s.set_transform(_transform(), 0)
    with pytest.raises(DataError, match="cannot read image .*broken.png"):
        for ds in (s.train, s.val):
            for i in range(len(ds)):
                ds[i]


@pytest.mark.assets
@pytest.mark.skipif(not __import__("os").path.isdir(FASHION_MNIST_DIR), reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_from_debian_package():
    s = load_splits(DataConfig(name="fashion_mnist", limit_test=100))
    assert len(s.train) + len(s.val) == 60000 and len(s.test) == 100
    assert s.train.items.shape[1:] == (28, 28) and len(s.classes) == 10
    assert len(s.source["sha256"]) == 4
