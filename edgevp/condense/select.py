"""Which prompts to keep: global or per-layer top-K of importance scores, a random baseline, or a MAC budget."""
from __future__ import annotations

from typing import Callable, Literal

import torch

Ranking = Literal["global", "layer", "random"]


def global_order(scores: list[torch.Tensor]) -> list[tuple[int, int]]:
    """All (layer, index) pairs, most important first; ties broken by layer then index (deterministic)."""
    items = [(-float(s), l, i) for l, layer in enumerate(scores) for i, s in enumerate(layer.tolist())]
    return [(l, i) for _, l, i in sorted(items)]


def keep_masks(scores: list[torch.Tensor], k: int, ranking: Ranking = "global", seed: int = 0) -> list[torch.Tensor]:
    """Boolean keep masks per layer with exactly `k` True in total.

    global: top-k over all layers together (layers may end with different counts, including none);
    layer:  the same share in every layer (k split as evenly as possible, extra ones to the first layers);
    random: k prompts drawn uniformly (the baseline), seeded.
    """
    total = sum(len(s) for s in scores)
    if not 0 <= k <= total:
        raise ValueError(f"cannot keep {k} of {total} prompts")
    masks = [torch.zeros(len(s), dtype=torch.bool) for s in scores]
    if ranking == "global":
        for l, i in global_order(scores)[:k]:
            masks[l][i] = True
    elif ranking == "random":
        g = torch.Generator().manual_seed(seed)
        flat = torch.randperm(total, generator=g)[:k].tolist()
        offsets = [0]
        for s in scores:
            offsets.append(offsets[-1] + len(s))
        for f in flat:
            l = max(j for j in range(len(scores)) if offsets[j] <= f)
            masks[l][f - offsets[l]] = True
    else:
        quota = _even_quota(k, [len(s) for s in scores])
        for l, (s, q) in enumerate(zip(scores, quota)):
            masks[l][torch.argsort(-s, stable=True)[:q]] = True
    return masks


def _even_quota(k: int, sizes: list[int]) -> list[int]:
    quota = [0] * len(sizes)
    while sum(quota) < k:
        for l, n in enumerate(sizes):
            if quota[l] < n and sum(quota) < k:
                quota[l] += 1
    return quota


def count_for_budget(scores: list[torch.Tensor], macs_of: Callable[[list[int]], int], budget: int) -> int:
    """The largest k whose global top-k stays within `budget` MACs (`macs_of` maps per-layer counts to MACs)."""
    counts = [0] * len(scores)
    if macs_of(counts) > budget:
        raise ValueError("the budget is below the cost of the model without prompts")
    k = 0
    for l, _ in global_order(scores):
        counts[l] += 1
        if macs_of(counts) > budget:
            break
        k += 1
    return k
