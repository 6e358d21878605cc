"""Prompt methods on tiny timm ViTs: parameter formulas, attach/detach exactness, forward semantics, gradients."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from edgevp.prompts.lorvp import greedy_label_mapping
from edgevp.prompts.vpt import vpt_init_bound
from edgevp.registry import list_methods

from ..conftest import tiny_model

D, DEPTH, HEADS, C = 64, 6, 2, 10  # timm test_vit
HEAD = D * C + C

CASES = {
    "linear": ({}, 0),
    "vpt_deep": ({"num_tokens": 5, "deep": True}, DEPTH * 5 * D),
    "vpt_shallow": ({"num_tokens": 5, "deep": False}, 5 * D),
    "vpt_proj": ({"num_tokens": 3, "deep": True, "project": 16}, DEPTH * 3 * 16 + 16 * D + D),
    "vpt_condensed": ({"num_tokens": 5, "tokens_per_layer": [5, 0, 2, 1, 0, 3]}, 11 * D),
    "e2vpt": ({"num_tokens": 4, "num_kv": 3}, DEPTH * 4 * D + DEPTH * HEADS * 3 * (D // HEADS)),
    "e2vpt_unshared": ({"num_tokens": 4, "num_kv": 3, "share_kv": False}, DEPTH * 4 * D + 2 * DEPTH * HEADS * 3 * 32),
    "e2vpt_masks": ({"num_tokens": 4, "num_kv": 3, "train_masks": True}, DEPTH * 4 * D + DEPTH * 2 * 3 * 32 + 4 + 4 * 16),
    "lorvp": ({"rank": 4}, 2 * 3 * 32 * 4),
}


def _method(case: str) -> str:
    return case.split("_")[0] if case != "linear" else "linear"


@pytest.mark.parametrize("case", CASES)
def test_trainable_params_match_formula(case):
    prompt, expected = CASES[case]
    model = tiny_model(_method(case), prompt)
    s = model.param_summary()
    assert s["prompt"] == expected
    assert s["trainable"] == expected + HEAD
    assert model.param_line().startswith(f"trainable params: {expected + HEAD:,} || all params: ")


@pytest.mark.parametrize("case", CASES)
def test_attach_detach_restores_backbone_bit_for_bit(case, digits_batch):
    prompt, _ = CASES[case]
    model = tiny_model(_method(case), prompt)
    bare = tiny_model("linear")  # same seed -> same backbone weights and head
    x = digits_batch
    with torch.no_grad():
        ref = bare(x)
        before = bare.backbone.state_dict()  # the same seed built the same backbone, never prompted
        prompted = model(x)
        model.detach_method()
        after = model.backbone.state_dict()
        out = model.backbone((x - model.mean) / model.std)
    assert list(before) == list(after) and all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(out, ref)
    if case not in ("linear", "lorvp"):  # lorvp starts at B=0, i.e. exactly the bare model
        assert not torch.allclose(prompted, ref)


@pytest.mark.parametrize("case", CASES)
def test_gradients_only_on_trainable_tensors(case, digits_batch):
    prompt, _ = CASES[case]
    model = tiny_model(_method(case), prompt).train()
    trainable = {id(p) for _, p in model.trainable_parameters()}
    F.cross_entropy(model(digits_batch), torch.arange(8) % C).backward()
    for name, p in model.named_parameters():
        if id(p) in trainable:
            assert p.grad is not None, name
        else:
            assert p.grad is None and not p.requires_grad, name
    if case == "lorvp":  # B = 0 at init, so only B gets a gradient at step 0 (dL/dA = B^T · ...)
        assert model.method.B.grad.abs().sum() > 0


TINY_PROMPTS = {"pad": {"size": 4}}  # the defaults fit 224 px; the tiny backbones take 32 px


@pytest.mark.parametrize("method", list_methods())
def test_save_load_round_trip(method, digits_batch):
    model = tiny_model(method, TINY_PROMPTS.get(method)).eval()
    with torch.no_grad():
        for _, p in model.trainable_parameters():
            p.add_(torch.randn_like(p) * 0.1)
    state = model.trainable_state()
    other = tiny_model(method, TINY_PROMPTS.get(method)).eval()
    other.load_trainable_state(state)
    with torch.no_grad():
        assert torch.equal(model(digits_batch), other(digits_batch))


def test_vpt_deep_replaces_prompts_at_every_block(digits_batch):
    model = tiny_model("vpt", {"num_tokens": 3, "deep": True}).eval()
    seen = {}
    for i, wrapper in enumerate(model.backbone.blocks):
        wrapper.block.register_forward_pre_hook(lambda m, args, i=i: seen.__setitem__(i, args[0].detach().clone()))
    with torch.no_grad():
        model(digits_batch)
    npre = model.info.num_prefix_tokens
    grid = (32 // 16) ** 2
    for i in range(DEPTH):
        x = seen[i]
        assert x.shape[1] == npre + 3 + grid
        # every block sees exactly its own fresh prompts: the previous block's prompt outputs were discarded
        assert torch.equal(x[:, npre:npre + 3], model.method.prompts[i].expand(len(x), -1, -1))


def test_vpt_shallow_prompts_evolve_and_are_stripped(digits_batch):
    model = tiny_model("vpt", {"num_tokens": 3, "deep": False}).eval()
    seen = {}
    for i, wrapper in enumerate(model.backbone.blocks):
        wrapper.block.register_forward_pre_hook(lambda m, args, i=i: seen.__setitem__(i, args[0].detach().clone()))
    norm_in = {}
    model.backbone.norm.register_forward_pre_hook(lambda m, args: norm_in.__setitem__(0, args[0]))
    with torch.no_grad():
        model(digits_batch)
    p0 = model.method.prompts[0].expand(8, -1, -1)
    assert torch.equal(seen[0][:, 1:4], p0)
    assert not torch.allclose(seen[1][:, 1:4], p0)  # block 1 sees block 0's prompt outputs (input-dependent)
    assert norm_in[0].shape[1] == 1 + 4  # prompts stripped before the final norm and pooling


def test_vpt_init_bound():
    model = tiny_model("vpt", {"num_tokens": 50, "deep": True})
    bound = math.sqrt(6.0 / (3 * 16 * 16 + D))
    assert vpt_init_bound(model.info) == pytest.approx(bound)
    p = torch.cat(list(model.method.prompts))
    assert p.abs().max() <= bound and p.abs().max() > 0.9 * bound


def test_vpt_prompt_dropout_only_in_training(digits_batch):
    model = tiny_model("vpt", {"num_tokens": 4, "dropout": 0.5})
    with torch.no_grad():
        a, b = model.eval()(digits_batch), model.eval()(digits_batch)
        torch.manual_seed(0)
        c = model.train()(digits_batch)
    assert torch.equal(a, b) and not torch.allclose(a, c)


def _reference_kv_attention(attn, x, pk, pv):
    B, N, Cd = x.shape
    qkv = attn.qkv(x).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    k = torch.cat([pk.expand(B, -1, -1, -1), k], dim=2)
    v = torch.cat([pv.expand(B, -1, -1, -1), v], dim=2)
    w = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(attn.head_dim), dim=-1)
    assert w.shape[-1] == N + pk.shape[-2] and w.shape[-2] == N  # keys extended, queries not
    return attn.proj((w @ v).transpose(1, 2).reshape(B, N, Cd))


@pytest.mark.parametrize("share", [True, False])
@pytest.mark.parametrize("fused", [True, False])
def test_e2vpt_kv_prompts_extend_keys_and_values(share, fused):
    model = tiny_model("e2vpt", {"num_tokens": 2, "num_kv": 3, "share_kv": share}).eval()
    wrapper = model.backbone.blocks[2].block.attn
    wrapper.attn.fused_attn = fused
    x = torch.randn(4, 7, D)
    pk, pv = model.method.constant_kv(2)
    assert pk.shape == (HEADS, 3, D // HEADS)
    assert (pk is pv) == share
    with torch.no_grad():
        torch.testing.assert_close(wrapper(x), _reference_kv_attention(wrapper.attn, x, pk, pv), rtol=1e-5, atol=1e-6)


def test_e2vpt_masks_are_inert_by_default_and_strided(digits_batch):
    model = tiny_model("e2vpt", {"num_tokens": 3, "num_kv": 1, "dropout": 0.0}).eval()
    m = model.method
    assert not m.token_mask.requires_grad and torch.equal(m.layer_prompt(0), m.prompts[0])
    with torch.no_grad():
        m.segment_mask[1, 5] = 0.0
        m.token_mask[2] = 0.0
    p = m.layer_prompt(3)
    zero_dims = [d for d in range(D) if d % 16 == 5]
    assert torch.all(p[1, zero_dims] == 0) and torch.count_nonzero(p[1]) == D - len(zero_dims)
    assert torch.all(p[2] == 0) and torch.equal(p[0], m.prompts[3][0])


def test_e2vpt_kaiming_init_bound():
    m = tiny_model("e2vpt", {"num_kv": 5}).method
    bound = math.sqrt(6.0 / (5 * (D // HEADS)))
    assert m.kv_k.abs().max() <= bound and m.kv_k.abs().max() > 0.9 * bound


def test_lorvp_init_and_pixel_space_add(digits_batch):
    model = tiny_model("lorvp", {"rank": 3}).eval()
    m = model.method
    assert m.B.shape == (3, 32, 3) and m.A.shape == (3, 3, 32)
    assert torch.all(m.B == 0)
    assert m.A.std().item() == pytest.approx(0.01, rel=0.15)
    with torch.no_grad():
        m.B.normal_()
        prompt = torch.stack([m.B[c] @ m.A[c] for c in range(3)])
        expected = model.backbone(((digits_batch + prompt) - model.mean) / model.std)  # add, then normalise
        torch.testing.assert_close(model(digits_batch), expected)


def test_greedy_label_mapping_is_one_to_one():
    counts = torch.tensor([[5.0, 1, 0], [4, 9, 0], [0, 8, 2], [0, 0, 1]])
    mapping = greedy_label_mapping(counts)
    assert mapping.tolist() == [0, 1, 2]  # (1,1)=9 first, then (0,0)=5, then (2,2)=2
    assert len(set(mapping.tolist())) == 3


def test_lorvp_label_mapping_on_pretrained_classifier(digits_batch):
    from torch.utils.data import DataLoader, TensorDataset

    model = tiny_model("lorvp", {"mapping": "flm"}).eval()  # keeps test_vit's 1000-class head, frozen
    assert not model.method.new_head and model.param_summary()["trainable"] == 2 * 3 * 32 * 4
    ds = TensorDataset(digits_batch, torch.arange(8) % 4)
    ds.classes = ["a", "b", "c", "d"]
    model.method.before_epoch(model, DataLoader(ds, batch_size=4), 0)
    mapping = model.method.label_map
    assert mapping.shape == (4,) and len(set(mapping.tolist())) == 4
    with torch.no_grad():
        full = model.backbone((digits_batch - model.mean) / model.std)
        torch.testing.assert_close(model(digits_batch), full[:, mapping])


def test_token_methods_refuse_cnn_backbones():
    from edgevp.errors import ConfigError

    with pytest.raises(ConfigError, match="VisionTransformer"):
        tiny_model("vpt", backbone="test_efficientnet", img_size=32)


def test_lorvp_and_linear_work_on_cnn(digits_batch):
    for method in ("lorvp", "linear"):
        model = tiny_model(method, backbone="test_efficientnet", img_size=32).eval()
        with torch.no_grad():
            assert model(digits_batch).shape == (8, C)


# -- per-sample prompt dropout and VPT's projection init (issue 9) ----------------------------------------------
def _same_image_batch(digits_batch, n: int = 4) -> torch.Tensor:
    return digits_batch[:1].expand(n, -1, -1, -1).contiguous()


def _rows_differ(y: torch.Tensor) -> bool:
    return all(not torch.allclose(y[i], y[j], atol=1e-5) for i in range(len(y)) for j in range(i + 1, len(y)))


@pytest.mark.parametrize("method,prompt", [
    ("vpt", {"num_tokens": 4, "deep": True, "dropout": 0.5}),
    ("e2vpt", {"num_tokens": 4, "num_kv": 3, "dropout": 0.5, "kv_dropout": 0.0}),
    ("e2vpt", {"num_tokens": 4, "num_kv": 3, "dropout": 0.0, "kv_dropout": 0.5}),
], ids=["vpt", "e2vpt_visual", "e2vpt_kv"])
def test_prompt_dropout_draws_a_mask_per_sample(method, prompt, digits_batch):
    model = tiny_model(method, prompt)
    x = _same_image_batch(digits_batch)
    with torch.no_grad():
        torch.manual_seed(0)
        train = model.train()(x)
        ev = model.eval()(x)
    assert _rows_differ(train), "identical images got the same prompt dropout mask"
    torch.testing.assert_close(ev, ev[:1].expand_as(ev), rtol=0, atol=1e-6)
    assert not model.backbone.training  # the frozen backbone stays in eval mode while the prompts train


def test_e2vpt_kv_dropout_is_per_sample_and_per_use():
    m = tiny_model("e2vpt", {"num_tokens": 2, "num_kv": 3, "dropout": 0.0, "kv_dropout": 0.5}).method.train()
    torch.manual_seed(0)
    pk, pv = m.kv_prompt(1, 4)
    assert pk.shape == (4, HEADS, 3, D // HEADS) and pv.shape == pk.shape
    assert all(not torch.equal(pk[0], pk[i]) for i in range(1, 4))
    assert not torch.equal(pk, pv)  # a shared key-value prompt still gets independent key and value masks
    m.eval()
    k, v = m.kv_prompt(1, 4)
    assert k.shape == (HEADS, 3, D // HEADS) and k is v


def test_vpt_projection_init():
    project = 8
    model = tiny_model("vpt", {"num_tokens": 50, "deep": True, "project": project})
    ph, pw = model.info.patch_size
    bound = math.sqrt(6.0 / (3 * ph * pw + project))
    assert vpt_init_bound(model.info, project) == pytest.approx(bound)
    p = torch.cat(list(model.method.prompts))
    assert p.shape == (DEPTH * 50, project)
    assert p.abs().max() <= bound and p.abs().max() > 0.98 * bound
    proj = model.method.proj
    assert proj.in_features == project and proj.out_features == D
    assert proj.bias.abs().max() > 0  # nn.Linear's default bias init is kept (the reference), not zeros
    assert proj.bias.abs().max() <= 1 / math.sqrt(project)
    assert proj.weight.std().item() == pytest.approx(math.sqrt(2.0 / D), rel=0.2)  # kaiming-normal, fan_out
