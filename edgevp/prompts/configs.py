"""The `prompt` section of a recipe for each built-in method: plain dataclasses, importable without torch.

Each config's docstring is the method's one-line summary (`edgevp list methods`); `needs_vit` says whether the
method needs a token backbone: a timm VisionTransformer, or one of its `backbones` ("vit", "swin"). The method classes
(`edgevp.prompts.<name>`) take these configs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from ..config import PromptConfig, check


# Swin switches of the token methods (docs/fidelity.md, S1 and S4); refused on other backbones when the method is built
SWIN_POOL_HELP = ("Swin only. image: the final norm and average pool see the image tokens only (deep prompts fold at "
                  "export); reference: they also see the last block's prompt tokens, as the reference "
                  "implementations do (no deploy form: export refuses such a run)")
SWIN_INIT_HELP = ("Swin only. stage: each stage's prompts are drawn with the init bound of that stage's width; "
                  "reference: every stage with the stage-0 bound, as the reference implementations do")


@dataclass
class LinearConfig(PromptConfig):
    """Trains only a new classifier on the frozen backbone's pooled features (the baseline)."""


@dataclass
class VPTConfig(PromptConfig):
    """VPT-shallow / VPT-deep prompt tokens with the reference init, prompt dropout and optional projection."""

    needs_vit: ClassVar[bool] = True
    backbones: ClassVar[tuple[str, ...]] = ("vit", "swin")  # timm VisionTransformer and SwinTransformer

    num_tokens: int = field(default=10, metadata={"help": "prompt tokens per layer (deep) or in total (shallow)"})
    deep: bool = field(default=True, metadata={"help": "new prompts at every block (deep) or only at the input"})
    dropout: float = field(default=0.0, metadata={"help": "dropout on prompt tokens each time they are inserted"})
    project: int = field(default=-1, metadata={"help": "if > 0, prompts live in this dim and a Linear maps them up"})
    tokens_per_layer: list[int] | None = field(
        default=None, metadata={"help": "per-layer prompt counts (deep; written by condensation)"})
    swin_pool: Literal["image", "reference"] = field(default="image", metadata={"help": SWIN_POOL_HELP})
    swin_init_bound: Literal["stage", "reference"] = field(default="stage", metadata={"help": SWIN_INIT_HELP})

    def __post_init__(self):
        check(self.num_tokens >= 0, "num_tokens must be >= 0")
        check(0.0 <= self.dropout < 1.0, "dropout must be in [0, 1)")
        check(self.project == -1 or self.project > 0, "project must be -1 (off) or a positive dim")
        check(self.tokens_per_layer is None or min(self.tokens_per_layer, default=0) >= 0,
              "tokens_per_layer must hold non-negative counts")


@dataclass
class E2VPTConfig(PromptConfig):
    """E²VPT: key-value prompts in every attention plus masked VPT-deep visual prompts."""

    needs_vit: ClassVar[bool] = True
    backbones: ClassVar[tuple[str, ...]] = ("vit", "swin")  # timm VisionTransformer and SwinTransformer

    num_tokens: int = field(default=10, metadata={"help": "visual prompt tokens per layer (n_p)"})
    num_kv: int = field(default=5, metadata={"help": "key-value prompts per layer (n_kv)"})
    share_kv: bool = field(default=True, metadata={"help": "one tensor serves as key and value prompt"})
    kv_init: Literal["kaiming", "uniform", "trunc_normal"] = field(
        default="kaiming", metadata={"help": "kaiming: bound sqrt(6/(n_kv·head_dim)) (reference)"})
    dropout: float = field(default=0.1, metadata={"help": "dropout on visual prompts"})
    kv_dropout: float = 0.0
    segments: int = field(default=16, metadata={"help": "segments per prompt for segment masks (R)"})
    train_masks: bool = field(default=False, metadata={"help": "learn the token/segment masks as gains"})
    token_keep: list[bool] | None = field(default=None, metadata={"help": "kept visual tokens (written by pruning)"})
    tokens_per_layer: list[int] | None = field(
        default=None, metadata={"help": "per-layer visual prompt counts (written by Prompt Condensation; the masks "
                                        "are then baked into the prompts)"})
    swin_pool: Literal["image", "reference"] = field(default="image", metadata={"help": SWIN_POOL_HELP})
    swin_init_bound: Literal["stage", "reference"] = field(default="stage", metadata={"help": SWIN_INIT_HELP})

    def __post_init__(self):
        check(self.num_tokens >= 0 and self.num_kv >= 0, "num_tokens and num_kv must be >= 0")
        check(self.segments >= 1, "segments must be >= 1")
        check(0.0 <= self.dropout < 1.0 and 0.0 <= self.kv_dropout < 1.0, "dropout and kv_dropout must be in [0, 1)")
        check(self.tokens_per_layer is None or min(self.tokens_per_layer, default=0) >= 0,
              "tokens_per_layer must hold non-negative counts")


@dataclass
class LoRVPConfig(PromptConfig):
    """LoR-VP: a low-rank pixel prompt added to the resized image before normalisation."""

    rank: int = field(default=4, metadata={"help": "rank r of B·A"})
    mapping: Literal["lp", "flm", "ilm"] = field(default="lp", metadata={"help": "output mapping"})
    mapping_every: int = field(default=1, metadata={"help": "ilm: epochs between mapping updates"})
    init_std: float = field(default=0.01, metadata={"help": "std of A's normal init (B starts at zero)"})

    def __post_init__(self):
        check(self.rank >= 1 and self.mapping_every >= 1, "rank and mapping_every must be >= 1")
        check(self.init_std >= 0, "init_std must be >= 0")


@dataclass
class PadConfig(PromptConfig):
    """Pad prompt (VP): learned pixels in a border of width p added to the resized image before normalisation."""

    size: int = field(default=30, metadata={
        "help": "border width p in pixels (VP: 30 at 224 px); p < L/2 for an L×L input, checked when the method "
                "is built"})
    init: Literal["vp", "normal", "zeros"] = field(default="vp", metadata={
        "help": "vp: N(0, std_c²) per channel c with the backbone's normalisation std, i.e. the VP reference's "
                "N(0, 1) in normalised space; normal: N(0, init_std²) in [0, 1] pixel space; zeros: start at 0"})
    init_std: float = field(default=0.1, metadata={"help": "std of init=normal (pixel space)"})

    def __post_init__(self):
        check(self.size >= 1, "size (the border width p) must be >= 1")
        check(self.init_std >= 0, "init_std must be >= 0")
