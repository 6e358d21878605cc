"""The common prompt-method interface and the PromptedModel wrapper that every stage passes around.

A PromptedModel takes images in [0, 1] at the backbone's input size and computes
    logits = map_logits(backbone(normalize(pixel_prompt(x))))
where the backbone's blocks/attention may be wrapped by the method while it is attached. The backbone's weights
are frozen; what trains is decided structurally: the method's parameters that require grad, plus the new head.

`PromptMethod` is the one extension point every stage calls; no stage tests for a concrete method:
- training: `attach`/`detach`, `pixel`, `map_logits`, `before_epoch`, `wants_new_head`;
- cost: `extra_tokens` (tokens each block gains on the query and the key/value side);
- export: `fold` returns the prompts as constants (`FoldedPrompts`), which `edgevp.export.fold` turns into the
  deploy form and a multi-task pack stacks into tables;
- Prompt Condensation: `prompt_units`, `set_unit_gates`, `keep_units`;
- E²VPT-style pruning: `mask_units`, `keep_masked`.
A method implements what it supports; the defaults say "not supported" in one clear line.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Iterator

import torch
from torch import nn

from ..backbone import BackboneInfo, count_params
from ..config import PromptConfig
from ..errors import ConfigError, IncompatibleError


@dataclass
class FoldedPrompts:
    """A trained method's prompts as input-independent constants (what `PromptMethod.fold` returns).

    pixel:     (3, H, W) added to the images in [0, 1] before normalisation (LoR-VP, pad prompts);
    kv:        per block, constant keys and values (heads, n, head_dim) put in front of the image tokens' keys and
               values inside attention, or None for a block without; the list is None when no block has any;
    tokens:    (n, D) constant tokens inserted after the prefix tokens before the first block, carried through every
               block and stripped after the last (VPT-shallow: their states depend on the image after block 0);
    label_map: (C,) int64, task logits = backbone logits[:, label_map] (label mapping onto a pretrained head).
    The task head, when the method trains one, is the backbone's own classifier and is not repeated here.
    """

    pixel: torch.Tensor | None = None
    kv: list[tuple[torch.Tensor, torch.Tensor] | None] | None = None
    tokens: torch.Tensor | None = None
    label_map: torch.Tensor | None = None


def square_side(info: BackboneInfo, method: str) -> int:
    """The side of the backbone's square input; a pixel prompt of `method` is refused on another shape (exit 2)."""
    _, h, w = info.input_size
    if h != w:
        raise ConfigError(f"{method} needs a square input, the backbone takes {h}x{w}")
    return h


