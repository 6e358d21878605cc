"""Datasets: built-in real sets (Fashion-MNIST from Debian, sklearn digits) and image folders.

Every dataset yields (image, label) with the image as float [0, 1], 3×S×S at the backbone's input size;
normalisation happens inside the model (so pixel-space prompts can act before it). Grayscale becomes 3 channels.
"""
from __future__ import annotations

import gzip
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from .config import DataConfig
from .errors import DataError
from .io import sha256_file

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot"]
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


@dataclass
class ImageTransform:
    """Resize (+ optional augmentation) of a float [0, 1] C×H×W tensor to 3×S×S."""

    size: int
    interpolation: str = "bicubic"
    resize: str = "direct"
    crop_pct: float = 1.0
    augment: str = "none"

    def __call__(self, img: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        if img.shape[0] == 1:
            img = img.expand(3, -1, -1)
        elif img.shape[0] == 4:
            img = img[:3]
        s = self.size
        mode = self.interpolation if self.interpolation in ("bilinear", "bicubic", "nearest") else "bilinear"
        train_crop = self.augment == "crop_flip" and gen is not None
        if self.resize == "direct" and not train_crop:
            out = self._interp(img, (s, s), mode)
        else:  # shorter side to S / crop_pct, then a center (or random, when augmenting) S×S crop
            scale = s / max(self.crop_pct, 1e-6) / min(img.shape[1:])
            h, w = max(s, round(img.shape[1] * scale)), max(s, round(img.shape[2] * scale))
            out = self._interp(img, (h, w), mode)
            if train_crop:
                top = int(torch.randint(0, h - s + 1, (1,), generator=gen))
                left = int(torch.randint(0, w - s + 1, (1,), generator=gen))
            else:
                top, left = (h - s) // 2, (w - s) // 2
            out = out[:, top:top + s, left:left + s]
        if self.augment in ("flip", "crop_flip") and gen is not None and torch.rand(1, generator=gen).item() < 0.5:
            out = out.flip(-1)
        return out

    @staticmethod
    def _interp(img: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
        if tuple(img.shape[1:]) == size:
            return img.contiguous()
        antialias = mode in ("bilinear", "bicubic")
        out = F.interpolate(img[None], size=size, mode=mode, antialias=antialias, align_corners=False if antialias else None)
        return out[0].clamp_(0.0, 1.0)


class ImageDataset(Dataset):
    """Images held as uint8 arrays (N, H, W[, C]) or as file paths, with integer labels."""

    def __init__(self, items: np.ndarray | Sequence[str], labels: Sequence[int], classes: list[str],
                 transform: ImageTransform | None = None, seed: int = 0):
        self.items = items
        self.labels = np.asarray(labels, dtype=np.int64)
        self.classes = list(classes)
        self.transform = transform
        self.seed = seed
        self.epoch = 0
        self.train = False  # augmentation only when training

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx: np.ndarray) -> ImageDataset:
        items = self.items[idx] if isinstance(self.items, np.ndarray) else [self.items[i] for i in idx]
        return ImageDataset(items, self.labels[idx], self.classes, self.transform, self.seed)

    def load(self, i: int) -> torch.Tensor:
        item = self.items[i]
        if isinstance(item, np.ndarray):
            arr = item
        else:
            arr = _read_image(item)
        t = torch.from_numpy(np.ascontiguousarray(arr))
        t = t[None] if t.ndim == 2 else t.permute(2, 0, 1)
        return t.float().div_(255.0)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = self.load(i)
        gen = None
        if self.train and self.transform is not None and self.transform.augment != "none":
            gen = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) * 10_000_019 + i)
        if self.transform is not None:
            img = self.transform(img, gen)
        return img, int(self.labels[i])


def _read_image(path: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.array(im.convert("L" if im.mode in ("L", "I;16", "I", "1") else "RGB"))
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"cannot read image '{path}': {type(e).__name__}", "remove or replace the file") from None


