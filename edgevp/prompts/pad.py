"""The padding prompt of VP (Bahng et al., "Exploring Visual Prompts for Adapting Large-Scale Models", 2022).

The image is resized to L×L; a border of width p around it holds learned pixels, and x' = normalize(x + P) with P
zero inside the border: added in [0, 1] pixel space before normalisation, identical for every image, no clamping.
Parameters: top and bottom strips (3, p, L), left and right strips (3, L − 2p, p) — 2·3·p·(L + L − 2p) in all
(p = 30 at L = 224: 69,840). Works on any backbone; the deploy form folds P like LoR-VP's (into `pos_embed` on a ViT,
otherwise into the normalisation mean). No prompt units: Prompt Condensation and E²VPT pruning do not apply.

Init `vp` (default) follows the VP reference: it draws the strips from N(0, 1) and adds them after normalisation;
here they are added before it, so N(0, std_c²) per channel c is the same distribution. `zeros` starts from the bare
backbone; `normal` draws N(0, init_std²) in pixel space.
"""
from __future__ import annotations

import torch
from torch import nn

from ..backbone import BackboneInfo
from ..errors import ConfigError
from ..registry import register_method
from .base import FoldedPrompts, PromptMethod, square_side
from .configs import PadConfig


@register_method("pad")
class PadPrompt(PromptMethod):
    """Learned pixels in a border of width p, added to the resized image before normalisation."""

    config_cls = PadConfig

    def __init__(self, config: PadConfig, info: BackboneInfo):
        super().__init__(config, info)
        h, p = square_side(info, "the pad prompt"), config.size
        if 2 * p >= h:
            raise ConfigError(f"prompt.size={p} leaves no image: the border must be narrower than half the "
                              f"{h}x{h} input", f"use prompt.size <= {(h - 1) // 2}")
        self.size, self.p = h, p
        self.up = nn.Parameter(torch.zeros(3, p, h))
        self.down = nn.Parameter(torch.zeros(3, p, h))
        self.left = nn.Parameter(torch.zeros(3, h - 2 * p, p))
        self.right = nn.Parameter(torch.zeros(3, h - 2 * p, p))
        if config.init != "zeros":
            std = (torch.tensor(info.std, dtype=torch.float32).view(3, 1, 1) if config.init == "vp"
                   else torch.full((3, 1, 1), config.init_std))
            with torch.no_grad():
                for t in (self.up, self.down, self.left, self.right):
                    t.normal_().mul_(std)

    def prompt(self) -> torch.Tensor:
        """The (3, L, L) additive prompt: the border strips around an exact-zero centre."""
        h, p = self.size, self.p
        centre = self.up.new_zeros(3, h - 2 * p, h - 2 * p)
        middle = torch.cat([self.left, centre, self.right], dim=2)
        return torch.cat([self.up, middle, self.down], dim=1)

    def pixel(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.size, self.size):
            raise ValueError(f"the pad prompt expects {self.size}x{self.size} images, got {tuple(x.shape[-2:])}")
        return x + self.prompt().to(x.dtype).unsqueeze(0)

    @torch.no_grad()
    def fold(self, backbone: nn.Module) -> FoldedPrompts:
        """Input-independent: one pixel-space constant."""
        return FoldedPrompts(pixel=self.prompt().detach().clone())
