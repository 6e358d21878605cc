"""E²VPT (Han et al., ICCV 2023): key-value prompts inside every attention plus VPT-deep visual prompts.

- Key-value prompts: per layer a tensor (heads, n_kv, head_dim) in the per-head key/value space *after* the K/V
  projections, concatenated along the key axis: K' = [P_K; K], V' = [P_V; V]. Queries are not extended, so the
  sequence length is unchanged. One shared tensor for P_K and P_V by default (the reference setting).
- Visual prompts: VPT-deep tokens (replaced at every block), each multiplied by a token mask m (n_p) and a
  segment mask s (n_p, R) before insertion: p̃_k = m_k · tile(s_k) ⊙ p_k, segment r owning the strided dims
  {r, r+R, r+2R, ...}. The same masks apply at every layer. They are all ones and frozen by default (inert);
  pruning reads their gradients.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..backbone import BackboneInfo
from ..config import PromptConfig
from ..errors import ConfigError
from ..registry import register_method
from .vpt import TokenPrompts, vpt_init_bound


class KVPromptAttention(nn.Module):
    """timm Attention recomputed from its own submodules with prompt keys/values prepended."""

    def __init__(self, attn: nn.Module, layer: int, owner: E2VPT):
        super().__init__()
        for name in ("qkv", "q_norm", "k_norm", "attn_drop", "proj", "proj_drop", "num_heads", "head_dim", "scale"):
            if not hasattr(attn, name):
                raise ConfigError(f"attention module {type(attn).__name__} has no '{name}'; E²VPT needs timm Attention")
        self.attn = attn
        self.layer = layer
        object.__setattr__(self, "owner", owner)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        if attn_mask is not None or is_causal:
            raise NotImplementedError("key-value prompts with attention masks are not supported")
        pk, pv = self.owner.kv_prompt(self.layer)
        return attention_with_kv_prefix(self.attn, x, pk, pv, self.training)


def attention_with_kv_prefix(a: nn.Module, x: torch.Tensor, pk: torch.Tensor, pv: torch.Tensor,
                             training: bool = False) -> torch.Tensor:
    """timm Attention `a` on tokens `x` (B, N, C) with keys `pk` and values `pv` (heads, n, head_dim) in front of the
    tokens' own keys and values; only the tokens query, so the output keeps N rows."""
    B, N, C = x.shape
    gate = a.gate(x).sigmoid() if getattr(a, "gate", None) is not None else None
    q, k, v = a.qkv(x).reshape(B, N, 3, a.num_heads, a.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = a.q_norm(q), a.k_norm(k)
    k = torch.cat([pk.to(k.dtype).unsqueeze(0).expand(B, -1, -1, -1), k], dim=2)
    v = torch.cat([pv.to(v.dtype).unsqueeze(0).expand(B, -1, -1, -1), v], dim=2)
    if getattr(a, "fused_attn", False):
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=a.attn_drop.p if training else 0.0)
    else:
        x = a.attn_drop(((q * a.scale) @ k.transpose(-2, -1)).softmax(dim=-1)) @ v
    x = x.transpose(1, 2).reshape(B, N, getattr(a, "attn_dim", C))
    x = a.norm(x) if hasattr(a, "norm") else x
    if gate is not None:
        x = x * gate
    return a.proj_drop(a.proj(x))


@dataclass
class E2VPTConfig(PromptConfig):
    """E²VPT key-value and visual prompts."""

    num_tokens: int = field(default=10, metadata={"help": "visual prompt tokens per layer (n_p)"})
    num_kv: int = field(default=5, metadata={"help": "key-value prompts per layer (n_kv)"})
    share_kv: bool = field(default=True, metadata={"help": "one tensor serves as key and value prompt"})
    kv_init: Literal["kaiming", "uniform", "trunc_normal"] = field(
        default="kaiming", metadata={"help": "kaiming: bound sqrt(6/(n_kv·head_dim)) (reference)"})
    dropout: float = field(default=0.1, metadata={"help": "dropout on visual prompts"})
    kv_dropout: float = 0.0
    segments: int = field(default=16, metadata={"help": "segments per prompt for segment masks (R)"})
    train_masks: bool = field(default=False, metadata={"help": "learn the token/segment masks as gains"})
    token_keep: list[bool] | None = field(default=None, metadata={"help": "kept visual tokens (written by pruning)"})
    tokens_per_layer: list[int] | None = field(
        default=None, metadata={"help": "per-layer visual prompt counts (written by Prompt Condensation; the masks "
                                        "are then baked into the prompts)"})

    def __post_init__(self):
        if self.num_tokens < 0 or self.num_kv < 0 or self.segments < 1:
            raise ValueError("num_tokens and num_kv must be >= 0, segments >= 1")


