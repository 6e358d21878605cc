"""Analytic multiply-accumulate (MAC) counts of timm ViTs with prompts.

Per block with T query tokens and T_kv key/value tokens (embedding dim d, MLP hidden h):
    qkv 3·T·d² + attention 2·T·T_kv·d (QKᵀ and AV) + proj T·d² + MLP 2·T·d·h.
Patch embedding N·(3·ph·pw)·d, classifier d·C. Norms, softmax and adds are not MACs. Prompt methods report the
tokens they add per block as `extra_tokens()` = [(query side, key/value side), ...]; a prompt whose outputs are
discarded but that still runs through the block counts on both sides (unfolded VPT), a key/value-only prompt
(E²VPT's KV prompts, folded VPT) only on the key/value side.
"""
from __future__ import annotations

from dataclasses import dataclass

from .backbone import BackboneInfo, num_patches


@dataclass
class MacCount:
    total: int
    per_block: list[int]
    patch_embed: int
    head: int

    @property
    def gmacs(self) -> float:
        return self.total / 1e9


def block_macs(d: int, hidden: int, t: int, t_kv: int) -> int:
    return 4 * t * d * d + 2 * t * d * hidden + 2 * t * t_kv * d


def vit_macs(info: BackboneInfo, num_classes: int, extra: list[tuple[int, int]] | None = None) -> MacCount:
    """MACs of one image through a timm ViT, with `extra[l] = (query tokens, key/value tokens)` added per block."""
    if not info.is_vit:
        raise ValueError(f"analytic MACs need a ViT, '{info.name}' is not one")
    d, n = info.embed_dim, num_patches(info)
    t0 = info.num_prefix_tokens + n
    extra = extra or [(0, 0)] * info.depth
    per_block = [block_macs(d, info.mlp_hidden, t0 + q, t0 + kv) for q, kv in extra]
    patch = n * 3 * info.patch_size[0] * info.patch_size[1] * d
    head = d * num_classes
    return MacCount(patch + sum(per_block) + head, per_block, patch, head)
