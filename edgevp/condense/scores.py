"""Gradient-based prompt importance, accumulated over the training data (no parameter update).

Gate score (Prompt Condensation): every inserted prompt token gets a scalar gate g = 1 (p̃ = g·p), so
∂L/∂g = Σ_d p̃_d · ∂L/∂p̃_d, the first-order (Taylor) sensitivity of the loss to removing the prompt.
Mask score (E²VPT): gradients of the loss w.r.t. the token mask m (n_p) and the segment mask s (n_p, R).

Aggregation over batches (L is the batch-mean loss):
- `abs_batch` (default): mean over batches of |per-batch gradient| — the expectation E|∂L/∂g| at batch level;
- `abs_mean`: |mean over batches of the gradient|;
- `signed_mean`: mean over batches of the signed gradient (E²VPT's reference code; low = prune first).
"""
from __future__ import annotations

from typing import Iterable, Literal

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..prompts.base import PromptedModel

Aggregate = Literal["abs_batch", "abs_mean", "signed_mean"]


def _aggregate(grads: list[torch.Tensor], mode: Aggregate) -> torch.Tensor:
    g = torch.stack(grads)
    if mode == "abs_batch":
        return g.abs().mean(0)
    if mode == "abs_mean":
        return g.mean(0).abs()
    return g.mean(0)


def _batches(loader: Iterable, device: torch.device, max_batches: int | None):
    for i, (x, y) in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            return
        yield x.to(device), y.to(device)


def gate_scores(model: PromptedModel, loader: Iterable, mode: Aggregate = "abs_batch",
                max_batches: int | None = None) -> list[torch.Tensor]:
    """Per-group (n_g,) importance of every prompt unit the method declares (`PromptMethod.prompt_units`)."""
    method = model.method
    units = method.prompt_units()
    if not units:
        raise ConfigError(f"method '{method.name}' has no prompt units to score")
    device = next(model.parameters()).device
    gates = [torch.ones(n, device=device, requires_grad=True) for n in units]
    per_batch: list[list[torch.Tensor]] = [[] for _ in units]
    model.eval()
    method.set_unit_gates(gates)
    try:
        for x, y in _batches(loader, device, max_batches):
            grads = torch.autograd.grad(F.cross_entropy(model(x), y), gates, allow_unused=True)
            for g, grad in enumerate(grads):
                per_batch[g].append(torch.zeros_like(gates[g]) if grad is None else grad.detach())
    finally:
        method.set_unit_gates(None)
    if not per_batch[0]:
        raise ValueError("no data to score prompts on")
    return [_aggregate(g, mode).cpu() for g in per_batch]


def mask_scores(model: PromptedModel, loader: Iterable, mode: Aggregate = "abs_batch",
                max_batches: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Token (n_p,) and segment (n_p, R) mask importance (`PromptMethod.mask_units`)."""
    method = model.method
    masks = method.mask_units()
    if masks is None:
        raise ConfigError(f"method '{method.name}' has no token/segment masks to score")
    device = next(model.parameters()).device
    was = [m.requires_grad for m in masks]
    tok, seg = [], []
    model.eval()
    try:
        for m in masks:
            m.requires_grad_(True)
        for x, y in _batches(loader, device, max_batches):
            gt, gs = torch.autograd.grad(F.cross_entropy(model(x), y), masks)
            tok.append(gt.detach())
            seg.append(gs.detach())
    finally:
        for m, w in zip(masks, was):
            m.requires_grad_(w)
    if not tok:
        raise ValueError("no data to score prompts on")
    return _aggregate(tok, mode).cpu(), _aggregate(seg, mode).cpu()
