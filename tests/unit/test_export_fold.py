"""Deploy forms: folded vs unfolded logits on real images, operator counts and MACs of the exported graphs."""
from __future__ import annotations

from collections import Counter

import pytest
import torch

from edgevp.export.fold import KVConstAttention, to_deploy

from ..conftest import tiny_model

D, DEPTH, TOKENS = 64, 6, 5  # timm test_vit at 32 px: 1 class token + 2×2 patches

CASES = {
    "linear": ("linear", {}),
    "lorvp": ("lorvp", {"rank": 2}),
    "lorvp_flm": ("lorvp", {"rank": 2, "mapping": "flm"}),
    "vpt_deep": ("vpt", {"num_tokens": 5, "deep": True}),
    "vpt_shallow": ("vpt", {"num_tokens": 5, "deep": False}),
    "vpt_proj": ("vpt", {"num_tokens": 3, "deep": True, "project": 16}),
    "vpt_condensed": ("vpt", {"num_tokens": 5, "tokens_per_layer": [5, 0, 2, 1, 0, 3]}),
    "e2vpt": ("e2vpt", {"num_tokens": 4, "num_kv": 3, "segments": 4}),
    "e2vpt_masked": ("e2vpt", {"num_tokens": 4, "num_kv": 3, "segments": 4, "share_kv": False}),
    "e2vpt_condensed": ("e2vpt", {"num_tokens": 4, "num_kv": 2, "tokens_per_layer": [4, 0, 1, 2, 0, 3]}),
}


def _trained_like(case: str) -> torch.nn.Module:
    """A tiny model whose prompts are far from their init, so that folding mistakes show in the logits."""
    method, prompt = CASES[case]
    model = tiny_model(method, prompt).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.method.named_parameters():
            if name in ("B", "A") or name.startswith(("prompts", "kv_")):
                p.copy_(torch.randn(p.shape, generator=gen) * (0.3 if name == "B" else 1.0))
        if case == "e2vpt_masked":  # one token pruned, some segments of another zeroed
            model.method.token_mask[1] = 0.0
            model.method.segment_mask[2, :2] = 0.0
        if case == "lorvp_flm":
            model.method.label_map = torch.randperm(model.info.num_classes, generator=gen)[:10]
    return model


@pytest.mark.parametrize("case", CASES)
def test_folded_matches_unfolded_on_real_images(case, digits_batch):
    model = _trained_like(case)
    with torch.no_grad():
        ref = model(digits_batch)
        deploy = to_deploy(model)
        report = deploy.report
        got = deploy(digits_batch)
        again = model(digits_batch)
    assert got.shape == ref.shape
    assert (got - ref).abs().max().item() <= 1e-5
    assert torch.equal(again, ref)  # the trained model itself is untouched
    assert not any(isinstance(m, type(model.method)) for m in deploy.modules())
    assert not any(isinstance(m, torch.nn.Dropout) and m.training for m in deploy.modules())
    if case != "linear":  # the prompts matter, so the agreement above is not trivial
        bare = model.detach_method() if case != "lorvp_flm" else None
        if bare is not None:
            with torch.no_grad():
                plain = bare((digits_batch - model.mean) / model.std)
            model.method.attach(model.backbone)
            assert (plain - ref).abs().max().item() > 1e-3
    assert report.method == CASES[case][0]


def test_fold_reports():
    r = to_deploy(_trained_like("lorvp")).report
    assert (r.pixel, r.pixel_reason, r.fixed_img_size) == ("pos_embed", "", True)
    r = to_deploy(_trained_like("lorvp_flm")).report
    assert r.label_map
    model = _trained_like("vpt_condensed")
    deploy = to_deploy(model)
    r = deploy.report
    assert (r.tokens, r.kv_columns) == ("kv", [5, 0, 2, 1, 0, 3])
    assert sum(isinstance(m, KVConstAttention) for m in deploy.modules()) == 4  # layers with 0 prompts unchanged
    r = to_deploy(_trained_like("e2vpt_condensed")).report
    assert r.kv_columns == [2 + n for n in [4, 0, 1, 2, 0, 3]]
    r = to_deploy(_trained_like("e2vpt_masked")).report
    assert r.kv_columns == [3 + 4] * DEPTH  # a zeroed token is still a key/value column (its key is LN1(0)W + b)
    r = to_deploy(_trained_like("vpt_shallow")).report
    assert r.tokens == "tokens"


def test_kv_fold_removes_prompt_tokens_from_the_sequence(digits_batch):
    deploy = to_deploy(_trained_like("vpt_deep"))
    lengths = []
    hooks = [b.register_forward_pre_hook(lambda m, a: lengths.append(a[0].shape[1])) for b in deploy.backbone.blocks]
    with torch.no_grad():
        deploy(digits_batch)
    for h in hooks:
        h.remove()
    assert lengths == [TOKENS] * DEPTH


