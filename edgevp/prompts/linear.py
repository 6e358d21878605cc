"""Linear probe: frozen backbone, new linear head. The baseline every comparison needs."""
from __future__ import annotations

from torch import nn

from ..registry import register_method
from .base import FoldedPrompts, PromptMethod
from .configs import LinearConfig


@register_method("linear")
class LinearProbe(PromptMethod):
    """Trains only a new classifier on the frozen backbone's pooled features."""

    config_cls = LinearConfig

    def fold(self, backbone: nn.Module) -> FoldedPrompts:
        return FoldedPrompts()  # the deploy form is the backbone with its new head
