"""Linear probe: frozen backbone, new linear head. The baseline every comparison needs."""
from __future__ import annotations

from dataclasses import dataclass

from ..config import PromptConfig
from ..registry import register_method
from .base import PromptMethod


@dataclass
class LinearConfig(PromptConfig):
    """The linear probe has no prompt options."""


@register_method("linear")
class LinearProbe(PromptMethod):
    """Trains only a new classifier on the frozen backbone's pooled features."""

    config_cls = LinearConfig
