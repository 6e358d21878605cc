"""Frozen timm backbones: creation from the hub, a local file or the offline converters, plus what methods need."""
from __future__ import annotations

import difflib
import os
import socket
from pathlib import Path

import torch
from torch import nn

from .backbone_info import BackboneInfo
from .config import BackboneConfig
from .errors import ConfigError, MissingError


def _check_name(name: str) -> None:
    import timm

    if not timm.is_model(name.split(".")[0]):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        raise ConfigError(f"unknown backbone '{name}'", f"did you mean {', '.join(close)}?" if close
                          else "see `edgevp list models`")


def _hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _create(name: str, img_size: int | None, num_classes: int | None, **kwargs) -> nn.Module:
    import timm

    extra = {} if num_classes is None else {"num_classes": num_classes}
    if img_size is not None:
        try:
            return timm.create_model(name, img_size=img_size, **extra, **kwargs)
        except TypeError as e:  # CNNs take no img_size; they accept any input size as is
            if "img_size" not in str(e):
                raise
    return timm.create_model(name, **extra, **kwargs)


def _create_from_hub(name: str, img_size: int | None, num_classes: int | None) -> nn.Module:
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    if not offline and not _hub_reachable():
        offline = True
        os.environ["HF_HUB_OFFLINE"] = "1"  # let huggingface_hub use its cache without network retries
        try:
            import huggingface_hub.constants as hf_constants

            hf_constants.HF_HUB_OFFLINE = True
        except ImportError:
            pass
    try:
        return _create(name, img_size, num_classes, pretrained=True)
    except Exception as e:  # hub / cache errors come in many types (LocalEntryNotFoundError, OSError, ...)
        if not offline:
            raise
        raise MissingError(
            f"cannot get pretrained weights for '{name}': no network and not in the local cache ({type(e).__name__})",
            "set backbone.weights to a local .safetensors/.pth file, or 'offline' for a bundled backbone") from None


def _weights_file(cfg: BackboneConfig) -> Path:
    """The local weights file `cfg.weights` names; MissingError (exit 4) when it does not exist."""
    file = Path(cfg.weights).expanduser()
    if not file.is_file():
        raise MissingError(f"weights file '{cfg.weights}' not found",
                           "pass a .safetensors/.pth file in timm key names, or weights=offline|hub|none")
    return file


def check_backbone(cfg: BackboneConfig) -> None:
    """What creating the backbone would refuse, found without creating it: an unknown name (exit 2), weights that
    do not exist for it (offline, or a local file: exit 4). Hub weights are only looked for when created."""
    from .weights import check_offline

    _check_name(cfg.name)
    if cfg.weights == "offline":
        check_offline(cfg.name)
    elif cfg.weights not in ("none", "hub"):
        _weights_file(cfg)


def create_backbone(cfg: BackboneConfig, num_classes: int | None = None) -> tuple[nn.Module, BackboneInfo]:
    """Create the frozen timm backbone of `cfg`; `num_classes=None` keeps the pretrained classifier.

    Example:
        >>> model, info = create_backbone(BackboneConfig("test_vit", weights="none"), num_classes=10)
    """
    from .io import sha256_file
    from .weights import offline_weights_file

    _check_name(cfg.name)
    file: Path | None = None
    if cfg.weights == "none":
        model = _create(cfg.name, cfg.img_size, num_classes, pretrained=False)
    elif cfg.weights == "hub":
        model = _create_from_hub(cfg.name, cfg.img_size, num_classes)
    else:
        file = offline_weights_file(cfg.name) if cfg.weights == "offline" else _weights_file(cfg)
        try:
            model = _create(cfg.name, cfg.img_size, num_classes, pretrained=True,
                            pretrained_cfg_overlay=dict(file=str(file)))
        except RuntimeError as e:
            raise ConfigError(f"weights '{file}' do not fit backbone '{cfg.name}': {str(e).splitlines()[0]}") from None
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, describe(model, cfg, file and sha256_file(file))


