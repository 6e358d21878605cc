"""Plug-in registry of prompt methods.

A method is a `PromptMethod` subclass registered with `@register_method("name")`; its `config_cls` (a
`PromptConfig` dataclass) is the `prompt` section of a recipe. Three sources fill the registry:
- the built-in methods, declared below by module path so that their configs resolve without importing torch;
- installed plug-ins: every entry point in the group `edgevp.methods` (`name = "package.module"` or
  `"package.module:Class"`) is imported the first time a method is looked up, and registers itself;
- any module that calls `register_method` before the lookup (a test, a notebook).
Stages call the methods only through the `PromptMethod` interface, so a registered method needs no edit elsewhere.
"""
from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .config import PromptConfig
from .errors import ConfigError, MissingError
from .prompts.configs import E2VPTConfig, LinearConfig, LoRVPConfig, PadConfig, VPTConfig

if TYPE_CHECKING:
    from .prompts.base import PromptMethod

ENTRY_POINT_GROUP = "edgevp.methods"


@dataclass
class MethodSpec:
    """What the registry knows of a method before its (torch-importing) module is loaded."""

    name: str
    config_cls: type[PromptConfig]
    module: str  # imported to get the class
    cls: type[PromptMethod] | None = None

    @property
    def summary(self) -> str:
        return (self.config_cls.__doc__ or "").strip().splitlines()[0] if self.config_cls.__doc__ else ""


_METHODS: dict[str, MethodSpec] = {
    "linear": MethodSpec("linear", LinearConfig, "edgevp.prompts.linear"),
    "vpt": MethodSpec("vpt", VPTConfig, "edgevp.prompts.vpt"),
    "e2vpt": MethodSpec("e2vpt", E2VPTConfig, "edgevp.prompts.e2vpt"),
    "lorvp": MethodSpec("lorvp", LoRVPConfig, "edgevp.prompts.lorvp"),
    "pad": MethodSpec("pad", PadConfig, "edgevp.prompts.pad"),
}
_plugins_loaded = False


def register_method(name: str):
    """Class decorator: `@register_method("vpt")` on a PromptMethod subclass that sets `config_cls`."""

    def wrap(cls):
        if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
            raise ValueError(f"method name {name!r} must be lower-case letters, digits and '_'")
        spec = _METHODS.get(name)
        if spec is not None and spec.cls is not None and spec.cls is not cls:
            raise ValueError(f"method {name!r} is already registered by {spec.cls.__qualname__}")
        if spec is not None and spec.cls is None and spec.module != cls.__module__:
            raise ValueError(f"method {name!r} is a built-in method of {spec.module}")
        config_cls = getattr(cls, "config_cls", None)
        if config_cls is None or not issubclass(config_cls, PromptConfig) or config_cls is PromptConfig:
            raise ValueError(f"method {name!r} needs a config_cls (a PromptConfig dataclass of its own)")
        cls.name = name
        _METHODS[name] = MethodSpec(name, config_cls, cls.__module__, cls)
        return cls

    return wrap


def _load_plugins() -> None:
    """Import the installed plug-ins (entry point group `edgevp.methods`) once."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except Exception as e:  # a broken plug-in must not take the built-in methods down with it
            raise MissingError(f"plug-in method '{ep.name}' ({ep.value}) failed to load: {type(e).__name__}: {e}",
                               "fix or uninstall the package that provides it") from None


def _spec(name: str) -> MethodSpec:
    if name not in _METHODS:
        _load_plugins()
    if name not in _METHODS:
        raise ConfigError(f"unknown method '{name}'", f"available: {', '.join(list_methods())}")
    return _METHODS[name]


def method_config(name: str) -> type[PromptConfig]:
    """The `prompt` schema of method `name` (no torch import for the built-ins)."""
    return _spec(name).config_cls


def get_method(name: str) -> type[PromptMethod]:
    """The PromptMethod class registered as `name` (imports its module)."""
    spec = _spec(name)
    if spec.cls is None:
        importlib.import_module(spec.module)  # its @register_method fills spec.cls
    if _METHODS[name].cls is None:
        raise ConfigError(f"module '{spec.module}' did not register method '{name}'")
    return _METHODS[name].cls


def method_specs() -> list[MethodSpec]:
    """Every known method (built-ins and plug-ins), sorted by name."""
    _load_plugins()
    return [_METHODS[k] for k in sorted(_METHODS)]


def list_methods() -> list[str]:
    return [s.name for s in method_specs()]