@register_method("e2vpt")
class E2VPT(TokenPrompts):
    """Key-value prompts in every attention plus masked VPT-deep visual prompts."""

    config_cls = E2VPTConfig
    can_condense = True

    def __init__(self, config: E2VPTConfig, info: BackboneInfo):
        super().__init__(config, info)
        d, depth, h = info.embed_dim, info.depth, info.num_heads
        if d % config.segments:
            raise ConfigError(f"prompt.segments={config.segments} must divide the embedding dim {d}")
        n = config.num_tokens if config.token_keep is None else sum(config.token_keep)
        self.counts = [n] * depth
        self.baked = config.tokens_per_layer is not None  # condensed per layer: masks live in the prompts
        if self.baked:
            if len(config.tokens_per_layer) != depth or min(config.tokens_per_layer) < 0:
                raise ConfigError(f"prompt.tokens_per_layer needs {depth} non-negative counts")
            self.counts, n = list(config.tokens_per_layer), 0
        bound = vpt_init_bound(info)
        self.prompts = nn.ParameterList([nn.Parameter(torch.empty(c, d).uniform_(-bound, bound)) for c in self.counts])
        self.token_mask = nn.Parameter(torch.ones(n), requires_grad=config.train_masks and not self.baked)
        self.segment_mask = nn.Parameter(torch.ones(n, config.segments),
                                         requires_grad=config.train_masks and not self.baked)
        head_dim = d // h
        shape = (depth, h, config.num_kv, head_dim)
        self.kv_k = nn.Parameter(self._kv_init(torch.empty(shape), config, head_dim))
        self.kv_v = None if config.share_kv else nn.Parameter(self._kv_init(torch.empty(shape), config, head_dim))

    @staticmethod
    def _kv_init(t: torch.Tensor, config: E2VPTConfig, head_dim: int) -> torch.Tensor:
        if config.kv_init == "kaiming":  # kaiming-uniform, gain sqrt(2), fan_in = n_kv·head_dim
            bound = math.sqrt(6.0 / max(config.num_kv * head_dim, 1))
            return t.uniform_(-bound, bound)
        if config.kv_init == "uniform":
            bound = math.sqrt(6.0 / (3 * 16 * 16 + 16))
            return t.uniform_(-bound, bound)
        return nn.init.trunc_normal_(t, std=0.02)

    def attach(self, backbone: nn.Module) -> None:
        super().attach(backbone)
        for i, wrapped in enumerate(backbone.blocks):
            self._swap(wrapped.block, "attn", KVPromptAttention(wrapped.block.attn, i, self))

    def layer_counts(self) -> list[int]:
        return self.counts

    def masked(self, p: torch.Tensor) -> torch.Tensor:
        if self.baked:
            return p
        reps = p.shape[-1] // self.segment_mask.shape[1]
        return self.token_mask[:, None] * self.segment_mask.repeat(1, reps) * p

    def layer_prompt(self, layer: int) -> torch.Tensor:
        p = self.masked(self.prompts[layer])
        return F.dropout(p, self.config.dropout, self.training) if self.config.dropout else p

    def kv_prompt(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        pk = self.kv_k[layer]
        pv = pk if self.kv_v is None else self.kv_v[layer]
        if self.config.kv_dropout and self.training:
            pk = F.dropout(pk, self.config.kv_dropout)
            pv = pk if self.kv_v is None else F.dropout(pv, self.config.kv_dropout)
        return pk, pv

    def extra_tokens(self) -> list[tuple[int, int]]:
        return [(n, n + self.config.num_kv) for n in self.layer_counts()]
