"""Deploy forms of trained prompt methods: prompts become constants, exact within float rounding.

`to_deploy(model)` asks the method for its prompts as constants (`PromptMethod.fold` -> `FoldedPrompts`) and
builds a plain eval-mode module (no method object, no dropout, no Python-side state) that computes the same logits
as the PromptedModel. It never looks at which method it folds; what each kind of constant becomes:

- a pixel prompt P (LoR-VP's B·A, input-independent). On a timm ViT whose patch embedding is a bias-carrying,
  non-overlapping Conv2d with no norm, at fixed input size, conv(normalize(x + P)) = conv(normalize(x)) +
  conv_nobias(P / std), so conv_nobias(P / std) is added to the patch part of `pos_embed` and the graph has exactly
  the bare backbone's operators ("pos_embed"). Otherwise, with the preprocessing in the graph, P is folded into the
  mean subtraction, (x + P - mean) = x - (mean - P), again no extra operator ("mean"); without preprocessing it is one
  constant Add of P / std on the normalised input ("input_bias").
- per-block constant keys/values (VPT-deep and E²VPT visual prompts, whose outputs are discarded so only their keys
  and values matter, and E²VPT's key-value prompts): concatenated in front of the image tokens' keys and values
  ("kv"); the prompt rows cost no query, projection or MLP compute. In a Swin window attention the constant columns
  are shared by every window, with zero relative-position bias and no shift mask (`SwinKVConstAttention`).
- constant input tokens (VPT-shallow, whose states depend on the image after block 0): inserted before block 0 and
  stripped after the last ("tokens").
- a label map (flm/ilm) becomes a constant index_select (an ONNX Gather). Nothing folded: the plain backbone.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..prompts.attention import attention_with_kv_prefix
from ..prompts.swin import SwinKVConstAttention, is_window_attention, transformer_blocks
from ..prompts.base import FoldedPrompts, PromptedModel


@dataclass
class FoldReport:
    """What `to_deploy` did, for the export sidecar and the manifest."""

    method: str
    pixel: str = "none"  # none | pos_embed | mean | input_bias
    pixel_reason: str = ""  # why the pos_embed fold was not used
    tokens: str = "none"  # none | kv | tokens (VPT-shallow)
    kv_columns: list[int] = field(default_factory=list)  # extra key/value columns per block
    label_map: bool = False
    fixed_img_size: bool = False  # a dynamic-size timm ViT was turned into its fixed-size form
    include_preprocess: bool = True

    @property
    def kind(self) -> str:
        """What carries the prompts in the deploy form: the pixel fold if any, else the token fold ('none' for none)."""
        return self.pixel if self.pixel != "none" else self.tokens

    @property
    def folds_nothing(self) -> bool:
        """The deploy form is the plain backbone (with the run's head): no prompt and no label map."""
        return self.kind == "none" and not self.label_map

    def to_dict(self) -> dict:
        return {**asdict(self), "kind": self.kind}


class KVConstAttention(nn.Module):
    """timm Attention with constant keys/values (heads, n, head_dim) prepended; queries are not extended."""

    def __init__(self, attn: nn.Module, pk: torch.Tensor, pv: torch.Tensor):
        super().__init__()
        self.attn = attn
        self.register_buffer("pk", pk.detach().clone().contiguous())
        self.register_buffer("pv", pv.detach().clone().contiguous())

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        if attn_mask is not None or is_causal:
            raise NotImplementedError("constant key/value prompts with attention masks are not supported")
        return attention_with_kv_prefix(self.attn, x, self.pk, self.pv)


class ConstTokenBlock(nn.Module):
    """A timm block that inserts constant tokens after the prefix and/or strips `strip` tokens after it."""

    def __init__(self, block: nn.Module, num_prefix: int, tokens: torch.Tensor | None, strip: int):
        super().__init__()
        self.block, self.num_prefix, self.strip = block, num_prefix, strip
        self.register_buffer("tokens", None if tokens is None else tokens.detach().clone().unsqueeze(0))

    def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        p = self.num_prefix
        if self.tokens is not None:
            x = torch.cat([x[:, :p], self.tokens.to(x.dtype).expand(x.shape[0], -1, -1), x[:, p:]], dim=1)
        x = self.block(x, **kwargs)
        return torch.cat([x[:, :p], x[:, p + self.strip:]], dim=1) if self.strip else x


class DeployModel(nn.Module):
    """Backbone with constants folded in, optional preprocessing, optional bias and label gather."""

    def __init__(self, backbone: nn.Module, mean: torch.Tensor, std: torch.Tensor, include_preprocess: bool,
                 input_bias: torch.Tensor | None = None, label_map: torch.Tensor | None = None):
        super().__init__()
        self.backbone = backbone
        self.include_preprocess = include_preprocess
        self.register_buffer("mean", mean.detach().clone() if include_preprocess else None)
        self.register_buffer("std", std.detach().clone() if include_preprocess else None)
        self.register_buffer("input_bias", None if input_bias is None else input_bias.detach().clone())
        self.register_buffer("label_map", None if label_map is None else label_map.detach().clone())
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.include_preprocess:
            x = (x - self.mean) / self.std
        if self.input_bias is not None:
            x = x + self.input_bias
        y = self.backbone(x)
        return y.index_select(1, self.label_map) if self.label_map is not None else y


def fix_img_size(backbone: nn.Module) -> bool:
    """Turn a timm ViT built with `dynamic_img_size` into its fixed-size form (same values, no pos_embed resample).

    With `dynamic_img_size` the patch embedding emits NHWC and `_pos_embed` resamples `pos_embed`, which the
    exporter traces as an interpolation even at the native grid. At the native input size flattening the patch
    grid to tokens and adding `pos_embed` directly is the same computation.
    """
    pe = getattr(backbone, "patch_embed", None)
    if not getattr(backbone, "dynamic_img_size", False) or getattr(pe, "dynamic_img_pad", True) or \
            not hasattr(pe, "flatten"):
        return False
    backbone.dynamic_img_size = False
    pe.flatten = True
    return True


def _posembed_fold_blocker(backbone: nn.Module) -> str:
    """Why the LoR-VP prompt cannot be folded into `pos_embed` exactly ('' when it can)."""
    pe = getattr(backbone, "patch_embed", None)
    proj = getattr(pe, "proj", None)
    if getattr(backbone, "pos_embed", None) is None or not isinstance(proj, nn.Conv2d):
        return "not a timm ViT with a conv patch embedding and a learned pos_embed"
    if not isinstance(getattr(pe, "norm", nn.Identity()), nn.Identity):
        return "the patch embedding has a norm layer (not linear)"
    if getattr(backbone, "dynamic_img_size", False) or getattr(pe, "dynamic_img_pad", False):
        return "dynamic image size resamples pos_embed"
    if proj.stride != proj.kernel_size or any(proj.padding) or proj.dilation != (1, 1) or proj.groups != 1:
        return "the patch convolution overlaps or pads"
    if not getattr(pe, "flatten", False):
        return "the patch embedding does not flatten to tokens"
    return ""


def pos_embed_delta(prompt: torch.Tensor, std: torch.Tensor, backbone: nn.Module) -> tuple[torch.Tensor | None, str]:
    """What pixel prompt `prompt` (3, L, L) adds to the patch rows of `pos_embed`: (delta (N, D), '') when the
    fold is exact, else (None, the reason). conv(normalize(x + P)) = conv(normalize(x)) + conv_nobias(P / std)."""
    blocker = _posembed_fold_blocker(backbone)
    if blocker:
        return None, blocker
    proj = backbone.patch_embed.proj
    scaled = (prompt / std.reshape(-1, 1, 1)).unsqueeze(0)  # (1, 3, L, L) in normalised space
    delta = F.conv2d(scaled, proj.weight, None, proj.stride).flatten(2).transpose(1, 2)[0]  # (N, D)
    n, rows = delta.shape[0], backbone.pos_embed.shape[1]
    if rows != (n if getattr(backbone, "no_embed_class", False) else n + backbone.num_prefix_tokens):
        return None, f"pos_embed has {rows} rows for {n} patches"
    return delta, ""


def _fold_pixel(prompt: torch.Tensor, model: PromptedModel, backbone: nn.Module, report: FoldReport
                ) -> torch.Tensor | None:
    """Fold the pixel prompt (3, L, L) into the backbone copy, or return the constant that carries it.

    Returns:
        None for the pos_embed fold, the shifted mean (1, 3, L, L) for "mean", the normalised-space bias for
        "input_bias".
    """
    delta, blocker = pos_embed_delta(prompt, model.std[0], backbone)
    if delta is not None:
        with torch.no_grad():
            backbone.pos_embed[:, -delta.shape[0]:] += delta  # the patch rows; prefix rows unchanged
        report.pixel = "pos_embed"
        return None
    report.pixel_reason = blocker
    if report.include_preprocess:
        report.pixel = "mean"
        return model.mean - prompt.unsqueeze(0)
    report.pixel = "input_bias"
    return (prompt / model.std[0]).unsqueeze(0)


def _fold_tokens(folded: FoldedPrompts, backbone: nn.Module, num_prefix: int, report: FoldReport) -> None:
    """Put constant keys/values and input tokens into the (already detached) backbone copy."""
    if folded.kv is None and (folded.tokens is None or not len(folded.tokens)):
        return  # nothing token-shaped to fold (pixel prompts, label maps, linear probes): any backbone will do
    blocks = transformer_blocks(backbone)  # a ViT's blocks, or every stage's blocks of a Swin
    depth = len(blocks)
    if folded.kv is not None:
        if len(folded.kv) != depth:
            raise ValueError(f"fold() gave key/values for {len(folded.kv)} blocks, the backbone has {depth}")
        report.tokens = "kv"
        for block, kv in zip(blocks, folded.kv):
            report.kv_columns.append(0 if kv is None else int(kv[0].shape[1]))
            if kv is not None and kv[0].shape[1]:
                const = SwinKVConstAttention if is_window_attention(block.attn) else KVConstAttention
                block.attn = const(block.attn, kv[0], kv[1])
    if folded.tokens is not None and len(folded.tokens):
        if folded.kv is not None:
            raise ValueError("fold() gave both input tokens and key/values; a deploy form takes one of them")
        n = folded.tokens.shape[0]
        report.tokens, report.kv_columns = "tokens", [0] * depth
        for i in {0, depth - 1}:
            backbone.blocks[i] = ConstTokenBlock(backbone.blocks[i], num_prefix, folded.tokens if i == 0 else None,
                                                 n if i == depth - 1 else 0)


def deploy_copy(model: PromptedModel) -> tuple[PromptedModel, nn.Module, bool]:
    """An eval-mode copy of `model` (left unchanged), its plain frozen backbone with the method detached, and whether
    that backbone was turned into its fixed-size form: what every deploy form starts from."""
    work = copy.deepcopy(model).eval()
    backbone = work.detach_method()
    for p in backbone.parameters():
        p.requires_grad_(False)
    return work, backbone, fix_img_size(backbone)


def to_deploy(model: PromptedModel, include_preprocess: bool = True) -> DeployModel:
    """The deploy form of `model`; what was folded is in its `.report` (a FoldReport). `model` is left unchanged.

    Args:
        model: a trained PromptedModel.
        include_preprocess: take images in [0, 1] (normalisation inside) instead of normalised images.

    Returns:
        An eval-mode DeployModel with the prompts as buffers and `.report` set.

    Raises:
        ConfigError: the method has no deploy form (its `fold` is not defined).
    """
    report = FoldReport(method=model.method.name, include_preprocess=include_preprocess)
    work, backbone, report.fixed_img_size = deploy_copy(model)
    folded = work.method.fold(backbone)
    mean, bias = work.mean, None
    if folded.pixel is not None:
        shifted = _fold_pixel(folded.pixel.detach(), work, backbone, report)
        if report.pixel == "mean":
            mean = shifted
        elif report.pixel == "input_bias":
            bias = shifted
    _fold_tokens(folded, backbone, model.info.num_prefix_tokens, report)
    report.label_map = folded.label_map is not None
    deploy = DeployModel(backbone, mean, work.std, include_preprocess, bias, folded.label_map)
    deploy.report = report
    return deploy


def bare_deploy(model: PromptedModel, include_preprocess: bool = True) -> DeployModel:
    """The backbone alone (with the run's head, without prompts or label mapping) in the same deploy form, as the
    cost reference for profiling."""
    work, backbone, _ = deploy_copy(model)
    deploy = DeployModel(backbone, work.mean, work.std, include_preprocess)
    deploy.report = FoldReport(method="bare", include_preprocess=include_preprocess)
    return deploy
