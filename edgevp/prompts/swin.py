"""Token prompts (VPT-shallow/deep, E²VPT) on timm Swin Transformers, and the window attention they need.

Swin works on (B, H, W, C) feature maps split into M×M windows, so prompt tokens cannot simply be prepended to a
sequence. The prompted forward, per block with prompt rows P (B, n, C) and key/value-only columns (E²VPT, m per block):
- window attention: in every window the prompts are prepended to the window's tokens: they are queries (rows) and
  keys/values (columns) of every window; the m key/value prompts are extra columns. The relative-position bias and
  the shifted-window mask apply only among the window's own tokens: prompt rows and columns get zero bias and are never
  masked. A prompt's query/key/value are the same in every window of its sample (no position bias), so they are
  computed once per sample and broadcast to its windows; the prompt rows' outputs are averaged over the windows of
  their sample (one prompt set per sample leaves the attention), then projected;
- the rest of the block: the prompt rows take the residual, norm2 and MLP like any token;
- patch merging (shallow prompts): a prompt vector is repeated 4 times along channels (the 2×2 concatenation a merge
  does to a patch neighbourhood), then the merge's norm and reduction give the next stage's prompt;
- deep prompts: block l inserts its own set (dim of its stage), replacing what the previous block produced; the prompt
  rows are not merged (they would be replaced); the final norm and pooling never see prompts, unless the method
  pools them as the reference implementations do (`prompt.swin_pool: reference`, the owner's `pool_prompts`): then
  the last block's prompt rows go through the final norm and the average pool runs over the image tokens and them.
The feature map and the prompt rows travel between wrapped modules as a tuple (x, rows); the stage's own forward
(downsample, then its blocks) passes it along unchanged.

Folding deep prompts (and E²VPT's key-value prompts): the prompt rows are discarded after each block, so only their
keys and values matter, and those are the same in every window. `SwinKVConstAttention` is a window attention with
constant prefix columns (zero bias, no mask), shared by every window.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def is_swin(backbone: nn.Module) -> bool:
    """A timm SwinTransformer-shaped model: `layers` of stages, each with a `downsample` and `blocks`."""
    layers = getattr(backbone, "layers", None)
    return isinstance(layers, nn.Sequential) and len(layers) > 0 and all(
        hasattr(s, "downsample") and hasattr(s, "blocks") for s in layers)


def is_window_attention(attn: nn.Module | None) -> bool:
    """timm's WindowAttention (relative-position bias over a window)."""
    return attn is not None and hasattr(attn, "relative_position_bias_table") and hasattr(attn, "window_area")


def transformer_blocks(backbone: nn.Module) -> list[nn.Module]:
    """The backbone's transformer blocks in forward order: `blocks` of a ViT, every stage's `blocks` of a Swin."""
    if is_swin(backbone):
        return [b for stage in backbone.layers for b in stage.blocks]
    return list(backbone.blocks)


def _per_window(t: torch.Tensor, batch: int, windows: int) -> torch.Tensor:
    """(B, ...) per-sample tensors repeated for each of the sample's windows: (B·nW, ...) in timm's window order."""
    return t.unsqueeze(1).expand(batch, windows, *t.shape[1:]).reshape(batch * windows, *t.shape[1:])


