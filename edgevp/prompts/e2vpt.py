"""E²VPT (Han et al., ICCV 2023): key-value prompts inside every attention plus VPT-deep visual prompts.

- Key-value prompts: per layer a tensor (heads, n_kv, head_dim) in the per-head key/value space *after* the K/V
  projections, concatenated along the key axis: K' = [P_K; K], V' = [P_V; V]. Queries are not extended, so the
  sequence length is unchanged. One shared tensor for P_K and P_V by default (the reference setting).
- Visual prompts: VPT-deep tokens (replaced at every block), each multiplied by a token mask m (n_p) and a
  segment mask s (n_p, R) before insertion: p̃_k = m_k · tile(s_k) ⊙ p_k, segment r owning the strided dims
  {r, r+R, r+2R, ...}. The same masks apply at every layer. They are all ones and frozen by default (inert);
  pruning reads their gradients.
Prompt dropout (visual prompts, and key-value prompts with `kv_dropout`) draws an independent mask per sample, and
for the key and the value use of a key-value prompt independently.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..backbone import BackboneInfo
from ..errors import ConfigError, IncompatibleError
from ..registry import register_method
from .attention import attention_with_kv_prefix, missing_attention_part
from .configs import E2VPTConfig
from .vpt import TokenPrompts, block_init_bounds, check_swin_switches


class KVPromptAttention(nn.Module):
    """timm Attention recomputed from its own submodules with prompt keys/values prepended."""

    def __init__(self, attn: nn.Module, layer: int, owner: E2VPT):
        super().__init__()
        missing = missing_attention_part(attn)
        if missing:
            raise ConfigError(f"attention module {type(attn).__name__} has no '{missing}'; E²VPT needs timm Attention")
        self.attn = attn
        self.layer = layer
        object.__setattr__(self, "owner", owner)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        if attn_mask is not None or is_causal:
            raise NotImplementedError("key-value prompts with attention masks are not supported")
        pk, pv = self.owner.kv_prompt(self.layer, x.shape[0])
        return attention_with_kv_prefix(self.attn, x, pk, pv, self.training)


@register_method("e2vpt")
class E2VPT(TokenPrompts):
    """Key-value prompts in every attention plus masked VPT-deep visual prompts."""

    config_cls = E2VPTConfig

    def __init__(self, config: E2VPTConfig, info: BackboneInfo):
        super().__init__(config, info)
        d, depth, h = info.embed_dim, info.depth, info.num_heads
        dims = info.block_dims or [d] * depth  # Swin: each block's prompts live in its stage's dim
        if any(dim % config.segments for dim in dims):
            raise ConfigError(f"prompt.segments={config.segments} must divide the embedding dim"
                              f"{'s ' + str(sorted(set(dims))) if info.is_swin else ' ' + str(d)}")
        self.dropout = config.dropout
        self.pool_prompts = check_swin_switches(config, info)
        n = config.num_tokens if config.token_keep is None else sum(config.token_keep)
        self.counts = [n] * depth
        self.baked = config.tokens_per_layer is not None  # condensed per layer: masks live in the prompts
        if self.baked:
            if len(config.tokens_per_layer) != depth or min(config.tokens_per_layer) < 0:
                raise ConfigError(f"prompt.tokens_per_layer needs {depth} non-negative counts")
            self.counts, n = list(config.tokens_per_layer), 0
        bounds = block_init_bounds(info, dims, config.swin_init_bound)  # Swin: per stage, or stage 0's (reference)
        self.prompts = nn.ParameterList([nn.Parameter(torch.empty(c, dims[i]).uniform_(-bounds[i], bounds[i]))
                                         for i, c in enumerate(self.counts)])
        self.token_mask = nn.Parameter(torch.ones(n), requires_grad=config.train_masks and not self.baked)
        self.segment_mask = nn.Parameter(torch.ones(n, config.segments),
                                         requires_grad=config.train_masks and not self.baked)
        if info.is_swin:  # per block (heads, n_kv, head_dim) of its stage: a list, as stages differ
            self.kv_k = self._swin_kv(info, config)
            self.kv_v = None if config.share_kv else self._swin_kv(info, config)
            return
        head_dim = d // h
        shape = (depth, h, config.num_kv, head_dim)
        self.kv_k = nn.Parameter(self._kv_init(torch.empty(shape), config, head_dim))
        self.kv_v = None if config.share_kv else nn.Parameter(self._kv_init(torch.empty(shape), config, head_dim))

    @classmethod
    def _swin_kv(cls, info: BackboneInfo, config: E2VPTConfig) -> nn.ParameterList:
        out = []
        for st in info.swin_stages:
            heads, head_dim = st["heads"], st["attn_dim"] // st["heads"]
            out += [nn.Parameter(cls._kv_init(torch.empty(heads, config.num_kv, head_dim), config, head_dim))
                    for _ in range(st["depth"])]
        return nn.ParameterList(out)

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
        if self.info.is_swin:  # the Swin blocks take the key-value prompts from kv_prompt (edgevp.prompts.swin)
            return
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
        return self.masked(self.prompts[layer])

    def constant_kv(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        pk = self.kv_k[layer]
        return pk, (pk if self.kv_v is None else self.kv_v[layer])

    def kv_prompt(self, layer: int, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The key and value prompts of block `layer`: (heads, n_kv, head_dim), or per sample (batch, ...) when
        key-value dropout is active (an independent mask per sample, and for the key and the value use)."""
        pk, pv = self.constant_kv(layer)
        if self.config.kv_dropout and self.training:
            p = self.config.kv_dropout
            pk = F.dropout(pk.unsqueeze(0).expand(batch, -1, -1, -1), p, True)
            pv = F.dropout(pv.unsqueeze(0).expand(batch, -1, -1, -1), p, True)
        return pk, pv

    # -- condensation hooks ---------------------------------------------------------------------------------------
    def unit_rows(self, group: int) -> torch.Tensor:
        return self.masked(self.prompts[group])  # Prompt Condensation bakes the masks into the kept prompts

    def condensed_config(self, counts: list[int]) -> E2VPTConfig:
        cfg = copy.deepcopy(self.config)
        cfg.tokens_per_layer, cfg.token_keep = list(counts), None
        return cfg

    def keep_units(self, masks: list[torch.Tensor]):
        cfg, state = super().keep_units(masks)
        state["token_mask"] = state["token_mask"][:0].clone()
        state["segment_mask"] = state["segment_mask"][:0].clone()
        return cfg, state

    def mask_units(self) -> tuple[nn.Parameter, nn.Parameter]:
        if self.config.token_keep is not None or self.baked:
            raise IncompatibleError("this E²VPT run is already pruned or condensed", "prune the original E²VPT run")
        return self.token_mask, self.segment_mask

    def keep_masked(self, keep: torch.Tensor, segment_keep: torch.Tensor):
        keep = keep.to(torch.bool)
        state = {k: v.detach().clone() for k, v in self.state_dict().items()}
        for l in range(self.info.depth):
            state[f"prompts.{l}"] = state[f"prompts.{l}"][keep].clone()
        state["token_mask"] = state["token_mask"][keep].clone()
        state["segment_mask"] = state["segment_mask"][keep].clone() * segment_keep.float()
        cfg = copy.deepcopy(self.config)
        cfg.token_keep = keep.tolist()
        cfg.train_masks = False  # kept entries stay 1, pruned segments stay 0
        return cfg, state
