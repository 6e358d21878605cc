"""Datasets: built-in real sets (Fashion-MNIST from Debian, sklearn digits), image folders, and the benchmark split
files users have on disk (VTAB-1k in the shared folder format, FGVC in VPT's JSON format).

Every dataset yields (image, label) with the image as float [0, 1], 3×S×S at the backbone's input size;
normalisation happens inside the model (so pixel-space prompts can act before it). Grayscale becomes 3 channels.
"""
from __future__ import annotations

import gzip
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .config import DataConfig
from .errors import DataError
from .images import fingerprint
from .io import sha256_file
from .runtime import transform as rt
from .runtime.decode import read_image
from .runtime.scan import scan_folder

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot"]


@dataclass
class ImageTransform:
    """Resize (+ optional augmentation) of a float [0, 1] C×H×W image to 3×H×W: edgevp.runtime.transform's
    arithmetic (what the device runs), with training's random crop offset and flip drawn from `gen`."""

    size: int | tuple[int, int]  # S or (H, W)
    interpolation: str = "bicubic"
    resize: str = "direct"
    crop_pct: float = 1.0
    augment: str = "none"

    @property
    def hw(self) -> tuple[int, int]:
        return (self.size, self.size) if isinstance(self.size, int) else (int(self.size[0]), int(self.size[1]))

    def __call__(self, img: torch.Tensor | np.ndarray, gen: torch.Generator | None = None) -> torch.Tensor:
        x = img.numpy() if isinstance(img, torch.Tensor) else img
        h, w = self.hw
        crop_at = None
        if self.augment == "crop_flip" and gen is not None:  # a random crop of the `timm` policy's scaled image
            rh, rw = rt.scaled_size(x.shape[1:], (h, w), self.crop_pct)
            crop_at = (int(torch.randint(0, rh - h + 1, (1,), generator=gen)),
                       int(torch.randint(0, rw - w + 1, (1,), generator=gen)))
        out = rt.resize_image(x, (h, w), self.interpolation, self.resize, self.crop_pct, crop_at)
        if self.augment in ("flip", "crop_flip") and gen is not None and torch.rand(1, generator=gen).item() < 0.5:
            out = np.ascontiguousarray(out[:, :, ::-1])
        return torch.from_numpy(out)


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
        """Image i as float [0, 1] C×H×W (edgevp.runtime: the device's decoder and scaling)."""
        item = self.items[i]
        return torch.from_numpy(rt.to_chw(item if isinstance(item, np.ndarray) else read_image(item)))

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = self.load(i)
        gen = None
        if self.train and self.transform is not None and self.transform.augment != "none":
            gen = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) * 10_000_019 + i)
        if self.transform is not None:
            img = self.transform(img, gen)
        return img, int(self.labels[i])


@dataclass
class Splits:
    train: ImageDataset
    val: ImageDataset
    test: ImageDataset | None
    classes: list[str]
    source: dict = field(default_factory=dict)  # provenance for the manifest (paths, sha256)
    files: list[str] = field(default_factory=list)  # every image file of the dataset, before any subset

    def image_paths(self) -> list[str]:
        """The image files the splits read (empty for in-memory datasets)."""
        return [p for ds in (self.train, self.val, self.test) if ds is not None and not isinstance(ds.items, np.ndarray)
                for p in ds.items]

    def set_transform(self, transform: ImageTransform, seed: int) -> None:
        for ds in (self.train, self.val, self.test):
            if ds is not None:
                ds.transform, ds.seed = transform, seed


@dataclass
class LoadedSplits:
    """What a dataset loader read: its train split, the val and test splits the dataset defines itself (None: held
    out of train by `load_splits`), and `info`, the provenance recorded in the manifest (paths, sha256)."""

    train: ImageDataset
    val: ImageDataset | None = None
    test: ImageDataset | None = None
    info: dict = field(default_factory=dict)


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


def merge(a: ImageDataset, b: ImageDataset) -> ImageDataset:
    """`a` followed by `b` (the same classes; in-memory arrays or file paths)."""
    if isinstance(a.items, np.ndarray) and isinstance(b.items, np.ndarray):
        items = np.concatenate([a.items, b.items])
    else:
        items = list(a.items) + list(b.items)
    return ImageDataset(items, np.concatenate([a.labels, b.labels]), a.classes, a.transform, a.seed)


