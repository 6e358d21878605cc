"""Gradient-based prompt importance, accumulated over the training data (no parameter update).

Gate score (Prompt Condensation): every inserted prompt token gets a scalar gate g = 1 (p̃ = g·p), so
∂L/∂g = Σ_d p̃_d · ∂L/∂p̃_d, the first-order (Taylor) sensitivity of the loss to removing the prompt.
Mask score (E²VPT): gradients of the loss w.r.t. the token mask m (n_p) and the segment mask s (n_p, R).

Aggregation over batches (L is the batch-mean loss):
- `abs_batch` (default): mean over batches of |per-batch gradient| — the expectation E|∂L/∂g| at batch level;
- `abs_mean`: |mean over batches of the gradient|;
- `signed_mean`: mean over batches of the signed gradient (E²VPT's reference code; low = prune first).

Under torchrun each rank takes a slice of every scoring batch (`distributed.ShardedBatches`) with the loss summed
over its slice and divided by the global batch count; the per-batch gradients summed over the ranks are the
one-process gradients, so the scores are the single-process scores.
"""
from __future__ import annotations

from typing import Iterable, Literal

import torch
import torch.nn.functional as F

from .. import distributed
from ..errors import ConfigError
from ..prompts.base import PromptedModel

Aggregate = Literal["abs_batch", "abs_mean", "signed_mean"]


def _aggregate(grads: list[torch.Tensor], mode: Aggregate) -> torch.Tensor:
    g = distributed.sum_all(torch.stack(grads))  # per-batch gradients: each rank's share summed (one all-reduce)
    if mode == "abs_batch":
        return g.abs().mean(0)
    if mode == "abs_mean":
        return g.mean(0).abs()
    return g.mean(0)


def _batches(loader: Iterable, device: torch.device, max_batches: int | None):
    """(x, y, global batch count or None): a DataLoader's batches, or this rank's slices of them under torchrun
    (x and y None for an empty slice)."""
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            return
        x, y, n = batch if len(batch) == 3 else (*batch, None)
        yield (None, None, n) if x is None else (x.to(device), y.to(device), n)


def _grads(model: PromptedModel, batch, wrt: list[torch.Tensor], allow_unused: bool = False) -> list[torch.Tensor]:
    """Gradients of the batch-mean loss w.r.t. `wrt` (a slice's share of it under torchrun; zeros when empty)."""
    x, y, n = batch
    if x is None:
        return [torch.zeros_like(w) for w in wrt]
    loss = F.cross_entropy(model(x), y) if n is None else F.cross_entropy(model(x), y, reduction="sum") / n
    grads = torch.autograd.grad(loss, wrt, allow_unused=allow_unused)
    return [torch.zeros_like(w) if g is None else g.detach() for g, w in zip(grads, wrt)]


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
        for batch in _batches(loader, device, max_batches):
            for g, grad in enumerate(_grads(model, batch, gates, allow_unused=True)):
                per_batch[g].append(grad)
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
        for batch in _batches(loader, device, max_batches):
            gt, gs = _grads(model, batch, list(masks))
            tok.append(gt)
            seg.append(gs)
    finally:
        for m, w in zip(masks, was):
            m.requires_grad_(w)
    if not tok:
        raise ValueError("no data to score prompts on")
    return _aggregate(tok, mode).cpu(), _aggregate(seg, mode).cpu()
