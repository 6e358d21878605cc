"""Attention with a key/value prefix: the one computation behind E²VPT's key-value prompts and the deploy-time fold
of deep prompt tokens into constant keys/values."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

TIMM_ATTENTION_PARTS = ("qkv", "q_norm", "k_norm", "attn_drop", "proj", "proj_drop", "num_heads", "head_dim", "scale")


def missing_attention_part(attn: nn.Module) -> str:
    """The first part of timm's `Attention` that `attn` lacks ('' when it has them all)."""
    return next((name for name in TIMM_ATTENTION_PARTS if not hasattr(attn, name)), "")


def attention_with_kv_prefix(a: nn.Module, x: torch.Tensor, pk: torch.Tensor, pv: torch.Tensor,
                             training: bool = False, mask: torch.Tensor | None = None) -> torch.Tensor:
    """timm Attention `a` on tokens `x` (B, N, C) with keys `pk` and values `pv` in front of the tokens' own keys and
    values; only the tokens query, so the output keeps N rows.

    `pk`/`pv` are (heads, n, head_dim), shared by the batch, or (B, heads, n, head_dim), one set per sample.
    `mask` (B, 1, 1, n + N), added to the attention logits, takes key columns out exactly with -inf (padding).
    """
    B, N, C = x.shape
    gate = a.gate(x).sigmoid() if getattr(a, "gate", None) is not None else None
    q, k, v = a.qkv(x).reshape(B, N, 3, a.num_heads, a.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = a.q_norm(q), a.k_norm(k)
    if pk.dim() == 3:
        pk, pv = pk.unsqueeze(0).expand(B, -1, -1, -1), pv.unsqueeze(0).expand(B, -1, -1, -1)
    k = torch.cat([pk.to(k.dtype), k], dim=2)
    v = torch.cat([pv.to(v.dtype), v], dim=2)
    if getattr(a, "fused_attn", False):
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=a.attn_drop.p if training else 0.0)
    else:
        scores = (q * a.scale) @ k.transpose(-2, -1)
        x = a.attn_drop((scores if mask is None else scores + mask).softmax(dim=-1)) @ v
    x = x.transpose(1, 2).reshape(B, N, getattr(a, "attn_dim", C))
    x = a.norm(x) if hasattr(a, "norm") else x
    if gate is not None:
        x = x * gate
    return a.proj_drop(a.proj(x))


def token_keys_values(block: nn.Module, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The keys and values (heads, n, head_dim) that constant tokens (n, D) contribute inside timm block `block`:
    K = k_norm(LN1(P) W_k + b_k), V = LN1(P) W_v + b_v."""
    a = block.attn
    n = tokens.shape[0]
    qkv = a.qkv(block.norm1(tokens.unsqueeze(0))).reshape(1, n, 3, a.num_heads, a.head_dim)
    _, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (1, heads, n, head_dim)
    return a.k_norm(k)[0], v[0]