def window_attention(a: nn.Module, x: torch.Tensor, mask: torch.Tensor | None = None,
                     rows: torch.Tensor | None = None, pk: torch.Tensor | None = None, pv: torch.Tensor | None = None,
                     keep_rows: bool = True, kv_mask: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """timm WindowAttention `a` on windows `x` (B·nW, M², C) with prompts.

    rows:   (B, n, C) normalised prompt tokens of each sample: queries and keys/values in every window of the sample;
    pk/pv:  (heads, m, head_dim) constant, or (B, heads, m, head_dim) per sample, key/value columns of every window;
    mask:   timm's shifted-window mask (nW, M², M²), applied among the window tokens only;
    kv_mask: (B, m) per sample, added to the logits of the pk/pv columns (-inf takes a padded column out exactly).
    Prompt rows and columns get zero relative-position bias and no mask. Returns (window outputs (B·nW, M², C), prompt
    outputs (B, n, C) averaged over the windows of each sample, or None; also None unless `keep_rows`: the prompt rows
    still query in every window, but their outputs, to be discarded, are not projected).
    """
    bw, N, C = x.shape
    h = a.num_heads
    q, k, v = a.qkv(x).reshape(bw, N, 3, h, -1).permute(2, 0, 3, 1, 4).unbind(0)  # (B·nW, h, N, hd)
    n = 0 if rows is None else rows.shape[1]
    batch = rows.shape[0] if rows is not None else pk.shape[0] if pk is not None and pk.dim() == 4 else None
    if batch is None and mask is not None:
        batch = bw // mask.shape[0]
    nw = bw // batch if batch else 1
    qs, ks, vs = [], [], []
    if pk is not None and pk.shape[-2]:
        if pk.dim() == 3:
            ks.append(pk.to(k.dtype).unsqueeze(0).expand(bw, -1, -1, -1))
            vs.append(pv.to(v.dtype).unsqueeze(0).expand(bw, -1, -1, -1))
        else:
            ks.append(_per_window(pk.to(k.dtype), batch, nw))
            vs.append(_per_window(pv.to(v.dtype), batch, nw))
    m = sum(t.shape[2] for t in ks)
    if n:
        rq, rk, rv = a.qkv(rows).reshape(batch, n, 3, h, -1).permute(2, 0, 3, 1, 4).unbind(0)  # once per sample
        qs.append(_per_window(rq, batch, nw))
        ks.append(_per_window(rk, batch, nw))
        vs.append(_per_window(rv, batch, nw))
    if qs:
        q = torch.cat([*qs, q], dim=2)
    if ks:
        k = torch.cat([*ks, k], dim=2)
        v = torch.cat([*vs, v], dim=2)
    bias = a._get_rel_pos_bias()  # (1, h, N, N)
    if mask is not None:
        bias = bias + mask.unsqueeze(1).to(bias.dtype)  # (nW, h, N, N)
    if n or m:
        bias = F.pad(bias, (m + n, 0, n, 0))  # prompt rows and columns: zero bias, unmasked
    attn = (q * a.scale) @ k.transpose(-2, -1)
    if mask is not None:
        attn = (attn.view(-1, mask.shape[0], h, n + N, m + n + N) + bias.unsqueeze(0)).view(bw, h, n + N, m + n + N)
    else:
        attn = attn + bias
    if kv_mask is not None and m:
        attn = attn + F.pad(_per_window(kv_mask.to(attn.dtype), batch, nw), (0, n + N))[:, None, None, :]
    out = a.attn_drop(attn.softmax(dim=-1)) @ v
    out = out.transpose(1, 2).reshape(bw, n + N, -1)
    prompt_out = None
    if n and keep_rows:
        prompt_out = a.proj_drop(a.proj(out[:, :n].reshape(batch, nw, n, -1).mean(1)))
    if n:
        out = out[:, n:]
    return a.proj_drop(a.proj(out)), prompt_out


def swin_block(block: nn.Module, x: torch.Tensor, rows: torch.Tensor | None = None,
               pk: torch.Tensor | None = None, pv: torch.Tensor | None = None, keep_rows: bool = True,
               kv_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """timm SwinTransformerBlock `block` on x (B, H, W, C) with prompt rows (B, n, C) and key/value columns (their
    per-sample `kv_mask` as `window_attention`'s); returns
    (x, the prompt rows after the block, or None when not `keep_rows`: rows the next block replaces or the final norm
    drops need no projection or MLP). The same steps as the block's own forward, prompts added."""
    from timm.models.swin_transformer import window_partition, window_reverse

    B, H, W, C = x.shape
    mh, mw = block.window_size
    sh, sw = block.shift_size
    shifted = torch.roll(block.norm1(x), shifts=(-sh, -sw), dims=(1, 2)) if sh or sw else block.norm1(x)
    pad_h, pad_w = (mh - H % mh) % mh, (mw - W % mw) % mw
    shifted = F.pad(shifted, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = shifted.shape[1], shifted.shape[2]
    windows = window_partition(shifted, (mh, mw)).view(-1, mh * mw, C)
    mask = block.get_attn_mask(shifted) if getattr(block, "dynamic_mask", False) else block.attn_mask
    normed_rows = None if rows is None else block.norm1(rows)
    out, prompt_out = window_attention(block.attn, windows, mask, normed_rows, pk, pv, keep_rows, kv_mask)
    y = window_reverse(out.view(-1, mh, mw, C), (mh, mw), hp, wp)[:, :H, :W, :].contiguous()
    if sh or sw:
        y = torch.roll(y, shifts=(sh, sw), dims=(1, 2))
    x = x + block.drop_path1(y)
    x = x.reshape(B, -1, C)
    x = (x + block.drop_path2(block.mlp(block.norm2(x)))).reshape(B, H, W, C)
    if prompt_out is None:
        return x, None
    if rows is not None:
        rows = rows + block.drop_path1(prompt_out)
        rows = rows + block.drop_path2(block.mlp(block.norm2(rows)))
    return x, rows


def merge_rows(merge: nn.Module, rows: torch.Tensor) -> torch.Tensor:
    """Prompt rows (B, n, C) through timm PatchMerging `merge`: each vector repeated 4 times along channels (as if all
    four patches of a 2×2 neighbourhood were the prompt), then the merge's norm and reduction."""
    return merge.reduction(merge.norm(rows.repeat(1, 1, 4)))


def swin_token_keys_values(block: nn.Module, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The keys and values (heads, n, head_dim) constant tokens (n, C) contribute in every window of Swin block
    `block`: K = LN1(P) W_k + b_k, V = LN1(P) W_v + b_v (no position bias, so the same in every window)."""
    a = block.attn
    n = tokens.shape[0]
    _, k, v = a.qkv(block.norm1(tokens)).reshape(n, 3, a.num_heads, -1).permute(1, 2, 0, 3).unbind(0)
    return k, v


class SwinKVConstAttention(nn.Module):
    """timm WindowAttention with constant keys/values (heads, n, head_dim) prepended in every window, with zero bias
    and no shift mask; queries are not extended (the deploy form of deep prompts and key-value prompts on Swin)."""

    def __init__(self, attn: nn.Module, pk: torch.Tensor, pv: torch.Tensor):
        super().__init__()
        self.attn = attn
        self.register_buffer("pk", pk.detach().clone().contiguous())
        self.register_buffer("pv", pv.detach().clone().contiguous())

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return window_attention(self.attn, x, mask, None, self.pk, self.pv)[0]


# -- the prompted forward: wrappers passing (x, rows) along -----------------------------------------------------------
def _unpack(inp) -> tuple[torch.Tensor, torch.Tensor | None]:
    return inp if isinstance(inp, tuple) else (inp, None)


class SwinPromptBlock(nn.Module):
    """Wraps Swin block `layer` (numbered over all stages): the owner gives the block's prompt rows and key/value
    columns; returns (x, rows)."""

    def __init__(self, block: nn.Module, layer: int, owner: nn.Module):
        super().__init__()
        self.block = block
        self.layer = layer
        object.__setattr__(self, "owner", owner)  # a plain reference: the prompts stay registered on the method

    def forward(self, inp):
        x, rows = _unpack(inp)
        rows = self.owner.swin_rows(self.layer, x, rows)
        kv = getattr(self.owner, "kv_prompt", None)
        pk, pv = kv(self.layer, x.shape[0]) if kv is not None else (None, None)
        keep = keeps_rows(self.owner, self.layer)
        return swin_block(self.block, x, rows, pk, pv, keep)


class SwinPromptMerge(nn.Module):
    """Wraps a stage's `downsample` (PatchMerging or Identity): merges the feature map and, when the prompts carry
    into the next stage (shallow), the prompt rows."""

    def __init__(self, merge: nn.Module, owner: nn.Module):
        super().__init__()
        self.merge = merge
        object.__setattr__(self, "owner", owner)

    def forward(self, inp):
        x, rows = _unpack(inp)
        if rows is not None and self.owner.deep:
            rows = None  # deep: the next block inserts its own prompts
        if rows is not None and not isinstance(self.merge, nn.Identity):
            rows = merge_rows(self.merge, rows)
        return self.merge(x), rows


def keeps_rows(owner: nn.Module, layer: int) -> bool:
    """Whether block `layer`'s prompt outputs are used after it: shallow rows go on to the next block, and the last
    block's rows go to the final norm and pool when the owner pools prompts (`pool_prompts`, the references' way)."""
    if layer == owner.info.depth - 1:
        return bool(getattr(owner, "pool_prompts", False))
    return not owner.deep


class SwinPromptExit(nn.Module):
    """Wraps the final norm. By default the prompt rows are dropped, so pooling and the head see only the feature map.
    With prompt rows (the owner pools prompts), the normed feature map (B, H, W, C) and the normed rows (B, n, C) go
    on as one (B, 1, H·W + n, C) map: the head's average pool over it is the mean over image and prompt tokens."""

    def __init__(self, norm: nn.Module):
        super().__init__()
        self.norm = norm

    def forward(self, inp):
        x, rows = _unpack(inp)
        x = self.norm(x)
        if rows is None:
            return x
        return torch.cat([x.flatten(1, 2), self.norm(rows)], dim=1).unsqueeze(1)


def attach_swin(method, backbone: nn.Module) -> None:
    """Wrap every block, every stage's downsample and the final norm of timm Swin `backbone` for `method` (a
    TokenPrompts: `swin_rows(layer, x, rows)`, `deep`, optionally `kv_prompt(layer, batch)`), via its `_swap`."""
    if not is_swin(backbone):
        raise ValueError("not a timm SwinTransformer")
    layer = 0
    for stage in backbone.layers:
        method._swap(stage, "downsample", SwinPromptMerge(stage.downsample, method))
        for j, block in enumerate(stage.blocks):
            method._swap(stage.blocks, str(j), SwinPromptBlock(block, layer, method))
            layer += 1
    method._swap(backbone, "norm", SwinPromptExit(backbone.norm))


def swin_prompt_flow(info, deep: bool, counts: list[int], pooled: bool = False) -> tuple[list[int], list[int]]:
    """For the cost model: (per block, the prompt rows whose outputs are used after it, i.e. get projected and
    through the MLP; per stage, the prompt rows its patch merging carries). Both 0 for deep prompts (replaced at
    every block) and after the last block, unless `pooled`: then the last block's rows go on to the final pool."""
    stages = len(info.swin_stages)
    if not counts:
        return [0] * info.depth, [0] * stages
    last = (counts[-1] if deep else counts[0]) if pooled else 0
    if deep:
        return [0] * (info.depth - 1) + [last], [0] * stages
    n = counts[0]
    return [n] * (info.depth - 1) + [last], [n if s["downsample"] else 0 for s in info.swin_stages]
