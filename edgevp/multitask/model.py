"""The multi-task graph: one frozen backbone, each sample's task tables gathered by its task id.

Inputs: `images` (B, 3, H, W) and `task` (B,) int64; output `logits` (B, C_max). A task with fewer classes has
`PAD_LOGIT` in its unused columns. A task id outside [0, T) gives NaN logits for that sample (the other samples of
the batch are unaffected), so a wrong id can never pass for a prediction. With `tables_as_inputs` the tables are
graph inputs (fed from `tables.npz`), so tasks are added or replaced without rebuilding the graph or the engine.

VPT-shallow tokens (`prompt_tokens`, padded to the widest shallow task) are inserted after the prefix before block 0
and stripped after the last block; every block then adds the sample's token mask (-inf on padded slots) to its
attention logits, so a padded slot is never a key of any token. On a timm Swin the per-block key/value tables enter
every window's attention (`prompts.swin.swin_block`), padded columns masked the same way. Tables stored in fp16 are
gathered, then cast to the compute dtype.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from ..prompts.attention import attention_with_kv_prefix, missing_attention_part
from ..prompts.swin import is_swin, is_window_attention, swin_block, transformer_blocks
from .tables import PackTables

BLOCK_PARTS = ("norm1", "attn", "ls1", "drop_path1", "norm2", "mlp", "ls2", "drop_path2")


def _check_backbone(backbone: nn.Module, kv_blocks: list[int], tokens: bool) -> None:
    """Per-task key/values, pixel offsets or tokens need a timm ViT (or, for key/values, a timm Swin)."""
    if is_swin(backbone) and not tokens:
        bad = next((b for b in kv_blocks if not is_window_attention(transformer_blocks(backbone)[b].attn)), None)
        if bad is not None:
            raise ConfigError(f"Swin block {bad} has no timm WindowAttention; per-task key/values need it")
        return
    for name in ("patch_embed", "_pos_embed", "patch_drop", "norm_pre", "blocks", "norm", "forward_head"):
        if not hasattr(backbone, name):
            raise ConfigError(f"per-task prompts need a timm VisionTransformer; the backbone has no '{name}'")
    for b in range(len(backbone.blocks)) if tokens else kv_blocks:
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
        self.tokens = tables.tokens is not None
        # tasks whose shallow tokens all fill the table need no token mask (constant tables only)
        self.tokens_masked = self.tokens and (tables_as_inputs or bool(torch.isinf(tables.token_mask).any()))
        self.tables_as_inputs = tables_as_inputs
        # a block whose tasks all have the same number of columns needs no padding mask (constant tables only)
        self.masked_blocks = {b for b, (_, _, m, _) in tables.kv.items()
                              if tables_as_inputs or bool(torch.isinf(m).any())}
        self.is_vit = hasattr(backbone, "blocks") and hasattr(backbone, "_pos_embed")
        self.is_swin = is_swin(backbone)
        if self.kv_blocks or self.pos_delta or self.tokens:
            _check_backbone(backbone, self.kv_blocks, self.tokens)
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
            x = x + tb["input_bias"][t].to(x.dtype)
        feats = self._swin_features(x, t, tb) if self.is_swin and self.kv_blocks else self._features(x, t, tb)
        logits = (torch.einsum("bd,bcd->bc", feats, tb["head_weight"][t].to(feats.dtype))
                  + tb["head_bias"][t].to(feats.dtype))
        invalid = (task != t).unsqueeze(1)
        return torch.where(invalid, logits * float("nan"), logits)  # no constant-of-shape node: fp16-convertible

    def _features(self, x: torch.Tensor, t: torch.Tensor, tb: dict[str, torch.Tensor]) -> torch.Tensor:
        bb = self.backbone
        if not self.is_vit or not (self.kv_blocks or self.pos_delta or self.tokens):
            return bb.forward_head(bb.forward_features(x), pre_logits=True)
        x = bb._pos_embed(bb.patch_embed(x))
        if self.pos_delta:
            delta = tb["pos_delta"][t].to(x.dtype)  # (B, N, D): the patch rows, the prefix rows unchanged
            x = torch.cat([x[:, :x.shape[1] - delta.shape[1]], x[:, x.shape[1] - delta.shape[1]:] + delta], dim=1)
        x = bb.norm_pre(bb.patch_drop(x))
        seq_mask, p, n = None, bb.num_prefix_tokens, 0
        if self.tokens:  # after the prefix, before block 0 (as VPT-shallow inserts them); a mask over the sequence
            tokens, n = tb["prompt_tokens"][t].to(x.dtype), tb["prompt_tokens"].shape[1]
            x = torch.cat([x[:, :p], tokens, x[:, p:]], dim=1)
            if self.tokens_masked:
                zeros = x[:, :, 0] * 0.0  # (B, p + n + N) zeros derived from x: no constant-of-shape node
                seq_mask = torch.cat([zeros[:, :p], tb["prompt_token_mask"][t].to(x.dtype), zeros[:, p + n:]], dim=1)
        for i, block in enumerate(bb.blocks):
            if i in self.kv_blocks:
                x = self._kv_block(block, x, i, t, tb, seq_mask)
            else:
                x = block(x) if seq_mask is None else block(x, attn_mask=seq_mask[:, None, None, :])
        if n:
            x = torch.cat([x[:, :p], x[:, p + n:]], dim=1)  # the token slots go before the final norm and pooling
        return bb.forward_head(bb.norm(x), pre_logits=True)

    def _swin_features(self, x: torch.Tensor, t: torch.Tensor, tb: dict[str, torch.Tensor]) -> torch.Tensor:
        """timm Swin's forward_features with each sample's key/value columns in every window of the kv blocks."""
        bb, i = self.backbone, 0
        x = bb.patch_embed(x)
        for stage in bb.layers:
            x = stage.downsample(x)
            for block in stage.blocks:
                if i in self.kv_blocks:
                    pk, pv, cols = self._kv_rows(i, t, tb)
                    x = swin_block(block, x, None, pk.to(x.dtype), pv.to(x.dtype), kv_mask=cols)[0]
                else:
                    x = block(x)
                i += 1
        return bb.forward_head(bb.norm(x), pre_logits=True)

    def _kv_rows(self, i: int, t: torch.Tensor, tb: dict[str, torch.Tensor]):
        """Each sample's keys, values (B, heads, n_max, head_dim) and column mask (B, n_max; None when unmasked) of
        block `i`."""
        row = tb[f"kv_row_{i}"][t]  # each sample's row of this block's key/value table
        cols = tb[f"kv_mask_{i}"][row] if i in self.masked_blocks else None  # 0 or -inf
        return tb[f"kv_key_{i}"][row], tb[f"kv_value_{i}"][row], cols

    def _kv_block(self, block: nn.Module, x: torch.Tensor, i: int, t: torch.Tensor,
                  tb: dict[str, torch.Tensor], seq_mask: torch.Tensor | None = None) -> torch.Tensor:
        """timm Block with each sample's constant keys/values (padded columns masked out) in front of its own, and the
        sequence's own mask (padded token slots) when given."""
        pk, pv, cols = self._kv_rows(i, t, tb)
        mask = None
        if cols is not None or seq_mask is not None:
            cols = pk[:, 0, :, 0] * 0.0 if cols is None else cols  # (B, n_max) zeros derived from the keys
            seq = x[:, :, 0] * 0.0 if seq_mask is None else seq_mask  # (B, N) zeros, derived from x
            mask = torch.cat([cols.to(x.dtype), seq.to(x.dtype)], dim=1)[:, None, None, :]
        y = attention_with_kv_prefix(block.attn, block.norm1(x), pk, pv, mask=mask)
        x = x + block.drop_path1(block.ls1(y))
        return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))
