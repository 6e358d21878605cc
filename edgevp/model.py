"""Build a PromptedModel from a RunConfig, and load one back from a run directory."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from .backbone import check_backbone, create_backbone, set_head
from .checkpoints import read_checkpoint
from .config import RunConfig
from .errors import EdgevpError
from .prompts.base import PromptedModel
from .registry import get_method
from .runs import RunDir


def build_model(cfg: RunConfig, num_classes: int) -> PromptedModel:
    """Backbone (frozen) + new head when the method wants one + the method's prompts, seeded by train.seed.

    Example:
        >>> cfg = build_run_config({"method": "vpt", "backbone": {"name": "test_vit", "weights": "none"}})
        >>> model = build_model(cfg, num_classes=10)
    """
    method_cls = get_method(cfg.method)
    new_head = method_cls.wants_new_head(cfg.prompt)
    torch.manual_seed(cfg.train.seed)  # random-init backbones, the head and the prompts are all seeded
    backbone, info = create_backbone(cfg.backbone, num_classes if new_head else None)
    if new_head:
        set_head(backbone, cfg.train.head_init)
    method = method_cls(cfg.prompt, info)
    return PromptedModel(backbone, method, info)


def check_model(cfg: RunConfig) -> None:
    """Every check on the model of `cfg` that needs no data, so that it runs before any image is read: the backbone
    name, weights for it, the method on that backbone and its prompt settings (exit 2 or 4). The model is built
    on the meta device: no memory, no weights read."""
    check_backbone(cfg.backbone)
    probe = dataclasses.replace(cfg, backbone=dataclasses.replace(cfg.backbone, weights="none"))
    try:
        with torch.device("meta"):
            build_model(probe, 2)
    except EdgevpError:
        raise
    except Exception:  # noqa: BLE001, S110 - a method that needs real tensors is checked when built for real
        pass


def load_run(path: str | Path, which: str = "best") -> tuple[RunConfig, PromptedModel, dict]:
    """The config, the trained model (eval mode) and the checkpoint header of a run directory."""
    run = RunDir(path)
    run.manifest()
    cfg = run.config()
    state, meta = read_checkpoint(run.checkpoint(which), cfg)
    num_classes = int(meta.get("num_classes", 0)) or None
    model = build_model(cfg, num_classes or 0)
    model.load_trainable_state(state)
    return cfg, model.eval(), meta
