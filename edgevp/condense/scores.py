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

from ..prompts.base import PromptedModel
from ..prompts.e2vpt import E2VPT
from ..prompts.vpt import TokenPrompts

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
    """Per-layer (n_l,) importance of every inserted prompt token of a token-prompt method."""
    method = model.method
    if not isinstance(method, TokenPrompts):
        raise TypeError(f"method '{method.name}' has no prompt tokens to score")
    device = next(model.parameters()).device
    layers = range(model.info.depth) if method.deep else range(1)
    counts = method.layer_counts()
    gates = [torch.ones(counts[l], device=device, requires_grad=True) for l in range(model.info.depth)]
    per_batch: list[list[torch.Tensor]] = [[] for _ in layers]
    model.eval()
    method.gates = gates
    try:
        for x, y in _batches(loader, device, max_batches):
            grads = torch.autograd.grad(F.cross_entropy(model(x), y), [gates[l] for l in layers], allow_unused=True)
            for l, g in zip(layers, grads):
                per_batch[l].append(torch.zeros_like(gates[l]) if g is None else g.detach())
    finally:
        method.gates = None
    if not per_batch or not per_batch[0]:
        raise ValueError("no data to score prompts on")
    return [_aggregate(g, mode).cpu() for g in per_batch]


def mask_scores(model: PromptedModel, loader: Iterable, mode: Aggregate = "abs_batch",
                max_batches: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """E²VPT token (n_p,) and segment (n_p, R) mask importance."""
    method = model.method
    if not isinstance(method, E2VPT):
        raise TypeError(f"method '{method.name}' has no E²VPT masks")
    device = next(model.parameters()).device
    masks = (method.token_mask, method.segment_mask)
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
