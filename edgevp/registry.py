"""Plug-in registry of prompt methods. A method module registers itself at import; the CLI reads the registry."""
from __future__ import annotations

import importlib
import re
from typing import TYPE_CHECKING

from .errors import ConfigError

if TYPE_CHECKING:
    from .prompts.base import PromptMethod

_METHODS: dict[str, type[PromptMethod]] = {}
_BUILTIN_MODULES = ("linear", "vpt", "e2vpt", "lorvp")


def register_method(name: str):
    """Class decorator: `@register_method("vpt")` on a PromptMethod subclass with a `config_cls`."""

    def wrap(cls):
        if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
            raise ValueError(f"method name {name!r} must be lower-case letters, digits and '_'")
        if name in _METHODS and _METHODS[name] is not cls:
            raise ValueError(f"method {name!r} is already registered by {_METHODS[name].__qualname__}")
        if getattr(cls, "config_cls", None) is None:
            raise ValueError(f"method {name!r} needs a config_cls")
        cls.name = name
        _METHODS[name] = cls
        return cls

    return wrap


def _load_builtins() -> None:
    for mod in _BUILTIN_MODULES:
        importlib.import_module(f"edgevp.prompts.{mod}")


def get_method(name: str) -> type[PromptMethod]:
    _load_builtins()
    if name not in _METHODS:
        raise ConfigError(f"unknown method '{name}'", f"available: {', '.join(list_methods())}")
    return _METHODS[name]


def list_methods() -> list[str]:
    _load_builtins()
    return sorted(_METHODS)
