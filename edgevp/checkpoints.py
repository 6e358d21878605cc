"""Prompt checkpoints (safetensors, with the run's config in the header) and the trainer's resume state: the torch
side of a run directory (`runs.py` stays torch-free, for the device, profile and report)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import RunConfig, to_dict
from .errors import IncompatibleError
from .io import atomic_path
from .runs import RunDir, edgevp_version

if TYPE_CHECKING:
    import torch

CHECKPOINT_FORMAT = "edgevp-prompt-v1"


def save_checkpoint(path: Path, state: dict[str, torch.Tensor], cfg: RunConfig, **meta: Any) -> None:
    from safetensors.torch import save_file

    header = {"format": CHECKPOINT_FORMAT, "edgevp_version": edgevp_version(), "method": cfg.method,
              "backbone": cfg.backbone.name, "config": json.dumps(to_dict(cfg)),
              **{k: str(v) for k, v in meta.items()}}
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous().cpu() for k, v in state.items()}, str(tmp), metadata=header)


def read_checkpoint(path: Path, cfg: RunConfig | None = None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Load a prompt checkpoint; when `cfg` is given, refuse one from another method or backbone."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    if not Path(path).is_file():
        raise IncompatibleError(f"checkpoint '{path}' not found")
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        state = load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise IncompatibleError(f"checkpoint '{path}' is unreadable: {type(e).__name__}") from None
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise IncompatibleError(f"'{path}' is not an edgevp prompt checkpoint (format {meta.get('format')!r})")
    if cfg is not None:
        for key, want in (("method", cfg.method), ("backbone", cfg.backbone.name)):
            if meta.get(key) != want:
                raise IncompatibleError(f"checkpoint '{path}' is for {key} '{meta.get(key)}', not '{want}'")
    return state, meta


def save_resume(run: RunDir, payload: dict) -> None:
    import torch

    with atomic_path(run.resume_path) as tmp:
        torch.save(payload, tmp)


def load_resume(run: RunDir) -> dict | None:
    if not run.resume_path.is_file():
        return None
    import torch

    return torch.load(run.resume_path, map_location="cpu", weights_only=False)
