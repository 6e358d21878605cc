"""Task tables: every task's folded prompts stacked along a leading task axis, so one graph serves them all.

A task contributes what its method's `fold` returns (`FoldedPrompts`) plus its head:
- a pixel prompt becomes a per-task `pos_embed` offset (T, N, D) on timm ViTs where that fold is exact, else a
  per-task bias on the normalised input (T, 3, H, W);
- per-block constant keys/values (blocks of a ViT, or of every stage of a Swin) become (R, heads, n_max, head_dim)
  tables with one row per task that has keys/values in that block, plus one empty row shared by the tasks that have
  none, and a (T,) row index per task (so a pixel-only or linear task costs no key/value storage); a row with fewer
  columns (condensed runs keep different counts per layer) is zero-padded and its padded columns get -inf in an
  (R, n_max) mask added to the attention logits, so their softmax weight is exactly 0;
- the head becomes (T, C_max, D) weights and (T, C_max) biases; a label mapping onto the pretrained classifier is
  the classifier's rows in mapped order; a task with fewer classes has zero weights and bias `PAD_LOGIT` in its
  unused columns;
- VPT-shallow's constant input tokens (inserted after the prefix before block 0, evolving with the image through every
  block, stripped after the last) become a (T, n_tok, D) table zero-padded to the widest shallow task, with a (T, n_tok)
  mask (0 or -inf) that takes a task's padded token columns out of every block's attention as keys (their rows only
  query, and are stripped: exactly zero effect); a task without shallow prompts has all its token slots masked.
`PackTables.stored(dtype)` keeps the per-task float tables in fp16 (masks and row indices stay as they are); the graph
casts a sample's gathered rows to its compute dtype.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import ConfigError
from ..export.fold import pos_embed_delta
from ..prompts.base import PromptedModel
from ..prompts.swin import is_swin, transformer_blocks

PAD_LOGIT = -1.0e4  # logits of a task's unused class columns; representable in fp16
MASKS = ("kv_mask_", "prompt_token_mask")  # tables of 0 / -inf added to attention logits (padding is -inf)


@dataclass
class TaskFold:
    """One task's constants, read from its trained model."""

    pixel: torch.Tensor | None  # (3, H, W) in [0, 1] pixel space
    kv: list[tuple[torch.Tensor, torch.Tensor] | None]  # per block, (heads, n, head_dim) keys and values
    head_weight: torch.Tensor  # (C, D)
    head_bias: torch.Tensor  # (C,)
    tokens: torch.Tensor | None = None  # (n, D) VPT-shallow input tokens


@dataclass
class PackTables:
    """The stacked tables; `names()` fixes their order as graph inputs or initializers."""

    head_weight: torch.Tensor  # (T, C_max, D)
    head_bias: torch.Tensor  # (T, C_max)
    pos_delta: torch.Tensor | None = None  # (T, N, D)
    input_bias: torch.Tensor | None = None  # (T, 3, H, W), normalised space
    # block -> K (R, heads, n, head_dim), V, mask (R, n), row of each task (T,)
    kv: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    tokens: torch.Tensor | None = None  # (T, n_tok, D) VPT-shallow input tokens, zero-padded
    token_mask: torch.Tensor | None = None  # (T, n_tok): 0 for a task's own tokens, -inf for padding

    @property
    def num_tasks(self) -> int:
        return self.head_weight.shape[0]

    def flat(self) -> dict[str, torch.Tensor]:
        """name -> tensor, in input order (the names of `tables.npz` and of the graph's table inputs)."""
        out = {"head_weight": self.head_weight, "head_bias": self.head_bias}
        if self.pos_delta is not None:
            out["pos_delta"] = self.pos_delta
        if self.input_bias is not None:
            out["input_bias"] = self.input_bias
        if self.tokens is not None:
            out.update(prompt_tokens=self.tokens, prompt_token_mask=self.token_mask)
        for block, (k, v, mask, rows) in sorted(self.kv.items()):
            out.update({f"kv_key_{block}": k, f"kv_value_{block}": v, f"kv_mask_{block}": mask, f"kv_row_{block}": rows})
        return out

    @classmethod
    def from_flat(cls, tensors: dict[str, torch.Tensor]) -> PackTables:
        blocks = sorted({int(k.rsplit("_", 1)[1]) for k in tensors if k.startswith("kv_key_")})
        return cls(tensors["head_weight"], tensors["head_bias"], tensors.get("pos_delta"), tensors.get("input_bias"),
                   {b: (tensors[f"kv_key_{b}"], tensors[f"kv_value_{b}"], tensors[f"kv_mask_{b}"],
                        tensors[f"kv_row_{b}"]) for b in blocks},
                   tensors.get("prompt_tokens"), tensors.get("prompt_token_mask"))

    def stored(self, dtype: torch.dtype) -> PackTables:
        """These tables with the per-task float tables (heads, pixel offsets, keys/values, tokens) in `dtype`;
        the masks (0 / -inf) and the row indices are kept as they are."""
        keep = (*MASKS, "kv_row_")
        return PackTables.from_flat({n: t if n.startswith(keep) else t.to(dtype) for n, t in self.flat().items()})


