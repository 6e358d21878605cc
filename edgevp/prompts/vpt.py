"""VPT (Jia et al., ECCV 2022): learnable prompt tokens inserted after the prefix (class/register) tokens.

Forward, for a timm ViT with P prefix tokens and N patch tokens:
- shallow: block 0 receives [prefix, P_0, patches]; the prompt positions then evolve like any token.
- deep:    block l receives [prefix, P_l, patches]: the previous block's outputs at the prompt positions are
           discarded and *replaced* by the fresh P_l (they never carry into the next block).
In both, the prompt positions are stripped after the last block, before the final norm and pooling. Prompts carry
no position embedding (they are inserted after `_pos_embed`). Layers may hold different numbers of prompts
(`tokens_per_layer`, written by condensation), including none. Prompt dropout draws an independent mask for every
sample of the batch (as the reference implementation, which drops out the batch-expanded prompts).
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..backbone import BackboneInfo
from ..errors import ConfigError
from ..registry import register_method
from ..cost import PromptTokens
from .attention import token_keys_values
from .base import FoldedPrompts, PromptMethod
from .configs import VPTConfig
from .swin import attach_swin, swin_prompt_flow, swin_token_keys_values, transformer_blocks


class TokenPromptBlock(nn.Module):
    """Wraps timm block `layer`: the owner edits the token sequence before and after the block."""

    def __init__(self, block: nn.Module, layer: int, owner: TokenPrompts):
        super().__init__()
        self.block = block
        self.layer = layer
        object.__setattr__(self, "owner", owner)  # a plain reference: the prompts stay registered on the method

    def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        x = self.owner.enter_block(self.layer, x)
        x = self.block(x, **kwargs)
        return self.owner.leave_block(self.layer, x)


class TokenPrompts(PromptMethod):
    """Shared machinery of token-prompt methods: which layers insert, how many tokens each block sees, and the
    stage hooks (cost, fold into keys/values, condensation) that follow from it.

    Subclasses hold `self.prompts` (a ParameterList with one (n_l, D) tensor per group: per block when `deep`,
    one when shallow) and implement `layer_counts`, `layer_prompt` and `condensed_config`.
    """

    deep = True
    dropout = 0.0  # prompt dropout on the inserted tokens, an independent mask per sample
    pool_prompts = False  # Swin: the final norm and pool also see the last block's prompt rows (prompt.swin_pool)
    gates: list[torch.Tensor] | None = None  # per-group (n_g,) multipliers on the inserted tokens (scoring)

    def layer_counts(self) -> list[int]:
        """Number of prompt tokens each block sees in its input sequence."""
        raise NotImplementedError

    def layer_prompt(self, layer: int) -> torch.Tensor | None:
        """The (n, D) tokens block `layer` inserts (before dropout), or None if it inserts nothing."""
        raise NotImplementedError

    def condensed_config(self, counts: list[int]):
        """This method's config with `counts[g]` prompts in group g."""
        raise NotImplementedError

    def constant_kv(self, layer: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Key/value prompts of block `layer` that are constants already (E²VPT); None for plain token prompts."""
        return None

    def attach(self, backbone: nn.Module) -> None:
        if self.attached:
            raise RuntimeError("prompts are already attached")
        if self.info.is_swin:  # prompts in every window, carried as (x, rows) between stages (edgevp.prompts.swin)
            attach_swin(self, backbone)
            return
        for i, block in enumerate(backbone.blocks):
            self._swap(backbone.blocks, str(i), TokenPromptBlock(block, i, self))

    def enter_block(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        tokens = self.layer_prompt(layer)
        npre = self.info.num_prefix_tokens
        n_prev = self.layer_counts()[layer - 1] if layer > 0 and self.deep else 0
        if tokens is None:  # inserts nothing, but deep prompts of the previous block are still dropped
            return torch.cat([x[:, :npre], x[:, npre + n_prev:]], dim=1) if n_prev else x
        if self.gates is not None:
            tokens = tokens * self.gates[layer][:, None]
        tokens = tokens.to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)
        if self.dropout and self.training:
            tokens = F.dropout(tokens, self.dropout, True)  # on the expanded batch: one mask per sample
        return torch.cat([x[:, :npre], tokens, x[:, npre + n_prev:]], dim=1)

    def swin_rows(self, layer: int, x: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor | None:
        """Swin: the prompt rows (B, n, C) block `layer` works with, given the rows the previous block or merge passed
        on: deep blocks insert their own (replacing those), shallow ones insert at block 0 and then carry them."""
        if not self.deep and layer > 0:
            return rows
        tokens = self.layer_prompt(layer)
        if tokens is None or not tokens.shape[0]:
            return None
        if self.gates is not None:
            tokens = tokens * self.gates[layer][:, None]
        tokens = tokens.to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)
        if self.dropout and self.training:
            tokens = F.dropout(tokens, self.dropout, True)  # on the expanded batch: one mask per sample
        return tokens

    def leave_block(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        if layer != self.info.depth - 1:
            return x
        npre, n = self.info.num_prefix_tokens, self.layer_counts()[layer]
        return torch.cat([x[:, :npre], x[:, npre + n:]], dim=1) if n else x

    # -- cost --------------------------------------------------------------------------------------------------
    def extra_tokens(self, units: list[int] | None = None) -> list[tuple[int, int]]:
        counts = self.prompt_units() if units is None else list(units)
        per_block = counts if self.deep else counts[:1] * self.info.depth
        extra = [(n, n + self._kv_count(i)) for i, n in enumerate(per_block)]
        if self.info.is_swin:  # Swin: which prompt rows go on after each block and through each patch merging
            kept, merged = swin_prompt_flow(self.info, self.deep, counts, self.pool_prompts)
            return PromptTokens(extra, kept=kept, merged=merged)
        return extra

    def _kv_count(self, layer: int) -> int:
        kv = self.constant_kv(layer)
        return 0 if kv is None else kv[0].shape[1]

    # -- deployment ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def fold(self, backbone: nn.Module) -> FoldedPrompts:
        """Deep: block l's tokens are replaced at block l + 1 (stripped after the last), so only their keys and
        values matter; they become constants in front of the image tokens' (plus any constant key/value prompts).
        Shallow: the tokens evolve with the image after block 0, so only the inserted tokens are constants."""
        if self.gates is not None:
            raise ConfigError("prompt gates are set (a scoring pass is in progress); cannot fold")
        if self.pool_prompts:
            raise ConfigError("this Swin run pools its prompt tokens (prompt.swin_pool=reference), so its last prompts "
                              "depend on the image and have no deploy form",
                              "retrain with the default prompt.swin_pool=image to export or pack it")
        if not self.deep:
            if self.info.is_swin:
                raise ConfigError("VPT-shallow on a Swin backbone has no deploy form (its prompts evolve with the image "
                                  "and are merged between stages)", "use prompt.deep=true to export a Swin run")
            tokens = self.layer_prompt(0)
            return FoldedPrompts(tokens=tokens.detach().clone() if tokens is not None and len(tokens) else None)
        kv: list[tuple[torch.Tensor, torch.Tensor] | None] = []
        keys_values = swin_token_keys_values if self.info.is_swin else token_keys_values
        for i, block in enumerate(transformer_blocks(backbone)):
            keys, values = [], []
            const = self.constant_kv(i)
            if const is not None:
                keys.append(const[0])
                values.append(const[1])
            p = self.layer_prompt(i)
            if p is not None and p.shape[0]:
                k, v = keys_values(block, p)
                keys.append(k)
                values.append(v)
            cols = sum(k.shape[1] for k in keys)
            kv.append((torch.cat(keys, 1).detach().clone(), torch.cat(values, 1).detach().clone()) if cols else None)
        return FoldedPrompts(kv=kv if any(e is not None for e in kv) else None)

    # -- Prompt Condensation -------------------------------------------------------------------------------------
    def prompt_units(self) -> list[int]:
        return list(self.layer_counts()) if self.deep else self.layer_counts()[:1]

    def set_unit_gates(self, gates: list[torch.Tensor] | None) -> None:
        if gates is not None and [len(g) for g in gates] != self.prompt_units():
            raise ValueError(f"gates of sizes {[len(g) for g in gates]} do not match units {self.prompt_units()}")
        self.gates = gates

    def unit_rows(self, group: int) -> torch.Tensor:
        """The stored (n, ·) rows of group `group` that condensation slices."""
        return self.prompts[group]

    def keep_units(self, masks: list[torch.Tensor]):
        if [len(m) for m in masks] != self.prompt_units():
            raise ValueError(f"keep masks of sizes {[len(m) for m in masks]} do not match units {self.prompt_units()}")
        state = {k: v.detach().clone() for k, v in self.state_dict().items()}
        for g, keep in enumerate(masks):
            state[f"prompts.{g}"] = self.unit_rows(g).detach()[keep.to(torch.bool)].clone()
        return self.condensed_config([int(m.sum()) for m in masks]), state


def vpt_init_bound(info: BackboneInfo, dim: int | None = None) -> float:
    """VPT's Xavier-uniform bound, treating a prompt like a patch-embedding row: sqrt(6 / (3·ph·pw + dim)), with
    `dim` the prompt's own dim (the embedding dim, or the projection dim when prompts are projected)."""
    ph, pw = info.patch_size
    return math.sqrt(6.0 / (3 * ph * pw + (dim or info.embed_dim)))


def block_init_bounds(info: BackboneInfo, dims: list[int], swin_init_bound: str = "stage") -> list[float]:
    """The init bound of each block's prompts of dim `dims[l]`: `vpt_init_bound` of that dim, or on Swin with
    `swin_init_bound="reference"` the bound of the first block's dim (stage 0) for every block, as the references."""
    if swin_init_bound == "reference" and dims:
        return [vpt_init_bound(info, dims[0])] * len(dims)
    return [vpt_init_bound(info, d) for d in dims]


def check_swin_switches(config, info: BackboneInfo) -> bool:
    """Refuse the Swin-only switches (`swin_pool`, `swin_init_bound`) away from their defaults on another backbone,
    where they mean nothing; returns whether the final pool sees the prompts (`swin_pool: reference`)."""
    changed = [f"prompt.{k}={getattr(config, k)}" for k, default in (("swin_pool", "image"),
                                                                     ("swin_init_bound", "stage"))
               if getattr(config, k) != default]
    if changed and not info.is_swin:
        raise ConfigError(f"{' and '.join(changed)} applies to Swin backbones only", "remove it for this backbone")
    return config.swin_pool == "reference"


@register_method("vpt")
class VPT(TokenPrompts):
    """VPT-shallow / VPT-deep with the reference init bound, prompt dropout and optional projection."""

    config_cls = VPTConfig

    def __init__(self, config: VPTConfig, info: BackboneInfo):
        super().__init__(config, info)
        self.deep = config.deep
        self.dropout = config.dropout
        self.pool_prompts = check_swin_switches(config, info)
        counts = config.tokens_per_layer
        if counts is None:
            counts = [config.num_tokens] * (info.depth if config.deep else 1)
        elif not config.deep or len(counts) != info.depth or min(counts) < 0:
            raise ConfigError(f"prompt.tokens_per_layer needs deep=true and {info.depth} non-negative counts")
        self.counts = list(counts)
        if info.is_swin and config.project > 0:
            raise ConfigError("prompt.project is not supported on a Swin backbone (its stages have different dims)",
                              "set prompt.project=-1")
        dims = [config.project if config.project > 0 else d for d in info.block_dims or [info.embed_dim] * info.depth]
        bounds = block_init_bounds(info, dims, config.swin_init_bound)
        # one tensor per block (deep) in the block's dim; shallow: one tensor in the first block's dim
        self.prompts = nn.ParameterList([nn.Parameter(torch.empty(n, dims[i]).uniform_(-bounds[i], bounds[i]))
                                         for i, n in enumerate(self.counts)])
        self.proj = None
        if config.project > 0:  # the reference: kaiming-normal (fan_out) weight, the Linear's default bias init
            self.proj = nn.Linear(config.project, info.embed_dim)
            nn.init.kaiming_normal_(self.proj.weight, a=0, mode="fan_out")

    def layer_counts(self) -> list[int]:
        return self.counts if self.deep else self.counts * self.info.depth

    def layer_prompt(self, layer: int) -> torch.Tensor | None:
        if not self.deep and layer > 0:
            return None
        p = self.prompts[layer]
        return self.proj(p) if self.proj is not None else p

    def condensed_config(self, counts: list[int]) -> VPTConfig:
        cfg = copy.deepcopy(self.config)
        if self.deep:
            cfg.tokens_per_layer, cfg.num_tokens = list(counts), max(counts)
        else:
            cfg.num_tokens = counts[0]
        return cfg
