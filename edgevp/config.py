"""Run configuration: dataclasses that are at once the recipe schema, the `-s key=value` target and the saved record.

Precedence: dataclass defaults < recipe YAML < `-s/--set a.b=c` overrides. Every key is type-checked; unknown keys
are errors with a suggestion. The method-specific `prompt` section takes its schema from the method registry.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .errors import ConfigError


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


@dataclass
class DataConfig:
    """Dataset, splits and loading."""

    name: str = field(default="fashion_mnist", metadata={"help": "fashion_mnist | digits | folder"})
    root: str | None = field(default=None, metadata={"help": "dataset directory (folder; overrides built-in paths)"})
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
    augment: Literal["none", "flip", "crop_flip"] = "none"
    batch_size: int = 64
    eval_batch_size: int | None = None
    num_workers: int = 0


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


@dataclass
class PromptConfig:
    """Base of every method's config (the `prompt` section of a recipe)."""


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


def load_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"recipe '{path}' not found", "pass a YAML file, e.g. recipes/dinov2_fmnist/vpt_deep.yaml")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"recipe '{path}' is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"recipe '{path}' must be a mapping of sections (backbone, data, train, prompt, method)")
    return data


def build_run_config(data: dict, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Resolve defaults < `data` < overrides into a checked RunConfig (the prompt schema comes from the method)."""
    from .registry import get_method

    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in (data or {}).items()}
    for item in overrides:
        path, value = parse_override(item)
        set_nested(data, path, value)
    method = data.get("method", RunConfig.method)
    if not isinstance(method, str):
        raise ConfigError(f"method: expected a string, got {method!r}")
    method_cls = get_method(method)
    prompt = from_dict(method_cls.config_cls, data.pop("prompt", None), "prompt")
    cfg = from_dict(RunConfig, data)
    cfg.prompt = prompt
    return cfg


def run_config_to_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
