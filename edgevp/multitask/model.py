"""The multi-task graph: one frozen backbone, each sample's task tables gathered by its task id.

Inputs: `images` (B, 3, H, W) and `task` (B,) int64; output `logits` (B, C_max). A task with fewer classes has
`PAD_LOGIT` in its unused columns. A task id outside [0, T) gives NaN logits for that sample (the other samples of
the batch are unaffected), so a wrong id can never pass for a prediction. With `tables_as_inputs` the tables are
graph inputs (fed from `tables.npz`), so tasks are added or replaced without rebuilding the graph or the engine.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from ..prompts.attention import attention_with_kv_prefix, missing_attention_part
from .tables import PackTables

BLOCK_PARTS = ("norm1", "attn", "ls1", "drop_path1", "norm2", "mlp", "ls2", "drop_path2")


def _check_vit(backbone: nn.Module, kv_blocks: list[int]) -> None:
    for name in ("patch_embed", "_pos_embed", "patch_drop", "norm_pre", "blocks", "norm", "forward_head"):
        if not hasattr(backbone, name):
            raise ConfigError(f"per-task key/values need a timm VisionTransformer; the backbone has no '{name}'")
    for b in kv_blocks:
        block = backbone.blocks[b]
        missing = next((p for p in BLOCK_PARTS if not hasattr(block, p)), "") or missing_attention_part(block.attn)
        if missing:
            raise ConfigError(f"block {b} ({type(block).__name__}) has no '{missing}'; per-task key/values need "
                              "timm's Block and Attention")


class PackedModel(nn.Module):
    """Backbone + stacked task tables (buffers, or the trailing forward arguments with `tables_as_inputs`)."""

    def __init__(self, backbone: nn.Module, mean: torch.Tensor, std: torch.Tensor, include_preprocess: bool,
                 tables: PackTables, tables_as_inputs: bool = False):
        super().__init__()
        self.backbone = backbone.eval()
        self.include_preprocess = include_preprocess
        self.register_buffer("mean", mean.detach().clone())
        self.register_buffer("std", std.detach().clone())
        self.table_names = list(tables.flat())
        self.kv_blocks = sorted(tables.kv)
        self.pos_delta = tables.pos_delta is not None
        self.input_bias = tables.input_bias is not None
        self.tables_as_inputs = tables_as_inputs
        # a block whose tasks all have the same number of columns needs no padding mask (constant tables only)
        self.masked_blocks = {b for b, (_, _, m, _) in tables.kv.items()
                              if tables_as_inputs or bool(torch.isinf(m).any())}
        self.is_vit = hasattr(backbone, "blocks") and hasattr(backbone, "_pos_embed")
        if self.kv_blocks or self.pos_delta:
            _check_vit(backbone, self.kv_blocks)
        if not tables_as_inputs:
            for name, t in tables.flat().items():
                self.register_buffer(f"table_{name}", t.detach().clone().contiguous())
        self.eval()

    def _tables(self, given: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
        if self.tables_as_inputs:
            if len(given) != len(self.table_names):
                raise ValueError(f"expected {len(self.table_names)} tables ({', '.join(self.table_names)}), "
                                 f"got {len(given)}")
            return dict(zip(self.table_names, given))
        return {n: getattr(self, f"table_{n}") for n in self.table_names}

    def forward(self, images: torch.Tensor, task: torch.Tensor, *tables: torch.Tensor) -> torch.Tensor:
        tb = self._tables(tables)
        num_tasks = tb["head_weight"].shape[0]
        t = task.clamp(0, num_tasks - 1)
        x = (images - self.mean) / self.std if self.include_preprocess else images
        if self.input_bias:
            x = x + tb["input_bias"][t]
        feats = self._features(x, t, tb)
        logits = torch.einsum("bd,bcd->bc", feats, tb["head_weight"][t]) + tb["head_bias"][t]
        invalid = (task != t).unsqueeze(1)
        return torch.where(invalid, logits * float("nan"), logits)  # no constant-of-shape node: fp16-convertible

    def _features(self, x: torch.Tensor, t: torch.Tensor, tb: dict[str, torch.Tensor]) -> torch.Tensor:
        bb = self.backbone
        if not self.is_vit or not (self.kv_blocks or self.pos_delta):
            return bb.forward_head(bb.forward_features(x), pre_logits=True)
        x = bb._pos_embed(bb.patch_embed(x))
        if self.pos_delta:
            delta = tb["pos_delta"][t]  # (B, N, D): the patch rows, the prefix rows unchanged
            x = torch.cat([x[:, :x.shape[1] - delta.shape[1]], x[:, x.shape[1] - delta.shape[1]:] + delta], dim=1)
        x = bb.norm_pre(bb.patch_drop(x))
        for i, block in enumerate(bb.blocks):
            x = self._kv_block(block, x, i, t, tb) if i in self.kv_blocks else block(x)
        return bb.forward_head(bb.norm(x), pre_logits=True)

    def _kv_block(self, block: nn.Module, x: torch.Tensor, i: int, t: torch.Tensor,
                  tb: dict[str, torch.Tensor]) -> torch.Tensor:
        """timm Block with each sample's constant keys/values (padded columns masked out) in front of its own."""
        row = tb[f"kv_row_{i}"][t]  # each sample's row of this block's key/value table
        pk, pv = tb[f"kv_key_{i}"][row], tb[f"kv_value_{i}"][row]  # (B, heads, n_max, head_dim)
        mask = None
        if i in self.masked_blocks:
            cols = tb[f"kv_mask_{i}"][row]  # (B, n_max): 0 or -inf
            image_cols = x[:, :, 0] * 0.0  # (B, N) zeros, derived from x so the graph has no constant-of-shape node
            mask = torch.cat([cols.to(x.dtype), image_cols], dim=1)[:, None, None, :]
        y = attention_with_kv_prefix(block.attn, block.norm1(x), pk, pv, mask=mask)
        x = x + block.drop_path1(block.ls1(y))
        return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))
