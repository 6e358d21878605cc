"""Analytic multiply-accumulate (MAC) counts of timm ViTs and Swin Transformers with prompts.

Per block with T query tokens and T_kv key/value tokens (embedding dim d, MLP hidden h):
    qkv 3·T·d² + attention 2·T·T_kv·d (QKᵀ and AV) + proj T·d² + MLP 2·T·d·h.
Patch embedding N·(3·ph·pw)·d, classifier d·C. Norms, softmax and adds are not MACs. Prompt methods report the
tokens they add per block as `extra_tokens()` = [(query side, key/value side), ...]; a prompt whose outputs are
discarded but that still runs through the block counts on both sides (unfolded VPT), a key/value-only prompt
(E²VPT's KV prompts, folded VPT) only on the key/value side.

Swin (`swin_macs`), per block of a stage with an H×W map (Hp×Wp padded to whole M×M windows, nW = Hp·Wp / M²),
dim d, attention dim a, MLP hidden h, with q prompt rows, kv prompt key/value columns and k kept prompt rows:
    qkv 3·(Hp·Wp + q)·d·a + attention 2·nW·(M² + q)·(M² + kv)·a + proj (Hp·Wp + k)·a·d + MLP 2·(H·W + k)·d·h.
A prompt adds a column to every window's attention and, unfolded, a row to every window; its query, key and value
are computed once per image (the same in every window). Only rows whose outputs go on to the next block (k: shallow
prompts before the last block; the method's `extra_tokens()` list says so in `.kept`) are projected and go through the
MLP (once per image, after the mean over windows); deep prompt rows are replaced by the next block, so their outputs
are never computed (an exporter would drop them as dead code anyway). Patch merging of an H'×W' output map
4·H'·W'·d_in·d_out, plus 4·c·d_in·d_out for c prompt rows carried through it (shallow prompts, `.merged`); patch
embedding N·(3·ph·pw)·d0; classifier d_last·C.
"""
from __future__ import annotations

from dataclasses import dataclass

from .backbone_info import BackboneInfo, num_patches


@dataclass
class MacCount:
    total: int
    per_block: list[int]
    patch_embed: int
    head: int

    @property
    def gmacs(self) -> float:
        return self.total / 1e9


class PromptTokens(list):
    """`extra_tokens()`'s per-block [(query, key/value), ...] list plus, for Swin, `kept`: per block the prompt rows
    whose outputs go on to the next block, and `merged`: per stage the prompt rows its patch merging carries."""

    def __init__(self, extra, kept: list[int] | None = None, merged: list[int] | None = None):
        super().__init__(extra)
        self.kept = list(kept or [])
        self.merged = list(merged or [])


def block_macs(d: int, hidden: int, t: int, t_kv: int) -> int:
    return 4 * t * d * d + 2 * t * d * hidden + 2 * t * t_kv * d


def vit_macs(info: BackboneInfo, num_classes: int, extra: list[tuple[int, int]] | None = None) -> MacCount:
    """MACs of one image through a timm ViT, with `extra[l] = (query tokens, key/value tokens)` added per block."""
    if info.is_swin:
        return swin_macs(info, num_classes, extra)
    if not info.is_vit:
        raise ValueError(f"analytic MACs need a ViT or a Swin, '{info.name}' is neither")
    d, n = info.embed_dim, num_patches(info)
    t0 = info.num_prefix_tokens + n
    extra = extra or [(0, 0)] * info.depth
    per_block = [block_macs(d, info.mlp_hidden, t0 + q, t0 + kv) for q, kv in extra]
    patch = n * 3 * info.patch_size[0] * info.patch_size[1] * d
    head = d * num_classes
    return MacCount(patch + sum(per_block) + head, per_block, patch, head)


def swin_block_macs(d: int, attn_dim: int, hidden: int, hw: tuple[int, int], window: tuple[int, int], q: int = 0,
                    kv: int = 0, kept: int = 0) -> int:
    """One Swin block on an H×W map with M×M windows, q prompt rows, kv prompt key/value columns and `kept` prompt
    rows whose outputs are computed (module doc)."""
    (h, w), (mh, mw) = hw, window
    hp, wp = -(-h // mh) * mh, -(-w // mw) * mw
    area = mh * mw
    nw = hp * wp // area
    tokens = hp * wp
    return (3 * (tokens + q) * d * attn_dim + (tokens + kept) * attn_dim * d
            + 2 * nw * (area + q) * (area + kv) * attn_dim + 2 * (h * w + kept) * d * hidden)


def swin_macs(info: BackboneInfo, num_classes: int, extra: list[tuple[int, int]] | None = None) -> MacCount:
    """MACs of one image through a timm Swin Transformer, with `extra[l] = (query tokens, key/value tokens)` added per
    block (numbered over all stages), and when `extra` is a PromptTokens its `kept` rows per block and `merged` rows
    per patch merging (none for a plain list: prompt rows that are replaced after each block, as deep prompts)."""
    if not info.is_swin:
        raise ValueError(f"'{info.name}' is not a Swin Transformer")
    extra = extra or [(0, 0)] * info.depth
    merged = list(getattr(extra, "merged", None) or [0] * len(info.swin_stages))
    kept = list(getattr(extra, "kept", None) or [0] * info.depth)
    _, h, w = info.input_size
    ph, pw = info.patch_size
    patch = (h // ph) * (w // pw) * 3 * ph * pw * info.embed_dim
    per_block, merges, layer = [], 0, 0
    for s, st in enumerate(info.swin_stages):
        rh, rw = st["resolution"]
        if st["downsample"]:
            merges += 4 * (rh * rw + merged[s]) * st["in_dim"] * st["dim"]
        for _ in range(st["depth"]):
            q, kv = extra[layer]
            per_block.append(swin_block_macs(st["dim"], st["attn_dim"], st["mlp_hidden"], (rh, rw), st["window"], q, kv,
                                             kept[layer]))
            layer += 1
    head = info.swin_stages[-1]["dim"] * num_classes
    return MacCount(patch + sum(per_block) + merges + head, per_block, patch, head)


def model_macs(info: BackboneInfo, num_classes: int, extra: list[tuple[int, int]] | None = None) -> MacCount | None:
    """Analytic MACs of one image for any backbone with a cost model (ViT, Swin), None for others (CNNs)."""
    if info.is_swin:
        return swin_macs(info, num_classes, extra)
    if info.is_vit:
        return vit_macs(info, num_classes, extra)
    return None
