"""Run configuration: dataclasses that are at once the recipe schema, the `-s key=value` target and the saved record.

Precedence: dataclass defaults < recipe YAML < `-s/--set a.b=c` overrides. Every key is type-checked and every
value range-checked by the dataclass itself (`__post_init__`); unknown keys are errors with a suggestion. The
method-specific `prompt` section takes its schema from the method registry (`edgevp.recipe.build_run_config`).
This module imports neither torch nor the registry.
"""
from __future__ import annotations

import dataclasses
import difflib
import errno
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml

from .errors import ConfigError


def check(condition: bool, message: str) -> None:
    """Validation inside a config's `__post_init__`: a false condition is a ValueError that `from_dict` reports as
    one ConfigError line prefixed with the section."""
    if not condition:
        raise ValueError(message)


@dataclass
class BackboneConfig:
    """The frozen pretrained model."""

    name: str = field(default="vit_small_patch14_dinov2", metadata={"help": "any timm model name"})
    weights: str = field(
        default="offline",
        metadata={"help": "offline (bundled converters), hub (timm model hub), none (random init), or a path to "
                          "a .safetensors/.pth file in timm key names"},
    )
    img_size: int | None = field(default=None, metadata={"help": "input size; default: the backbone's own"})


# `data.name` (edgevp list datasets)
DATASETS = ("fashion_mnist", "fashion_mnist_groups", "digits", "vtab1k", "fgvc", "folder")

# VTAB-1k task folders of the widely shared folder format (NOAH's get_vtab1k.py); `cifar100` is accepted for `cifar`
VTAB1K_TASKS = ("cifar", "cifar100", "caltech101", "dtd", "oxford_flowers102", "oxford_iiit_pet", "svhn", "sun397",
                "patch_camelyon", "eurosat", "resisc45", "diabetic_retinopathy", "clevr_count", "clevr_dist", "dmlab",
                "kitti", "dsprites_loc", "dsprites_ori", "smallnorb_azi", "smallnorb_ele")
VTAB1KTask = Literal["cifar", "cifar100", "caltech101", "dtd", "oxford_flowers102", "oxford_iiit_pet", "svhn", "sun397",
                     "patch_camelyon", "eurosat", "resisc45", "diabetic_retinopathy", "clevr_count", "clevr_dist",
                     "dmlab", "kitti", "dsprites_loc", "dsprites_ori", "smallnorb_azi", "smallnorb_ele"]
FGVC_DATASETS = ("cub", "nabirds", "stanford_dogs", "stanford_cars", "oxford_flowers")  # VPT's JSON split format
FGVCDataset = Literal["cub", "nabirds", "stanford_dogs", "stanford_cars", "oxford_flowers"]