@pytest.mark.parametrize("include_preprocess", [True, False])
def test_lorvp_fallbacks_on_a_cnn(include_preprocess, digits_batch):
    model = tiny_model("lorvp", {"rank": 2}, backbone="test_efficientnet").eval()
    with torch.no_grad():
        model.method.B.normal_(0, 0.3)
        ref = model(digits_batch)
        deploy = to_deploy(model, include_preprocess=include_preprocess)
        r = deploy.report
        x = digits_batch if include_preprocess else (digits_batch - model.mean) / model.std
        got = deploy(x)
    assert r.pixel == ("mean" if include_preprocess else "input_bias") and "conv patch embedding" in r.pixel_reason
    assert (got - ref).abs().max().item() <= 1e-5


def test_lorvp_vit_fold_without_preprocess(digits_batch):
    model = _trained_like("lorvp")
    with torch.no_grad():
        deploy = to_deploy(model, include_preprocess=False)
        r = deploy.report
        got = deploy((digits_batch - model.mean) / model.std)
        ref = model(digits_batch)
    assert r.pixel == "pos_embed" and deploy.input_bias is None and deploy.mean is None
    assert (got - ref).abs().max().item() <= 1e-5


# -- exported graphs ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Dynamo exports (opset 18) of the bare backbone and three deploy forms, by case name."""
    from edgevp.export.onnx import export_onnx

    d = tmp_path_factory.mktemp("onnx")
    paths = {}
    for case in ("linear", "lorvp", "vpt_condensed", "e2vpt_masked"):
        deploy = to_deploy(_trained_like(case))
        paths[case] = (d / f"{case}.onnx", deploy.report)
        export_onnx(deploy, paths[case][0], (3, 32, 32))
    return paths


def _ops(path) -> Counter:
    import onnx

    return Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def test_lorvp_vit_fold_keeps_the_bare_operator_counts(exported):
    bare, lorvp = _ops(exported["linear"][0]), _ops(exported["lorvp"][0])
    assert lorvp == bare
    assert sum(bare.values()) > 100


@pytest.mark.parametrize("case", ["vpt_condensed", "e2vpt_masked"])
def test_kv_fold_macs_are_bare_plus_attention_columns(exported, case):
    from edgevp.profile.onnx_macs import graph_cost

    bare = graph_cost(exported["linear"][0]).macs
    path, report = exported[case]
    folded = graph_cost(path)
    assert not folded.unknown
    # each extra key/value column costs one q·k and one attn·v product of length D for each of the TOKENS queries
    assert folded.macs - bare == sum(2 * TOKENS * D * c for c in report.kv_columns)
    assert folded.macs - bare > 0


@pytest.mark.parametrize("layout", [{"class_token": False, "global_pool": "avg"}, {"no_embed_class": True},
                                    {"reg_tokens": 2}])
def test_lorvp_pos_embed_fold_on_other_vit_layouts(layout, digits_batch):
    import timm

    from edgevp.backbone import describe
    from edgevp.config import BackboneConfig
    from edgevp.prompts.base import PromptedModel
    from edgevp.prompts.lorvp import LoRVP, LoRVPConfig

    torch.manual_seed(0)
    vit = timm.create_model("test_vit", img_size=32, num_classes=10, **layout)
    info = describe(vit, BackboneConfig(name="test_vit", weights="none", img_size=32))
    method = LoRVP(LoRVPConfig(rank=2), info)
    with torch.no_grad():
        method.B.normal_(0, 0.3)
    model = PromptedModel(vit, method, info).eval()
    deploy = to_deploy(model)
    with torch.no_grad():
        assert (deploy(digits_batch) - model(digits_batch)).abs().max().item() <= 1e-5
    assert deploy.report.pixel == "pos_embed"


def test_dynamo_opset17_is_down_converted_and_runs(tmp_path, digits_batch):
    from edgevp.export.onnx import export_onnx, run_ort, session

    model = _trained_like("e2vpt_masked")
    path = tmp_path / "m17.onnx"
    produced = export_onnx(to_deploy(model), path, (3, 32, 32), opset=17)
    assert produced["opset"] == 17 and produced["exporter"] == "dynamo"
    with torch.no_grad():
        ref = model(digits_batch).numpy()
    assert abs(run_ort(session(path), digits_batch.numpy(), 3) - ref).max() <= 1e-5  # batch 3: the batch axis is free


def test_pixel_prompts_fold_on_a_cnn_without_transformer_blocks(digits_batch):
    """A backbone with no `blocks` (a ResNet) takes LoR-VP's fold into the mean: nothing token-shaped is looked for."""
    model = tiny_model("lorvp", backbone="resnet18", img_size=32)
    with torch.no_grad():
        for p in model.method.parameters():
            p.normal_()
        deploy = to_deploy(model.eval())
        assert deploy.report.pixel == "mean" and deploy.report.tokens == "none"
        assert (deploy(digits_batch) - model(digits_batch)).abs().max() <= 1e-5