def _fashion_mnist(cfg: DataConfig) -> LoadedSplits:
    root = Path(cfg.root or FASHION_MNIST_DIR)
    names = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
             "t10k-labels-idx1-ubyte.gz"]
    if not all((root / n).is_file() for n in names):
        raise DataError(f"Fashion-MNIST not found in '{root}'",
                        "install it: sudo apt-get install dataset-fashion-mnist, or set data.root to a folder with "
                        "the four idx .gz files")
    xtr, ytr, xte, yte = (_read_idx(root / n) for n in names)
    source = {"root": str(root), "sha256": {n: sha256_file(root / n) for n in names}}
    return LoadedSplits(ImageDataset(xtr, ytr, FASHION_MNIST_CLASSES),
                        test=ImageDataset(xte, yte, FASHION_MNIST_CLASSES), info=source)


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8×8 digits (`load_digits`: images 0–16 as float64, targets), read from the CSV it ships without
    importing scikit-learn (a second of start-up in every training process)."""
    from importlib.util import find_spec

    spec = find_spec("sklearn")
    csv = Path(next(iter(spec.submodule_search_locations)), "datasets", "data", "digits.csv.gz") if spec else None
    if csv is None or not csv.is_file():
        raise DataError("the digits dataset needs scikit-learn", "pip install scikit-learn")
    with gzip.open(csv, mode="rt", encoding="utf-8") as f:
        data = np.loadtxt(f, delimiter=",")
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int)


def _digits(cfg: DataConfig) -> LoadedSplits:
    digits, target = digits_arrays()
    images = np.clip(digits * (255.0 / 16.0), 0, 255).round().astype(np.uint8)
    classes = [str(i) for i in range(10)]
    return LoadedSplits(ImageDataset(images, target, classes), info={"source": "sklearn.datasets.load_digits"})


def _folder(cfg: DataConfig) -> LoadedSplits:
    if not cfg.root:
        raise DataError("data.name=folder needs data.root", "example: -s data.root=/data/my_images")
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise DataError(f"dataset folder '{root}' is a file, not a folder" if root.exists() else
                        f"dataset folder '{root}' does not exist", "data.root takes ROOT with ROOT/<class>/<image>")
    sub = {s: root / s for s in ("train", "val", "test") if (root / s).is_dir()}
    if "train" not in sub:
        paths, labels, classes = scan_folder(root)
        return LoadedSplits(ImageDataset(paths, labels, classes), info={"root": str(root)})
    paths, labels, classes = scan_folder(sub["train"])
    train = ImageDataset(paths, labels, classes)
    extra = {}
    for s in ("val", "test"):
        if s in sub:
            p, l, c = scan_folder(sub[s])
            if c != classes:
                raise DataError(f"classes of '{sub[s]}' differ from '{sub['train']}'")
            extra[s] = ImageDataset(p, l, classes)
    return LoadedSplits(train, extra.get("val"), extra.get("test"), {"root": str(root), "splits": sorted(sub)})


# Fashion-MNIST's ten classes in three super-classes: a second task on the same images (the demo packs both)
FASHION_MNIST_GROUPS = {"clothing": [0, 1, 2, 3, 4, 6], "footwear": [5, 7, 9], "bag": [8]}


def _fashion_mnist_groups(cfg: DataConfig) -> LoadedSplits:
    read = _fashion_mnist(cfg)
    lookup = np.zeros(len(FASHION_MNIST_CLASSES), dtype=np.int64)
    for group, members in enumerate(FASHION_MNIST_GROUPS.values()):
        lookup[members] = group
    names = list(FASHION_MNIST_GROUPS)
    regroup = lambda ds: ImageDataset(ds.items, lookup[ds.labels], names)  # noqa: E731
    return LoadedSplits(regroup(read.train), test=regroup(read.test),
                        info={**read.info, "labels": "super-classes", "groups": FASHION_MNIST_GROUPS})


# -- benchmark split files: VTAB-1k (folder format) and FGVC (VPT's JSON splits) ------------------------------------
# Class counts of the VTAB tasks (the TFDS label ids the split files carry); a label at or above it is refused
VTAB1K_CLASSES = {"cifar": 100, "caltech101": 102, "dtd": 47, "oxford_flowers102": 102, "oxford_iiit_pet": 37,
                  "svhn": 10, "sun397": 397, "patch_camelyon": 2, "eurosat": 10, "resisc45": 45,
                  "diabetic_retinopathy": 5, "clevr_count": 8, "clevr_dist": 6, "dmlab": 6, "kitti": 4,
                  "dsprites_loc": 16, "dsprites_ori": 16, "smallnorb_azi": 18, "smallnorb_ele": 9}
VTAB1K_ALIASES = {"cifar100": "cifar"}
# split files per protocol: (train files, val file, test file)
VTAB1K_FILES = {"tune": (("train800.txt",), "val200.txt", "test.txt"),
                "final": (("train800val200.txt",), "val200.txt", "test.txt")}
# datasets whose split files define the final protocol's train themselves (the others merge train and val)
FINAL_BY_FILES = ("vtab1k", "fgvc")
FGVC_FILES = {"tune": (("train.json",), "val.json", "test.json"),
              "final": (("train.json", "val.json"), "val.json", "test.json")}
FGVC_IMAGE_ROOT = {"cub": "images", "nabirds": "images", "stanford_dogs": "Images", "stanford_cars": "",
                   "oxford_flowers": ""}


def _split_file(path: Path, fmt: str) -> None:
    if not path.is_file():
        raise DataError(f"{fmt} split file '{path}' not found",
                        "expected " + ("ROOT/<task>/{train800,val200,train800val200,test}.txt" if fmt == "vtab1k"
                                       else "ROOT/{train,val,test}.json"))


def _check_images(path: Path, entries: list[tuple[str, int, int]], image_root: Path) -> list[str]:
    """Absolute image paths of `entries` (relative path, label, line); the first missing one is a DataError."""
    out, missing = [], []
    for rel, _, line in entries:
        full = image_root / rel
        if not full.is_file():
            missing.append((rel, line))
        out.append(str(full))
    if missing:
        (rel, line), more = missing[0], len(missing) - 1
        raise DataError(f"{path}:{line}: image '{rel}' not found under '{image_root}'"
                        + (f" ({more} more missing in this file)" if more else ""),
                        "the split files name images relative to " + str(image_root))
    return out


def _read_vtab_list(path: Path) -> list[tuple[str, int, int]]:
    """`<relative image path> <integer label>` per line -> [(path, label, line number)]; blank lines skipped."""
    _split_file(path, "vtab1k")
    entries = []
    with open(path, encoding="utf-8") as f:
        for n, raw in enumerate(f, 1):
            text = raw.strip()
            if not text:
                continue
            parts = text.rsplit(maxsplit=1)
            if len(parts) != 2 or not re.fullmatch(r"[+-]?\d+", parts[1]):
                raise DataError(f"{path}:{n}: cannot parse {text[:80]!r}",
                                "each line is '<relative image path> <integer label>'")
            entries.append((parts[0], int(parts[1]), n))
    if not entries:
        raise DataError(f"vtab1k split file '{path}' is empty")
    return entries


def _json_line(text: str, key: str) -> int:
    """Line number of `key` in a JSON text (1 when not found verbatim)."""
    at = text.find(json.dumps(key))
    return text.count("\n", 0, at) + 1 if at >= 0 else 1


def _read_fgvc_json(path: Path) -> list[tuple[str, int, int]]:
    """VPT's `{relative image path: class id}` -> [(path, class id, line number)]."""
    _split_file(path, "fgvc")
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg})",
                        "expected one object {\"relative/image.jpg\": class_id, ...}") from None
    if not isinstance(data, dict) or not data:
        raise DataError(f"{path}:1: expected a non-empty JSON object {{relative image path: class id}}")
    entries = []
    for key, value in data.items():
        if isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip()):
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise DataError(f"{path}:{_json_line(text, key)}: class id of '{key}' is {value!r}, not an integer")
        entries.append((key, value, _json_line(text, key)))
    return entries