@dataclass
class Splits:
    train: ImageDataset
    val: ImageDataset
    test: ImageDataset | None
    classes: list[str]
    source: dict = field(default_factory=dict)  # provenance for the manifest (paths, sha256)

    def set_transform(self, transform: ImageTransform, seed: int) -> None:
        for ds in (self.train, self.val, self.test):
            if ds is not None:
                ds.transform, ds.seed = transform, seed


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        b = f.read()
    nd = b[3]
    dims = [int.from_bytes(b[4 + 4 * i: 8 + 4 * i], "big") for i in range(nd)]
    return np.frombuffer(b, dtype=np.uint8, offset=4 + 4 * nd).reshape(dims).copy()


def balanced_order(labels: np.ndarray, seed: int) -> np.ndarray:
    """A seeded permutation that interleaves classes, so any prefix of it is class-balanced."""
    perm = np.random.default_rng(seed).permutation(len(labels))
    rank = np.empty(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        members = perm[labels[perm] == c]
        rank[members] = np.arange(len(members))
    return perm[np.lexsort((np.arange(len(perm)), rank[perm]))]


def split_off(ds: ImageDataset, fraction: float, seed: int) -> tuple[ImageDataset, ImageDataset]:
    """Stratified split: (rest, held-out fraction)."""
    if not 0.0 < fraction < 1.0:
        raise DataError(f"split fraction must be in (0, 1), got {fraction}")
    held, rest = [], []
    rng = np.random.default_rng(seed)
    for c in np.unique(ds.labels):
        members = rng.permutation(np.flatnonzero(ds.labels == c))
        k = max(1, int(round(len(members) * fraction))) if len(members) > 1 else 0
        held.extend(members[:k])
        rest.extend(members[k:])
    return ds.subset(np.sort(np.array(rest, dtype=np.int64))), ds.subset(np.sort(np.array(held, dtype=np.int64)))


def _fashion_mnist(cfg: DataConfig) -> tuple[ImageDataset, ImageDataset | None, dict]:
    root = Path(cfg.root or FASHION_MNIST_DIR)
    names = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
             "t10k-labels-idx1-ubyte.gz"]
    if not all((root / n).is_file() for n in names):
        raise DataError(f"Fashion-MNIST not found in '{root}'",
                        "install it: sudo apt-get install dataset-fashion-mnist, or set data.root to a folder with "
                        "the four idx .gz files")
    xtr, ytr, xte, yte = (_read_idx(root / n) for n in names)
    source = {"root": str(root), "sha256": {n: sha256_file(root / n) for n in names}}
    return (ImageDataset(xtr, ytr, FASHION_MNIST_CLASSES), ImageDataset(xte, yte, FASHION_MNIST_CLASSES), source)


def _digits(cfg: DataConfig) -> tuple[ImageDataset, ImageDataset | None, dict]:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError("the digits dataset needs scikit-learn", "pip install scikit-learn") from None
    d = load_digits()
    images = np.clip(d.images * (255.0 / 16.0), 0, 255).round().astype(np.uint8)
    classes = [str(i) for i in range(10)]
    return ImageDataset(images, d.target, classes), None, {"source": "sklearn.datasets.load_digits"}


def _scan_folder(root: Path) -> tuple[list[str], list[int], list[str]]:
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"no class folders in '{root}'", "expected ROOT/<class>/<image> (optionally under train/, val/)")
    paths, labels = [], []
    for i, c in enumerate(classes):
        for p in sorted((root / c).rglob("*")):
            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS:
                paths.append(str(p))
                labels.append(i)
    if not paths:
        raise DataError(f"no images in '{root}'", f"supported extensions: {' '.join(IMAGE_EXTENSIONS)}")
    return paths, labels, classes


def _folder(cfg: DataConfig) -> tuple[ImageDataset, ImageDataset | None, dict, ImageDataset | None]:
    if not cfg.root:
        raise DataError("data.name=folder needs data.root", "example: -s data.root=/data/my_images")
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise DataError(f"dataset folder '{root}' does not exist")
    sub = {s: root / s for s in ("train", "val", "test") if (root / s).is_dir()}
    if "train" not in sub:
        paths, labels, classes = _scan_folder(root)
        return ImageDataset(paths, labels, classes), None, {"root": str(root)}, None
    paths, labels, classes = _scan_folder(sub["train"])
    train = ImageDataset(paths, labels, classes)
    extra = {}
    for s in ("val", "test"):
        if s in sub:
            p, l, c = _scan_folder(sub[s])
            if c != classes:
                raise DataError(f"classes of '{sub[s]}' differ from '{sub['train']}'")
            extra[s] = ImageDataset(p, l, classes)
    return train, extra.get("test"), {"root": str(root), "splits": sorted(sub)}, extra.get("val")


