"""Plug-in registry of export targets. A target module registers its build function at import; the CLI reads it."""
from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import ConfigError

_BUILTIN_MODULES = ("onnx", "ort", "trt")


@dataclass(frozen=True)
class Target:
    """An export target: `build(ctx)` writes its artifacts and returns the sidecar fields."""

    name: str
    build: Callable[[Any], dict]
    help: str
    opsets: tuple[int, ...] = (17, 18)


_TARGETS: dict[str, Target] = {}


def register_target(name: str, help: str = "", opsets: tuple[int, ...] = (17, 18)):
    """Function decorator: `@register_target("onnx")` on `build(ctx: ExportContext) -> dict`."""

    def wrap(fn):
        if not re.fullmatch(r"[a-z][a-z0-9_-]*", name):
            raise ValueError(f"target name {name!r} must be lower-case letters, digits, '-' and '_'")
        if name in _TARGETS and _TARGETS[name].build is not fn:
            raise ValueError(f"target {name!r} is already registered")
        _TARGETS[name] = Target(name, fn, help or (fn.__doc__ or "").strip().splitlines()[0], tuple(opsets))
        return fn

    return wrap


def _load_builtins() -> None:
    for mod in _BUILTIN_MODULES:
        importlib.import_module(f"edgevp.export.{mod}")


def get_target(name: str) -> Target:
    _load_builtins()
    if name not in _TARGETS:
        raise ConfigError(f"unknown export target '{name}'", f"available: {', '.join(list_targets())}")
    return _TARGETS[name]


def list_targets() -> list[str]:
    _load_builtins()
    return sorted(_TARGETS)