def _hashes(files: dict[str, Path]) -> dict[str, str]:
    return {name: sha256_file(p) for name, p in files.items()}


def _vtab1k(cfg: DataConfig) -> LoadedSplits:
    """VTAB-1k in the shared folder format. Labels are used as written (the TFDS class ids that test.txt shares), not
    re-indexed: classes = 0..max label over the files read; a negative label, one at or above the task's class count,
    or a class id below the maximum with no image in any file (a gap: the files do not carry VTAB's ids) is refused."""
    task = VTAB1K_ALIASES.get(cfg.task, cfg.task)
    root = Path(cfg.root).expanduser()
    task_dir = root / task
    if not task_dir.is_dir():
        raise DataError(f"vtab1k task folder '{task_dir}' does not exist",
                        f"data.root must hold one folder per task (data.task={cfg.task} reads '{task}/')")
    train_names, val_name, test_name = VTAB1K_FILES[cfg.split_protocol]
    names = dict.fromkeys([*train_names, val_name, test_name])
    read = {n: _read_vtab_list(task_dir / n) for n in names}
    limit = VTAB1K_CLASSES[task]
    present = set()
    for n, entries in read.items():
        for rel, label, line in entries:
            if not 0 <= label < limit:
                raise DataError(f"{task_dir / n}:{line}: label {label} is outside 0..{limit - 1} ({task} has "
                                f"{limit} classes)", "VTAB labels are the dataset's class ids 0..C-1")
            present.add(label)
    num = max(present) + 1
    gaps = sorted(set(range(num)) - present)
    if gaps:
        raise DataError(f"vtab1k labels of '{task_dir}' skip class {gaps[0]}" + (
            f" and {len(gaps) - 1} more" if len(gaps) > 1 else "") + f" of 0..{num - 1} in {', '.join(read)}",
                        "VTAB labels must be the class ids 0..C-1; edgevp does not re-index them")
    classes = [str(i) for i in range(num)]

    def build(files: tuple[str, ...]) -> ImageDataset:
        paths, labels = [], []
        for n in files:
            paths += _check_images(task_dir / n, read[n], task_dir)
            labels += [label for _, label, _ in read[n]]
        return ImageDataset(paths, labels, classes)

    source = {"format": "vtab1k", "root": str(root), "task": task, "task_dir": str(task_dir),
              "split_protocol": cfg.split_protocol,
              "files": {"train": list(train_names), "val": val_name, "test": test_name},
              "sha256": _hashes({n: task_dir / n for n in names}), "num_classes": num}
    return LoadedSplits(build(train_names), build((val_name,)), build((test_name,)), source)