class PromptMethod(nn.Module):
    """Owns the prompt tensors of one method and knows how to attach them to a backbone.

    Subclasses set `config_cls` and are registered with `@register_method(name)`.
    """

    name: ClassVar[str] = ""
    config_cls: ClassVar[type[PromptConfig]] = PromptConfig

    def __init__(self, config: PromptConfig, info: BackboneInfo):
        super().__init__()
        kinds = getattr(self.config_cls, "backbones", ("vit",))  # the token backbones a needs_vit method runs on
        if self.config_cls.needs_vit and not ((info.is_vit and "vit" in kinds) or (info.is_swin and "swin" in kinds)):
            raise ConfigError(f"method '{self.name}' needs a timm "
                              f"{' or '.join({'vit': 'VisionTransformer', 'swin': 'SwinTransformer'}[k] for k in kinds)}"
                              f" backbone, got '{info.name}'", "use method=lorvp or method=linear for other backbones")
        self.config = config
        self.info = info
        self._restore: list[tuple[nn.Module, str, nn.Module]] = []

    # -- attaching ---------------------------------------------------------------------------------------------
    def attach(self, backbone: nn.Module) -> None:
        """Wrap backbone modules in place. The default attaches nothing (pixel prompts, linear probe)."""

    def _swap(self, parent: nn.Module, attr: str, new: nn.Module) -> None:
        """Replace `parent.attr` (or `parent[int(attr)]`) by `new`, remembering the original for detach."""
        old = parent[int(attr)] if attr.isdigit() else getattr(parent, attr)
        self._restore.append((parent, attr, old))
        if attr.isdigit():
            parent[int(attr)] = new
        else:
            setattr(parent, attr, new)

    def detach(self, backbone: nn.Module) -> None:
        """Put back every original module exactly as it was."""
        for parent, attr, old in reversed(self._restore):
            if attr.isdigit():
                parent[int(attr)] = old
            else:
                setattr(parent, attr, old)
        self._restore.clear()

    @property
    def attached(self) -> bool:
        return bool(self._restore)

    # -- forward hooks ------------------------------------------------------------------------------------------
    def pixel(self, x: torch.Tensor) -> torch.Tensor:
        """Transform images in [0, 1] pixel space before normalisation (LoR-VP)."""
        return x

    def map_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Map backbone logits to task logits (label mappings)."""
        return logits

    @classmethod
    def wants_new_head(cls, config: PromptConfig) -> bool:
        """Whether the backbone's classifier is replaced by a new trainable head for the task."""
        return True

    @property
    def new_head(self) -> bool:
        return self.wants_new_head(self.config)

    def before_epoch(self, model: PromptedModel, loader: Any, epoch: int) -> None:
        """Called by the training loop before each epoch (label mappings are computed here)."""

    # -- cost -------------------------------------------------------------------------------------------------
    def extra_tokens(self, units: list[int] | None = None) -> list[tuple[int, int]]:
        """Per block: (tokens added to the query side, tokens added to the key/value side), as trained, or with
        `units[g]` prompt units in group g of `prompt_units()` (what a condensation would keep)."""
        return [(0, 0)] * self.info.depth

    def prompt_param_count(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    # -- deployment -------------------------------------------------------------------------------------------
    def fold(self, backbone: nn.Module) -> FoldedPrompts:
        """The prompts as constants for `backbone`, the plain backbone of a copy of the model with this method
        detached (for methods that read its blocks, e.g. to turn tokens into keys and values)."""
        raise ConfigError(f"method '{self.name}' has no deploy form",
                          "its PromptMethod must define fold() to be exported")

    # -- Prompt Condensation: score prompt units, keep the best -----------------------------------------------
    def prompt_units(self) -> list[int]:
        """Per group (e.g. a block's prompt set), how many prompt units Prompt Condensation can score and remove;
        [] when the method has none."""
        return []

    def set_unit_gates(self, gates: list[torch.Tensor] | None) -> None:
        """Multiply unit i of group g by `gates[g][i]` in the forward pass (gate scores are the gates' gradients);
        None removes the gates."""
        raise ConfigError(f"method '{self.name}' has no prompt units to score")

    def keep_units(self, masks: list[torch.Tensor]) -> tuple[PromptConfig, dict[str, torch.Tensor]]:
        """This method's config and state (`state_dict` keys) with only the units where `masks[g]` is True."""
        raise ConfigError(f"method '{self.name}' has no prompt units to remove")

    # -- E²VPT-style pruning: token and segment masks --------------------------------------------------------
    def mask_units(self) -> tuple[nn.Parameter, nn.Parameter] | None:
        """(token mask (n,), segment mask (n, R)) whose gradients rank tokens and segments, or None when the
        method has none. Raises IncompatibleError when the masks were already pruned or baked in."""
        return None

    def keep_masked(self, keep: torch.Tensor, segment_keep: torch.Tensor
                    ) -> tuple[PromptConfig, dict[str, torch.Tensor]]:
        """Config and state with only the tokens where `keep` (n,) is True and the segments where `segment_keep`
        (kept tokens, R) is True."""
        raise IncompatibleError(f"method '{self.name}' has no token/segment masks to prune")


class PromptedModel(nn.Module):
    """Backbone + attached prompt method + preprocessing normalisation; input is images in [0, 1]."""

    def __init__(self, backbone: nn.Module, method: PromptMethod, info: BackboneInfo):
        super().__init__()
        self.backbone = backbone
        self.method = method
        self.info = info
        self.register_buffer("mean", torch.tensor(info.mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(info.std).view(1, -1, 1, 1), persistent=False)
        for p in backbone.parameters():
            p.requires_grad_(False)
        if method.new_head:
            for p in self.head.parameters():
                p.requires_grad_(True)
        method.attach(backbone)

    @property
    def head(self) -> nn.Module:
        return self.backbone.get_classifier()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.method.pixel(x)
        x = (x - self.mean) / self.std
        return self.method.map_logits(self.backbone(x))

    def train(self, mode: bool = True) -> PromptedModel:
        """Only the method (prompt dropout) follows `mode`; the frozen backbone always stays in eval mode."""
        self.training = mode
        self.method.train(mode)
        self.backbone.eval()
        return self

    def detach_method(self) -> nn.Module:
        """Remove the prompts and return the plain backbone (with the task head, if any)."""
        self.method.detach(self.backbone)
        return self.backbone

    # -- trainable set and checkpoints --------------------------------------------------------------------------
    def trainable_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        for n, p in self.method.named_parameters():
            if p.requires_grad:
                yield f"method.{n}", p
        if self.method.new_head:
            for n, p in self.head.named_parameters():
                yield f"head.{n}", p

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Everything a checkpoint needs: the method's tensors (parameters and buffers) and the task head."""
        state = {f"method.{k}": v.detach().clone() for k, v in self.method.state_dict().items()}
        if self.method.new_head:
            state.update({f"head.{k}": v.detach().clone() for k, v in self.head.state_dict().items()})
        return state

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        own = self.trainable_state()
        missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        bad = [k for k in own if k in state and own[k].numel() and own[k].shape != state[k].shape]
        if missing or extra or bad:
            raise IncompatibleError(
                "checkpoint does not fit this model"
                + (f": missing {missing[:3]}" if missing else "") + (f": unexpected {extra[:3]}" if extra else "")
                + (f": shape mismatch {bad[:3]}" if bad else ""))
        self.method.load_state_dict({k[7:]: v for k, v in state.items() if k.startswith("method.")})
        if self.method.new_head:
            self.head.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("head.")})

    def param_summary(self) -> dict[str, int]:
        trainable = sum(p.numel() for _, p in self.trainable_parameters())
        total = count_params(self.backbone) + sum(p.numel() for p in self.method.parameters())
        return {"trainable": trainable, "total": total, "prompt": self.method.prompt_param_count(),
                "head": count_params(self.head) if self.method.new_head else 0}

    def param_line(self) -> str:
        s = self.param_summary()
        return (f"trainable params: {s['trainable']:,} || all params: {s['total']:,} || "
                f"trainable%: {100 * s['trainable'] / max(s['total'], 1):.4f}")
