"""edgevp: visual prompts for frozen timm backbones — train, condense, fold, export and profile for edge GPUs.

The public API is small and imported lazily, so `import edgevp` stays fast:

    >>> import edgevp
    >>> cfg = edgevp.build_run_config({"method": "vpt", "backbone": {"name": "test_vit", "weights": "none"}})
    >>> model = edgevp.build_model(cfg, num_classes=10)
"""
from __future__ import annotations

__version__ = "0.1.0"

_API = {
    "build_run_config": "edgevp.recipe",
    "RunConfig": "edgevp.config",
    "create_backbone": "edgevp.backbone",
    "build_model": "edgevp.model",
    "load_run": "edgevp.model",
    "fit": "edgevp.train",
    "pack": "edgevp.multitask.pipeline",
    "PackOptions": "edgevp.multitask.pipeline",
    "run_sweep": "edgevp.sweep",
    "SweepOptions": "edgevp.sweep",
    "list_methods": "edgevp.registry",
    "register_method": "edgevp.registry",
    "PromptedModel": "edgevp.prompts.base",
    "PromptMethod": "edgevp.prompts.base",
}

__all__ = sorted(_API) + ["__version__"]


def __getattr__(name: str):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'edgevp' has no attribute {name!r}")