def _fgvc(cfg: DataConfig) -> LoadedSplits:
    """FGVC in VPT's JSON split format. Class ids are re-indexed contiguously in sorted order over the union of the
    files read (VPT sorts per file: the same when every split holds every class)."""
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise DataError(f"fgvc dataset folder '{root}' does not exist")
    image_root = root / FGVC_IMAGE_ROOT[cfg.dataset]
    train_names, val_name, test_name = FGVC_FILES[cfg.split_protocol]
    names = dict.fromkeys([*train_names, val_name, test_name])
    read = {n: _read_fgvc_json(root / n) for n in names}
    for n, entries in read.items():
        for rel, cid, line in entries:
            if cid < 0:
                raise DataError(f"{root / n}:{line}: class id {cid} of '{rel}' is negative")
    ids = sorted({cid for entries in read.values() for _, cid, _ in entries})
    index = {cid: i for i, cid in enumerate(ids)}
    # class names: each class's own top folder when that is unambiguous (CUB: 001.Black_footed_Albatross), else its id
    folders: dict[int, set[str]] = {}
    for entries in read.values():
        for rel, cid, _ in entries:
            folders.setdefault(cid, set()).add(rel.split("/")[0] if "/" in rel else "")
    tops = [next(iter(folders[c])) if len(folders[c]) == 1 else "" for c in ids]
    classes = tops if all(tops) and len(set(tops)) == len(tops) else [str(c) for c in ids]

    def build(files: tuple[str, ...]) -> ImageDataset:
        paths, labels = [], []
        for n in files:
            paths += _check_images(root / n, read[n], image_root)
            labels += [index[cid] for _, cid, _ in read[n]]
        return ImageDataset(paths, labels, classes)

    source = {"format": "fgvc", "root": str(root), "dataset": cfg.dataset, "image_root": str(image_root),
              "split_protocol": cfg.split_protocol,
              "files": {"train": list(train_names), "val": val_name, "test": test_name},
              "sha256": _hashes({n: root / n for n in names}), "num_classes": len(ids),
              "class_ids": ids}
    return LoadedSplits(build(train_names), build((val_name,)), build((test_name,)), source)


BUILTIN = {"fashion_mnist": _fashion_mnist, "fashion_mnist_groups": _fashion_mnist_groups, "digits": _digits,
           "vtab1k": _vtab1k, "fgvc": _fgvc}


def load_splits(cfg: DataConfig) -> Splits:
    """Build train/val/test for `cfg`; val (and test when absent) are stratified, seeded hold-outs of train."""
    if cfg.name not in BUILTIN and cfg.name != "folder":
        raise DataError(f"unknown dataset '{cfg.name}'", f"choose one of {', '.join([*BUILTIN, 'folder'])}")
    read = _folder(cfg) if cfg.name == "folder" else BUILTIN[cfg.name](cfg)
    train, val, test, source = read.train, read.val, read.test, read.info
    files = [p for ds in (train, val, test) if ds is not None and not isinstance(ds.items, np.ndarray) for p in ds.items]
    if files and "fingerprint" not in source:  # what a resume compares: the whole file list, before any subset
        source = {**source, "fingerprint": fingerprint(files, source.get("root"))}
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
    if cfg.split_protocol == "final" and cfg.name not in FINAL_BY_FILES:
        train = merge(train, val)  # the tune protocol's train + val; val stays for monitoring only
        source = {**source, "split_protocol": "final"}
    train.train = True
    return Splits(train, val, test, train.classes, source, files)


def backbone_transform(cfg: DataConfig, info) -> ImageTransform:
    """The resize (+ augmentation) to the backbone's input size, from its own data config (`BackboneInfo`)."""
    return ImageTransform(size=tuple(info.input_size[-2:]), interpolation=info.interpolation, resize=cfg.resize,
                          crop_pct=cfg.crop_pct or info.crop_pct, augment=cfg.augment)


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