def task_fold(model: PromptedModel, backbone: nn.Module) -> TaskFold:
    """The constants of one trained model; `backbone` is the plain backbone of a copy of it (method detached)."""
    folded = model.method.fold(backbone)  # VPT-shallow on a Swin has no deploy form: its ConfigError says so
    head = backbone.get_classifier()
    if not isinstance(head, nn.Linear):
        raise ConfigError(f"the backbone's classifier is a {type(head).__name__}, not a Linear; cannot stack heads")
    weight, bias = head.weight.detach(), head.bias.detach() if head.bias is not None else torch.zeros(head.out_features)
    if folded.label_map is not None:
        weight, bias = weight[folded.label_map], bias[folded.label_map]
    kv = folded.kv if folded.kv is not None else [None] * len(_blocks(backbone))
    pixel = None if folded.pixel is None else folded.pixel.detach()
    tokens = folded.tokens.detach().clone() if folded.tokens is not None and len(folded.tokens) else None
    return TaskFold(pixel, list(kv), weight.clone(), bias.clone(), tokens)


def _blocks(backbone: nn.Module) -> list[nn.Module]:
    """The transformer blocks of a ViT or of every Swin stage; none for other backbones (heads and pixels only)."""
    return transformer_blocks(backbone) if is_swin(backbone) or hasattr(backbone, "blocks") else []


def stack_tables(folds: list[TaskFold], backbone: nn.Module, std: torch.Tensor, reserve: bool = False,
                 kv_capacity: int = 0) -> tuple[PackTables, dict]:
    """Stack the tasks' constants; returns the tables and a report (pixel fold used, columns per block and task).

    `reserve` (tables that are graph inputs, to be replaced later) keeps a pixel table even when no task has a
    pixel prompt, and gives every block of a ViT key/value tables at least `kv_capacity` columns wide, so tasks of
    other methods can be added without a new graph.
    """
    t, d = len(folds), folds[0].head_weight.shape[1]
    c_max = max(f.head_weight.shape[0] for f in folds)
    head_w = torch.zeros(t, c_max, d)
    head_b = torch.full((t, c_max), PAD_LOGIT)
    for i, f in enumerate(folds):
        head_w[i, :len(f.head_bias)], head_b[i, :len(f.head_bias)] = f.head_weight, f.head_bias
    tables = PackTables(head_w, head_b)
    report = {"classes": [len(f.head_bias) for f in folds], "pixel": "none", "pixel_reason": ""}
    if any(f.pixel is not None for f in folds) or (reserve and hasattr(backbone, "patch_embed")):
        _stack_pixels(folds, backbone, std, tables, report)
    if any(f.tokens is not None for f in folds):
        tables.tokens, tables.token_mask = _stack_tokens([f.tokens for f in folds], d_model(backbone))
        report["prompt_tokens"] = [0 if f.tokens is None else len(f.tokens) for f in folds]
    report["kv_columns"] = {}
    for block, module in enumerate(_blocks(backbone)):
        entries = [f.kv[block] if block < len(f.kv) else None for f in folds]
        if all(e is None for e in entries) and not (reserve and kv_capacity):
            continue
        tables.kv[block] = _stack_kv(entries, module.attn, max(kv_capacity, 1) if reserve else 0)
        report["kv_columns"][block] = [0 if e is None else int(e[0].shape[1]) for e in entries]
    return tables, report


def d_model(backbone: nn.Module) -> int:
    """The width of the tokens that enter block 0."""
    return int(getattr(backbone, "embed_dim", 0) or _blocks(backbone)[0].norm1.normalized_shape[0])


