"""LoR-VP (Jin et al., ICLR 2025): a low-rank additive image prompt, one B·A pair per RGB channel.

The image is resized to L×L, then x' = normalize(x + B·A) with B ∈ R^{3×L×r}, A ∈ R^{3×r×L}: the prompt is added in
[0, 1] pixel space before normalisation, identical for every image, no clamping. Init B = 0, A ~ N(0, 0.01²), so the
prompt starts at zero. Works on any backbone. Output mappings:
- lp:  a new linear head (default);
- flm: frequency label mapping onto the pretrained classifier, computed once before training;
- ilm: iterative label mapping, recomputed every `mapping_every` epochs with the current prompt.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..backbone import BackboneInfo
from .configs import LoRVPConfig
from ..errors import ConfigError
from ..registry import register_method
from .base import FoldedPrompts, PromptedModel, PromptMethod, square_side


def greedy_label_mapping(counts: torch.Tensor) -> torch.Tensor:
    """One-to-one source→target assignment from a (source, target) count matrix, largest entries first.

    Returns `mapping` of shape (targets,) with the source class read for each target class.
    """
    counts = counts.clone().double()
    n_src, n_tgt = counts.shape
    if n_src < n_tgt:
        raise ValueError("label mapping needs at least as many source classes as target classes")
    mapping = torch.full((n_tgt,), -1, dtype=torch.long)
    for _ in range(n_tgt):
        idx = int(torch.argmax(counts))
        s, t = divmod(idx, n_tgt)
        mapping[t] = s
        counts[s, :] = -1
        counts[:, t] = -1
    return mapping


@register_method("lorvp")
class LoRVP(PromptMethod):
    """Low-rank visual prompt added to the resized image before normalisation."""

    config_cls = LoRVPConfig

    def __init__(self, config: LoRVPConfig, info: BackboneInfo):
        super().__init__(config, info)
        self.size = h = square_side(info, "LoR-VP")
        self.B = nn.Parameter(torch.zeros(3, h, config.rank))
        self.A = nn.Parameter(torch.randn(3, config.rank, h) * config.init_std)
        self.register_buffer("label_map", torch.empty(0, dtype=torch.long))

    @classmethod
    def wants_new_head(cls, config: LoRVPConfig) -> bool:
        return config.mapping == "lp"

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        if prefix + "label_map" in state_dict:  # the mapping's size is known only once computed
            self.label_map = torch.empty_like(state_dict[prefix + "label_map"])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def prompt(self) -> torch.Tensor:
        """The (3, L, L) additive prompt B·A."""
        return torch.bmm(self.B, self.A)

    def pixel(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.size, self.size):
            raise ValueError(f"LoR-VP expects {self.size}x{self.size} images, got {tuple(x.shape[-2:])}")
        return x + self.prompt().to(x.dtype).unsqueeze(0)

    @torch.no_grad()
    def fold(self, backbone: nn.Module) -> FoldedPrompts:
        """The prompt is input-independent: a pixel-space constant; a label mapping is a constant gather."""
        label_map = None
        if self.config.mapping != "lp":
            if self.label_map.numel() == 0:
                raise ConfigError("the label mapping was never computed; cannot export this run")
            label_map = self.label_map.clone()
        return FoldedPrompts(pixel=self.prompt().detach().clone(), label_map=label_map)

    def map_logits(self, logits: torch.Tensor) -> torch.Tensor:
        if self.config.mapping == "lp":
            return logits
        if self.label_map.numel() == 0:
            raise RuntimeError("label mapping not computed yet (before_epoch runs it)")
        return logits[:, self.label_map]

    def before_epoch(self, model: PromptedModel, loader: Any, epoch: int) -> None:
        cfg = self.config
        if cfg.mapping == "lp" or (cfg.mapping == "flm" and self.label_map.numel()):
            return
        if cfg.mapping == "ilm" and self.label_map.numel() and epoch % cfg.mapping_every:
            return
        self.label_map = self.compute_mapping(model, loader).to(self.label_map.device)

    @torch.no_grad()
    def compute_mapping(self, model: PromptedModel, loader: Any) -> torch.Tensor:
        """Count (argmax source prediction, true target) over the loader, then assign greedily one-to-one."""
        num_targets = len(loader.dataset.classes)
        n_src = self.info.num_classes
        if n_src < num_targets:
            raise ConfigError(f"mapping={self.config.mapping} needs a pretrained classifier with at least "
                              f"{num_targets} classes; '{self.info.name}' has {n_src}", "use prompt.mapping=lp")
        was_training = model.training
        model.eval()
        counts = torch.zeros(n_src, num_targets)
        device = next(model.parameters()).device
        for x, y in loader:
            x = x.to(device)
            src = model.backbone((self.pixel(x) - model.mean) / model.std).argmax(1).cpu()
            counts.index_put_((src, y), torch.ones(len(y)), accumulate=True)
        model.train(was_training)
        return greedy_label_mapping(counts)
