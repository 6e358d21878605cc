"""What a created backbone is, as plain data (torch-free): the analytic MAC counts (`cost.py`), the manifest and the
prompt methods read it; `backbone.py` fills it from a timm model."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class BackboneInfo:
    """Facts about a created backbone that prompt methods, data and the manifest use."""

    name: str
    weights: str
    weights_sha256: str | None
    is_vit: bool
    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str
    crop_pct: float
    num_features: int
    num_classes: int
    embed_dim: int = 0
    depth: int = 0
    num_heads: int = 0
    num_prefix_tokens: int = 0
    patch_size: tuple[int, int] = (0, 0)
    mlp_hidden: int = 0
    is_swin: bool = False
    # Swin only: per stage {depth, in_dim, dim, heads, attn_dim, mlp_hidden, resolution (H, W) of its blocks, window
    # (Mh, Mw) of its blocks (timm clamps it to the resolution), downsample}; per block its dim (blocks in order)
    swin_stages: list[dict[str, Any]] = field(default_factory=list)
    block_dims: list[int] = field(default_factory=list)
    data_config: dict[str, Any] = field(default_factory=dict)


def num_patches(info: BackboneInfo) -> int:
    """Patch tokens of a ViT at the configured input size."""
    _, h, w = info.input_size
    return (h // info.patch_size[0]) * (w // info.patch_size[1])
