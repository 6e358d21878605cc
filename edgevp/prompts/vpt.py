"""VPT (Jia et al., ECCV 2022): learnable prompt tokens inserted after the prefix (class/register) tokens.

Forward, for a timm ViT with P prefix tokens and N patch tokens:
- shallow: block 0 receives [prefix, P_0, patches]; the prompt positions then evolve like any token.
- deep:    block l receives [prefix, P_l, patches]: the previous block's outputs at the prompt positions are
           discarded and *replaced* by the fresh P_l (they never carry into the next block).
In both, the prompt positions are stripped after the last block, before the final norm and pooling. Prompts carry
no position embedding (they are inserted after `_pos_embed`). Layers may hold different numbers of prompts
(`tokens_per_layer`, written by condensation), including none.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..backbone import BackboneInfo
from ..config import PromptConfig
from ..errors import ConfigError
from ..registry import register_method
from .base import PromptMethod


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
    """Shared machinery of token-prompt methods: which layers insert, how many tokens each block sees."""

    needs_vit = True
    deep = True
    gates: list[torch.Tensor] | None = None  # per-layer (n_l,) multipliers on the inserted tokens (scoring)

    def layer_counts(self) -> list[int]:
        """Number of prompt tokens each block sees in its input sequence."""
        raise NotImplementedError

    def layer_prompt(self, layer: int) -> torch.Tensor | None:
        """The (n, D) tokens block `layer` inserts, or None if it inserts nothing."""
        raise NotImplementedError

    def attach(self, backbone: nn.Module) -> None:
        if self.attached:
            raise RuntimeError("prompts are already attached")
        for i, block in enumerate(backbone.blocks):
            self._swap(backbone.blocks, str(i), TokenPromptBlock(block, i, self))

    def enter_block(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        tokens = self.layer_prompt(layer)
        if tokens is None:
            return x
        if self.gates is not None:
            tokens = tokens * self.gates[layer][:, None]
        npre = self.info.num_prefix_tokens
        n_prev = self.layer_counts()[layer - 1] if layer > 0 and self.deep else 0
        tokens = tokens.to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)
        return torch.cat([x[:, :npre], tokens, x[:, npre + n_prev:]], dim=1)

    def leave_block(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        if layer != self.info.depth - 1:
            return x
        npre, n = self.info.num_prefix_tokens, self.layer_counts()[layer]
        return torch.cat([x[:, :npre], x[:, npre + n:]], dim=1) if n else x

    def extra_tokens(self) -> list[tuple[int, int]]:
        return [(n, n) for n in self.layer_counts()]


def vpt_init_bound(info: BackboneInfo) -> float:
    """VPT's Xavier-uniform bound, treating a prompt like a patch-embedding row: sqrt(6 / (3·ph·pw + D))."""
    ph, pw = info.patch_size
    return math.sqrt(6.0 / (3 * ph * pw + info.embed_dim))


@dataclass
class VPTConfig(PromptConfig):
    """VPT prompt tokens."""

    num_tokens: int = field(default=10, metadata={"help": "prompt tokens per layer (deep) or in total (shallow)"})
    deep: bool = field(default=True, metadata={"help": "new prompts at every block (deep) or only at the input"})
    dropout: float = field(default=0.0, metadata={"help": "dropout on prompt tokens each time they are inserted"})
    project: int = field(default=-1, metadata={"help": "if > 0, prompts live in this dim and a Linear maps them up"})
    tokens_per_layer: list[int] | None = field(
        default=None, metadata={"help": "per-layer prompt counts (deep; written by condensation)"})

    def __post_init__(self):
        if self.num_tokens < 0 or not 0.0 <= self.dropout < 1.0:
            raise ValueError("num_tokens must be >= 0 and dropout in [0, 1)")


@register_method("vpt")
class VPT(TokenPrompts):
    """VPT-shallow / VPT-deep with the reference init bound, prompt dropout and optional projection."""

    config_cls = VPTConfig
    can_condense = True

    def __init__(self, config: VPTConfig, info: BackboneInfo):
        super().__init__(config, info)
        self.deep = config.deep
        counts = config.tokens_per_layer
        if counts is None:
            counts = [config.num_tokens] * (info.depth if config.deep else 1)
        elif not config.deep or len(counts) != info.depth or min(counts) < 0:
            raise ConfigError(f"prompt.tokens_per_layer needs deep=true and {info.depth} non-negative counts")
        self.counts = list(counts)
        dim = config.project if config.project > 0 else info.embed_dim
        bound = vpt_init_bound(info)
        self.prompts = nn.ParameterList(
            [nn.Parameter(torch.empty(n, dim).uniform_(-bound, bound)) for n in self.counts])
        self.proj = None
        if config.project > 0:
            self.proj = nn.Linear(config.project, info.embed_dim)
            nn.init.kaiming_normal_(self.proj.weight, a=0, mode="fan_out")
            nn.init.zeros_(self.proj.bias)

    def layer_counts(self) -> list[int]:
        return self.counts if self.deep else self.counts * self.info.depth

    def layer_prompt(self, layer: int) -> torch.Tensor | None:
        if not self.deep and layer > 0:
            return None
        p = self.prompts[layer]
        if self.proj is not None:
            p = self.proj(p)
        return F.dropout(p, self.config.dropout, self.training) if self.config.dropout else p