# Fashion-MNIST's ten classes in three super-classes: a second task on the same images (the demo packs both)
FASHION_MNIST_GROUPS = {"clothing": [0, 1, 2, 3, 4, 6], "footwear": [5, 7, 9], "bag": [8]}


def _fashion_mnist_groups(cfg: DataConfig) -> tuple[ImageDataset, ImageDataset | None, dict]:
    train, test, source = _fashion_mnist(cfg)
    lookup = np.zeros(len(FASHION_MNIST_CLASSES), dtype=np.int64)
    for group, members in enumerate(FASHION_MNIST_GROUPS.values()):
        lookup[members] = group
    names = list(FASHION_MNIST_GROUPS)
    regroup = lambda ds: ImageDataset(ds.items, lookup[ds.labels], names)  # noqa: E731
    return regroup(train), regroup(test), {**source, "labels": "super-classes", "groups": FASHION_MNIST_GROUPS}


BUILTIN = {"fashion_mnist": _fashion_mnist, "fashion_mnist_groups": _fashion_mnist_groups, "digits": _digits}


def load_splits(cfg: DataConfig) -> Splits:
    """Build train/val/test for `cfg`; val (and test when absent) are stratified, seeded hold-outs of train."""
    val = None
    if cfg.name == "folder":
        train, test, source, val = _folder(cfg)
    elif cfg.name in BUILTIN:
        train, test, source = BUILTIN[cfg.name](cfg)
    else:
        raise DataError(f"unknown dataset '{cfg.name}'", f"choose one of {', '.join([*BUILTIN, 'folder'])}")
    if test is None and cfg.test_fraction > 0:
        train, test = split_off(train, cfg.test_fraction, cfg.split_seed + 1)
    if val is None:
        train, val = split_off(train, cfg.val_fraction, cfg.split_seed)
    out = []
    for ds, limit in ((train, cfg.limit_train), (val, cfg.limit_val), (test, cfg.limit_test)):
        if ds is not None and limit is not None:
            if limit <= 0:
                raise DataError(f"dataset limits must be positive, got {limit}")
            ds = ds.subset(np.sort(balanced_order(ds.labels, cfg.split_seed)[:limit]))
        out.append(ds)
    train, val, test = out
    for name, ds in (("train", train), ("val", val)):
        if len(ds) == 0:
            raise DataError(f"the {name} split of '{cfg.name}' is empty", "add images or lower the hold-out fraction")
    train.train = True
    return Splits(train, val, test, train.classes, source)


def backbone_transform(cfg: DataConfig, info) -> ImageTransform:
    """The resize (+ augmentation) to the backbone's input size, from its own data config (`BackboneInfo`)."""
    return ImageTransform(size=info.input_size[-1], interpolation=info.interpolation, resize=cfg.resize,
                          crop_pct=info.crop_pct, augment=cfg.augment)


def load_data(cfg: DataConfig, info) -> Splits:
    """A run's data splits, transformed to what backbone `info` (a `BackboneInfo`) takes."""
    splits = load_splits(cfg)
    splits.set_transform(backbone_transform(cfg, info), cfg.split_seed)
    return splits


class EpochSampler(Sampler[int]):
    """A permutation fixed by (seed, epoch), optionally skipping the first `skip` indices (mid-epoch resume)."""

    def __init__(self, n: int, seed: int, epoch: int = 0, skip: int = 0):
        self.n, self.seed, self.epoch, self.skip = n, seed, epoch, skip

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 7919 + self.epoch)
        return iter(torch.randperm(self.n, generator=g)[self.skip:].tolist())

    def __len__(self) -> int:
        return max(self.n - self.skip, 0)


def make_loader(ds: Dataset, batch_size: int, num_workers: int = 0, sampler: Sampler | None = None) -> DataLoader:
    # an own generator: creating an iterator must not draw from the global RNG (dropout), or resume would drift
    return DataLoader(ds, batch_size=batch_size, sampler=sampler, shuffle=False, num_workers=num_workers,
                      drop_last=False, persistent_workers=False, generator=torch.Generator().manual_seed(0))