def describe(model: nn.Module, cfg: BackboneConfig, weights_sha256: str | None = None) -> BackboneInfo:
    from timm.data import resolve_model_data_config
    from timm.models.swin_transformer import SwinTransformer
    from timm.models.vision_transformer import VisionTransformer

    dc = resolve_model_data_config(model)
    size = tuple(dc["input_size"])
    if cfg.img_size is not None:
        size = (3, cfg.img_size, cfg.img_size)
    if size[-2] != size[-1]:  # prompts, packs and exports assume S×S (the device and edgevp.runtime take H×W)
        raise ConfigError(f"backbone '{cfg.name}' takes {size[-2]}x{size[-1]} images; edgevp trains square inputs only",
                          "set backbone.img_size to one side length")
    info = BackboneInfo(
        name=cfg.name, weights=cfg.weights, weights_sha256=weights_sha256,
        is_vit=isinstance(model, VisionTransformer), input_size=size,
        mean=tuple(float(v) for v in dc["mean"]), std=tuple(float(v) for v in dc["std"]),
        interpolation=str(dc.get("interpolation", "bicubic")), crop_pct=float(dc.get("crop_pct", 1.0)),
        num_features=int(model.num_features), num_classes=int(getattr(model, "num_classes", 0)),
        data_config={**{k: (list(v) if isinstance(v, tuple) else v) for k, v in dc.items()}, "input_size": list(size)},
    )
    if info.is_vit:
        attn = model.blocks[0].attn
        info.embed_dim, info.depth = int(model.embed_dim), len(model.blocks)
        info.num_heads = int(attn.num_heads)
        info.num_prefix_tokens = int(model.num_prefix_tokens)
        info.patch_size = tuple(model.patch_embed.patch_size)
        info.mlp_hidden = int(model.blocks[0].mlp.fc1.out_features)
        info.block_dims = [info.embed_dim] * info.depth
    elif isinstance(model, SwinTransformer):
        _describe_swin(model, info)
    return info


def _describe_swin(model: nn.Module, info: BackboneInfo) -> None:
    """Fill the Swin facts: every stage's blocks, dims, heads and windows at the configured input size."""
    info.is_swin = True
    stages = []
    for stage in model.layers:
        b = stage.blocks[0]
        a = b.attn
        merge = not isinstance(stage.downsample, nn.Identity)
        stages.append({"depth": len(stage.blocks), "in_dim": int(stage.dim), "dim": int(b.dim),
                       "heads": int(a.num_heads), "attn_dim": int(a.qkv.out_features // 3),
                       "mlp_hidden": int(b.mlp.fc1.out_features),
                       "resolution": [int(r) for r in stage.output_resolution],
                       "window": [int(w) for w in b.window_size], "downsample": merge})
    info.swin_stages = stages
    info.block_dims = [s["dim"] for s in stages for _ in range(s["depth"])]
    info.depth = len(info.block_dims)
    info.embed_dim, info.num_heads = stages[0]["dim"], stages[0]["heads"]
    info.mlp_hidden = stages[0]["mlp_hidden"]
    info.patch_size = tuple(int(p) for p in model.patch_embed.patch_size)


def count_params(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def set_head(model: nn.Module, init: str) -> nn.Module:
    """Re-initialise the classifier created by timm for a new task; returns the head module."""
    head = model.get_classifier()
    if not isinstance(head, nn.Linear):
        raise ConfigError(f"backbone head is {type(head).__name__}, expected Linear")
    with torch.no_grad():
        if init == "zeros":
            head.weight.zero_()
            head.bias.zero_()
        elif init == "vpt":
            nn.init.kaiming_normal_(head.weight, mode="fan_out")
            head.bias.fill_(-4.59511985013459)  # -log((1 - 0.01) / 0.01)
        else:
            nn.init.trunc_normal_(head.weight, std=0.02)
            head.bias.zero_()
    return head