@dataclass
class DataConfig:
    """Dataset, splits and loading."""

    name: str = field(default="fashion_mnist", metadata={
        "help": "fashion_mnist | fashion_mnist_groups (its 3 super-classes: clothing, footwear, bag) | digits | "
                "vtab1k (VTAB-1k folder format: ROOT/<task>/{train800,val200,train800val200,test}.txt) | "
                "fgvc (VPT's FGVC JSON splits: ROOT/{train,val,test}.json) | folder"})
    root: str | None = field(default=None, metadata={
        "help": "dataset directory (folder; overrides built-in paths); vtab1k: the folder holding the task folders; "
                "fgvc: the dataset's folder holding train/val/test.json"})
    task: VTAB1KTask | None = field(default=None, metadata={
        "help": "vtab1k only (required): the task folder, e.g. cifar (cifar100 is accepted for it), dtd, "
                "oxford_flowers102, clevr_count, smallnorb_ele"})
    dataset: FGVCDataset | None = field(default=None, metadata={
        "help": "fgvc only (required): cub | nabirds (images under images/) | stanford_dogs (Images/) | "
                "stanford_cars | oxford_flowers (the root itself)"})
    split_protocol: Literal["tune", "final"] = field(default="tune", metadata={
        "help": "tune: train / val / test as the dataset gives them, for the lr/wd search (vtab1k: train800, val200, "
                "test.txt; fgvc: train.json, val.json, test.json); final: the papers' reported protocol, train+val as "
                "train and test as test (vtab1k: train800val200; fgvc: train.json + val.json; every other dataset: "
                "the tune protocol's train and val merged, limits applied first, so a held-out val_fraction goes "
                "back into train); val stays the val split for monitoring only: it is part of train, so its "
                "accuracy is optimistic and the 'best' checkpoint it picks is in practice one of the last epochs"})
    val_fraction: float = field(default=0.1, metadata={"help": "fraction of train held out for validation when "
                                                                 "the dataset has no val split"})
    test_fraction: float = field(default=0.2, metadata={"help": "fraction held out as test when there is no test split"})
    split_seed: int = field(default=0, metadata={"help": "seed of the train/val/test split and of subsets"})
    limit_train: int | None = field(default=None, metadata={"help": "class-balanced subset size of train"})
    limit_val: int | None = None
    limit_test: int | None = None
    resize: Literal["direct", "timm"] = field(
        default="direct", metadata={"help": "direct: resize straight to the input size (VTAB/LoR-VP); timm: the "
                                            "backbone's resize + center crop"})
    crop_pct: float | None = field(default=None, metadata={
        "help": "resize=timm: resize the shorter side to size/crop_pct before the (center or random) crop; default: "
                "the backbone's own (VPT's FGVC recipe: 224/256 = 0.875)"})
    augment: Literal["none", "flip", "crop_flip"] = "none"
    batch_size: int = 64
    eval_batch_size: int | None = None
    num_workers: int = 0

    def __post_init__(self):
        check(self.name in DATASETS, f"name: unknown dataset {self.name!r}; choose one of {', '.join(DATASETS)}")
        check(0.0 <= self.val_fraction < 1.0 and 0.0 <= self.test_fraction < 1.0,
              "val_fraction and test_fraction must be in [0, 1)")
        check(self.batch_size >= 1 and (self.eval_batch_size is None or self.eval_batch_size >= 1),
              "batch_size and eval_batch_size must be >= 1")
        check(all(v is None or v >= 1 for v in (self.limit_train, self.limit_val, self.limit_test)),
              "limit_train/limit_val/limit_test must be >= 1 (or null for all)")
        check(self.num_workers >= 0, "num_workers must be >= 0")
        check(self.crop_pct is None or 0.0 < self.crop_pct <= 1.0, "crop_pct must be in (0, 1] (or null)")
        if self.name == "vtab1k":
            check(self.task is not None, f"name=vtab1k needs data.task, one of {', '.join(VTAB1K_TASKS)}")
        else:
            check(self.task is None, f"data.task is only for name=vtab1k (name is {self.name}); set data.task=null")
        if self.name == "fgvc":
            check(self.dataset is not None, f"name=fgvc needs data.dataset, one of {', '.join(FGVC_DATASETS)}")
        else:
            check(self.dataset is None, f"data.dataset is only for name=fgvc (name is {self.name}); "
                                        "set data.dataset=null")
        if self.name in ("vtab1k", "fgvc"):
            check(self.root is not None, f"name={self.name} needs data.root, the folder that holds "
                                         + ("the task folders" if self.name == "vtab1k" else "train/val/test.json"))


@dataclass
class TrainConfig:
    """Optimisation and run control."""

    epochs: int = 10
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.1
    weight_decay: float = 1e-4
    momentum: float = 0.9
    warmup_epochs: float = 1.0
    min_lr: float = 0.0
    grad_clip: float | None = field(default=None, metadata={"help": "max global grad norm; none = off"})
    label_smoothing: float = 0.0
    amp: bool = field(default=True, metadata={"help": "mixed precision (CUDA only; ignored on CPU)"})
    seed: int = 0
    deterministic: bool = False
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda | cuda:N"})
    threads: int | None = field(default=None, metadata={"help": "torch CPU threads; default: torch's choice"})
    eval_every: int = 1
    ckpt_every_steps: int = field(default=0, metadata={"help": "also checkpoint every N steps (0 = epoch ends only)"})
    log_every: int = field(default=20, metadata={"help": "steps between log lines when not on a terminal"})
    head_init: Literal["trunc_normal", "zeros", "vpt"] = field(
        default="trunc_normal", metadata={"help": "new head init; vpt = kaiming-normal(fan_out), bias -log(99)"})
    track: list[Literal["tensorboard", "mlflow"]] = field(default_factory=list, metadata={
        "help": "experiment trackers that get a copy of the scalars, hyper-parameters and final metrics: "
                "tensorboard (RUN/tb/), mlflow (sqlite:///RUN/mlflow.db unless MLFLOW_TRACKING_URI is set); none by default"})

    def __post_init__(self):
        check(self.epochs >= 0, "epochs must be >= 0")
        check(len(set(self.track)) == len(self.track), f"track lists a tracker twice: {self.track}")
        check(self.lr > 0 and self.min_lr >= 0, "lr must be > 0 and min_lr >= 0")
        check(self.weight_decay >= 0 and self.momentum >= 0, "weight_decay and momentum must be >= 0")
        check(self.warmup_epochs >= 0, "warmup_epochs must be >= 0")
        check(self.grad_clip is None or self.grad_clip > 0, "grad_clip must be > 0 (or null for off)")
        check(0.0 <= self.label_smoothing < 1.0, "label_smoothing must be in [0, 1)")
        check(self.eval_every >= 1 and self.log_every >= 1, "eval_every and log_every must be >= 1")
        check(self.ckpt_every_steps >= 0, "ckpt_every_steps must be >= 0")
        check(self.threads is None or self.threads >= 1, "threads must be >= 1 (or null)")
        check(self.device == "auto" or self.device == "cpu" or re.fullmatch(r"cuda(:\d+)?", self.device) is not None,
              f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")


def check_epochs(epochs: int) -> None:
    """A training run needs at least one epoch: with none its new head stays random, yet it would export, pack and
    report like a trained run (exit 2). Condensation fine-tunes with 0 epochs on purpose and does not call this."""
    if epochs < 1:
        raise ConfigError(f"train.epochs={epochs} trains nothing: the run's head would stay untrained",
                          "set train.epochs to 1 or more")


@dataclass
class PromptConfig:
    """Base of every method's config (the `prompt` section of a recipe). The docstring of a subclass is its method's
    one-line summary; `needs_vit` says whether the method needs a timm VisionTransformer."""

    needs_vit: ClassVar[bool] = False


@dataclass
class RunConfig:
    """One training run."""

    method: str = "linear"
    name: str | None = field(default=None, metadata={"help": "run directory name; default: derived"})
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)