def _stack_tokens(tokens: list[torch.Tensor | None], dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(T, n_max, D) tokens zero-padded to the widest task and their (T, n_max) mask, -inf on every padded slot (all
    of a task without shallow prompts)."""
    n_max = max(len(t) for t in tokens if t is not None)
    table = torch.zeros(len(tokens), n_max, dim)
    mask = torch.full((len(tokens), n_max), float("-inf"))
    for i, t in enumerate(tokens):
        if t is not None:
            table[i, :len(t)], mask[i, :len(t)] = t, 0.0
    return table, mask


def _stack_pixels(folds: list[TaskFold], backbone: nn.Module, std: torch.Tensor, tables: PackTables,
                  report: dict) -> None:
    shape = next((f.pixel.shape for f in folds if f.pixel is not None), None)
    if shape is None:  # reserved for tasks added later: the backbone's input size
        shape = (3, *backbone.patch_embed.img_size)
    pixels = [f.pixel if f.pixel is not None else torch.zeros(shape) for f in folds]
    deltas = [pos_embed_delta(p, std, backbone) for p in pixels]
    if all(delta is not None for delta, _ in deltas):
        tables.pos_delta = torch.stack([delta for delta, _ in deltas])
        report["pixel"] = "pos_embed"
        return
    report.update(pixel="input_bias", pixel_reason=next(reason for delta, reason in deltas if delta is None))
    tables.input_bias = torch.stack([p / std.reshape(-1, 1, 1) for p in pixels])


def _stack_kv(entries: list[tuple[torch.Tensor, torch.Tensor] | None], attn: nn.Module, capacity: int = 0
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(K, V, mask, rows) of one block: a row per task with keys/values, zero-padded to the widest (or `capacity`)
    with its padded columns -inf in the mask, then one all-masked row for the tasks without (and for tasks added
    later, when reserving `capacity`); `rows[t]` is task t's row."""
    heads = attn.num_heads
    head_dim = getattr(attn, "head_dim", None) or attn.qkv.out_features // (3 * heads)  # Swin's has no head_dim
    n_max = max([capacity] + [0 if e is None else e[0].shape[1] for e in entries])
    present = [e for e in entries if e is not None]
    empty = int(capacity > 0 or len(present) < len(entries))  # reserved tables keep one for tasks added later
    k = torch.zeros(len(present) + empty, heads, n_max, head_dim)
    v = torch.zeros_like(k)
    mask = torch.full((len(present) + empty, n_max), float("-inf"))
    rows = torch.full((len(entries),), len(present), dtype=torch.int64)  # the empty row by default
    r = 0
    for i, e in enumerate(entries):
        if e is not None:
            n = e[0].shape[1]
            k[r, :, :n], v[r, :, :n], mask[r, :n] = e[0], e[1], 0.0
            rows[i] = r
            r += 1
    return k, v, mask, rows


def fit_to_capacity(flat: dict[str, torch.Tensor], capacity: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """Pad new tables to the shapes (after the task axis) an existing graph takes: more classes or key/value columns
    than it holds, or a table it has no input for, need a new graph (one line, exit 2)."""
    out = {}
    for name, t in flat.items():
        if name not in capacity:
            raise ConfigError(f"the new tasks need a '{name}' table that the packed graph has no input for",
                              "pack these runs into a new graph (without --update-tables)")
    for name, shape in capacity.items():
        t = flat.get(name)
        n = len(flat["head_weight"])
        if t is None:  # a table no new task uses: one empty key/value row every task points at, or zeros
            rows = 1 if name.startswith(("kv_key_", "kv_value_", "kv_mask_")) else n
            fill = float("-inf") if name.startswith(MASKS) else 0.0
            out[name] = torch.full((rows, *shape), fill, dtype=torch.int64 if name.startswith("kv_row_") else None)
            continue
        if t.dim() != len(shape) + 1 or any(have > cap for have, cap in zip(t.shape[1:], shape)):
            raise ConfigError(f"table '{name}' of the new tasks is {list(t.shape[1:])}, larger than the graph's "
                              f"{list(shape)}", "pack these runs into a new graph (without --update-tables)")
        fill = float("-inf") if name.startswith(MASKS) else PAD_LOGIT if name == "head_bias" else 0.0
        padded = torch.full((len(t), *shape), fill, dtype=t.dtype)
        padded[tuple([slice(None)] + [slice(0, s) for s in t.shape[1:]])] = t
        out[name] = padded
    return out
