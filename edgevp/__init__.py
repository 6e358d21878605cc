"""edgevp: visual prompts for frozen timm backbones — train, condense, fold, export and profile for edge GPUs.

The public API mirrors the CLI, one function per command, each taking the options dataclass the command fills
(`edgevp/api.py`), and is imported lazily, so `import edgevp` stays fast:

    >>> import edgevp
    >>> cfg = edgevp.build_run_config({"method": "vpt", "backbone": {"name": "test_vit", "weights": "none"}})
    >>> result = edgevp.train(cfg, edgevp.TrainOptions(out="runs/vpt"))
    >>> edgevp.export(result.run_dir, edgevp.ExportOptions(target="ort-fp16"))

Six of these functions share their name with a subpackage or module (`edgevp.train`, `condense`, `export`,
`profile`, `report`, `sweep`): `edgevp.train(...)` calls the function, while `edgevp.train.fit`, `import
edgevp.export.onnx as m` and `from edgevp.train import fit` still reach the module.
"""
from __future__ import annotations

import importlib
import sys
import types

__version__ = "0.1.0"

_API = {
    # one function per CLI command (edgevp/api.py), and the options dataclasses they take
    "train": "edgevp.api",
    "condense": "edgevp.condense.api",
    "export": "edgevp.api",
    "pack": "edgevp.multitask.pipeline",
    "profile": "edgevp.api",
    "evaluate": "edgevp.api",
    "predict": "edgevp.api",
    "report": "edgevp.api",
    "sweep": "edgevp.api",
    "demo": "edgevp.api",
    "check": "edgevp.api",
    "TrainOptions": "edgevp.api",
    "PCOptions": "edgevp.condense.pc",
    "E2VPTPruneOptions": "edgevp.condense.e2vpt_prune",
    "ExportOptions": "edgevp.export.pipeline",
    "PackOptions": "edgevp.multitask.pipeline",
    "ProfileOptions": "edgevp.profile.options",
    "EvalOptions": "edgevp.device.options",
    "PredictOptions": "edgevp.device.options",
    "ReportOptions": "edgevp.api",
    "SweepOptions": "edgevp.sweep",
    "DemoOptions": "edgevp.api",
    "CheckOptions": "edgevp.api",
    # building blocks
    "build_run_config": "edgevp.recipe",
    "RunConfig": "edgevp.config",
    "create_backbone": "edgevp.backbone",
    "build_model": "edgevp.model",
    "load_run": "edgevp.model",
    "fit": "edgevp.train",
    "run_sweep": "edgevp.sweep",
    "list_methods": "edgevp.registry",
    "register_method": "edgevp.registry",
    "PromptedModel": "edgevp.prompts.base",
    "PromptMethod": "edgevp.prompts.base",
}

__all__ = sorted(_API) + ["__version__"]

_SHARED = ("train", "condense", "export", "profile", "report", "sweep", "demo")  # also a submodule's name


class _Entry:
    """`edgevp.<name>`: calls the API function; any attribute is the submodule `edgevp.<name>`'s (read, set,
    deleted there), so that code and tests that reach the module through the package keep working."""

    __slots__ = ("_name",)

    def __init__(self, name: str):
        object.__setattr__(self, "_name", name)

    def _function(self):
        return getattr(importlib.import_module(_API[self._name]), self._name)

    def _module(self) -> types.ModuleType:
        return importlib.import_module(f"{__name__}.{self._name}")

    def __call__(self, *args, **kwargs):
        return self._function()(*args, **kwargs)

    @property
    def __wrapped__(self):  # inspect.signature and help() show the function's
        return self._function()

    @property
    def __doc__(self):
        return self._function().__doc__

    def __getattr__(self, attr: str):
        return getattr(self._module(), attr)

    def __setattr__(self, attr: str, value) -> None:
        setattr(self._module(), attr, value)

    def __delattr__(self, attr: str) -> None:
        delattr(self._module(), attr)

    def __repr__(self) -> str:
        return f"<edgevp.{self._name}: the API function {_API[self._name]}.{self._name}; attributes: the module>"


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value) -> None:
        # importing the submodule edgevp.<name> sets it on the package: keep the API entry there instead (the
        # module stays in sys.modules and behind the entry's attributes)
        if name in _SHARED and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
for _name in _SHARED:
    types.ModuleType.__setattr__(sys.modules[__name__], _name, _Entry(_name))
del _name


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'edgevp' has no attribute {name!r}")