# ----------------------------------------------------------------------------------------------------------------
# dict <-> dataclass with type checking


def check_options(obj: Any) -> None:
    """Validate an options dataclass against its annotations: every `Literal` field holds one of its values, every
    `int`/`float`/`bool` field a value of that type. Raises ConfigError naming the field by its API and its CLI name
    (they are the same words: `calib_method` is `--calib-method`) and the allowed values."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        key = f"{f.name} / --{f.name.replace('_', '-')}"
        setattr(obj, f.name, _coerce(getattr(obj, f.name), hints[f.name], key))


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check (and lightly coerce) `value` against the annotation `tp`; raise ConfigError with the dotted key."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(e)
        raise errors[0] if errors else ConfigError(f"{key}: invalid value {value!r}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(str, choices))}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (inner, *_) = typing.get_args(tp) or (Any,)
        out = [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
        return out if origin is list else tuple(out)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads '1e-3' as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    if tp is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
        raise ConfigError(f"{key}: expected a path, got {value!r}")
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")


def _unknown_key(key: str, known: list[str]) -> ConfigError:
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], known, n=1)
    hint = f"did you mean '{key.rsplit('.', 1)[0] + '.' if '.' in key else ''}{close[0]}'?" if close else (
        f"known keys: {', '.join(known)}")
    return ConfigError(f"unknown config key '{key}'", hint)


def from_dict(cls: type, data: Any, prefix: str = "") -> Any:
    """Build dataclass `cls` from a (possibly partial) dict, checking every key and type."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if k not in fields:
            raise _unknown_key(key, list(fields))
        kwargs[k] = _coerce(v, hints[k], key)
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{prefix or 'config'}: {e}") from None


def to_dict(obj: Any) -> Any:
    """Dataclass -> plain dict (every default materialised)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj


def parse_override(item: str) -> tuple[list[str], Any]:
    """'train.lr=0.01' -> (['train', 'lr'], 0.01); values are parsed as YAML scalars."""
    if "=" not in item:
        raise ConfigError(f"override '{item}' is not of the form key=value", "example: -s train.lr=0.01")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{item}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def set_nested(data: dict, path: list[str], value: Any) -> None:
    node = data
    for p in path[:-1]:
        nxt = node.get(p)
        if nxt is None:
            nxt = node[p] = {}
        elif not isinstance(nxt, dict):
            raise ConfigError(f"cannot set '{'.'.join(path)}': '{p}' is not a section")
        node = nxt
    node[path[-1]] = value


def _not_a_file(p: Path, what: str) -> str:
    """Why `p` cannot be read as a file: missing, a folder, a link loop or a link to nothing."""
    try:
        p.stat()
    except OSError as e:
        if e.errno == errno.ELOOP:
            return f"{what} '{p}' is a symbolic link loop"
        if p.is_symlink():
            return f"{what} '{p}' is a symbolic link to '{os.readlink(p)}', which does not exist"
        return f"{what} '{p}' not found"
    return f"{what} '{p}' is not a file"


def load_yaml(path: str | Path, what: str = "recipe") -> dict:
    """A YAML mapping from `path`; `what` names the file in errors (a recipe, or a run's config)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(_not_a_file(p, what), "pass a YAML file, e.g. recipes/dinov2_fmnist/vpt_deep.yaml")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{what} '{path}' is not valid YAML{where}: {problem}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{what} '{path}' is not a text file") from None
    if data is None or data == {}:
        raise ConfigError(f"{what} '{path}' is empty",
                          "an empty recipe would train on all of Fashion-MNIST at 518 px for 10 epochs; start from "
                          "recipes/dinov2_fmnist/*.yaml or recipes/tiny/*.yaml")
    if not isinstance(data, dict):
        raise ConfigError(f"{what} '{path}' must be a mapping of sections (backbone, data, train, prompt, method)")
    return data


def run_config_to_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
