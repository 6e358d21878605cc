"""VPT and E²VPT on a tiny random-init timm Swin Transformer: parameters, attach/detach, the prompted window attention's
semantics, the patch-merge carry, folding into constant keys/values, analytic vs graph MACs, training and condensation."""
from __future__ import annotations

import json

import pytest
import torch
from timm.models import register_model
from timm.models.swin_transformer import _create_swin_transformer

from edgevp.condense.pc import PCOptions, condense_pc
from edgevp.cost import model_macs, swin_macs, vit_macs
from edgevp.errors import ConfigError
from edgevp.export.fold import to_deploy
from edgevp.prompts.swin import (SwinKVConstAttention, SwinPromptBlock, merge_rows, swin_block, transformer_blocks,
                                 window_attention)
from edgevp.runs import RunDir
from edgevp.train import fit

from ..conftest import tiny_config, tiny_model

SWIN = "edgevp_test_swin"  # 32 px, patch 4, window 2: stages of 8×8 (16 windows, shifted), 4×4 (4), 2×2 (1) tokens
DIMS, HEADS, DEPTHS = (16, 32, 64), (1, 2, 4), (2, 2, 2)


@register_model
def edgevp_test_swin(pretrained=False, **kwargs):
    args = dict(patch_size=4, window_size=2, embed_dim=DIMS[0], depths=DEPTHS, num_heads=HEADS,
                pretrained_cfg={"input_size": (3, 32, 32), "num_classes": 10})
    return _create_swin_transformer(SWIN, pretrained=pretrained, **dict(args, **kwargs))


def swin_model(method: str = "linear", prompt: dict | None = None, randomize: bool = True):
    model = tiny_model(method, prompt, backbone=SWIN).eval()
    if randomize:  # prompts far from their init, so that mistakes show
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for name, p in model.method.named_parameters():
                if name.startswith(("prompts", "kv_")):
                    p.copy_(torch.randn(p.shape, generator=gen))
    return model


BLOCK_DIMS = [d for d, n in zip(DIMS, DEPTHS) for _ in range(n)]


def test_describe_fills_the_swin_facts():
    info = swin_model().info
    assert info.is_swin and not info.is_vit and info.depth == 6 and info.block_dims == BLOCK_DIMS
    assert [s["resolution"] for s in info.swin_stages] == [[8, 8], [4, 4], [2, 2]]
    assert [s["window"] for s in info.swin_stages] == [[2, 2]] * 3
    assert [s["downsample"] for s in info.swin_stages] == [False, True, True]


def test_parameter_counts_match_the_formulas():
    n, n_kv = 3, 2
    deep = swin_model("vpt", {"num_tokens": n, "deep": True})
    assert deep.method.prompt_param_count() == n * sum(BLOCK_DIMS)
    assert [tuple(p.shape) for p in deep.method.prompts] == [(n, d) for d in BLOCK_DIMS]
    assert swin_model("vpt", {"num_tokens": n, "deep": False}).method.prompt_param_count() == n * DIMS[0]
    e2 = swin_model("e2vpt", {"num_tokens": n, "num_kv": n_kv, "segments": 4, "train_masks": True})
    kv = n_kv * sum(BLOCK_DIMS)  # (heads, n_kv, head_dim) per block: n_kv · dim
    assert e2.method.prompt_param_count() == n * sum(BLOCK_DIMS) + kv + n + n * 4
    assert [tuple(p.shape) for p in e2.method.kv_k] == [(h, n_kv, d // h) for d, h in
                                                         zip(BLOCK_DIMS, [h for h, k in zip(HEADS, DEPTHS)
                                                                          for _ in range(k)])]


def test_other_backbones_get_one_clear_line():
    with pytest.raises(ConfigError, match="needs a timm VisionTransformer or SwinTransformer backbone"):
        tiny_model("vpt", {"num_tokens": 2}, backbone="test_resnet")
    with pytest.raises(ConfigError, match="project is not supported on a Swin"):
        tiny_model("vpt", {"num_tokens": 2, "project": 8}, backbone=SWIN)


@pytest.mark.parametrize("method,prompt", [("vpt", {"num_tokens": 3, "deep": False}),
                                           ("e2vpt", {"num_tokens": 3, "num_kv": 2, "segments": 4})])
def test_attach_detach_restores_the_backbone_bit_for_bit(method, prompt, digits_batch):
    model = swin_model(method, prompt)
    plain = swin_model("linear")  # same seed: the same backbone and head
    types = [type(m) for m in plain.backbone.modules()]
    assert any(isinstance(m, SwinPromptBlock) for m in model.backbone.modules())
    bare = model.detach_method()
    assert [type(m) for m in bare.modules()] == types
    assert all(torch.equal(a, b) for a, b in zip(bare.state_dict().values(), plain.backbone.state_dict().values()))
    with torch.no_grad():
        x = (digits_batch - plain.mean) / plain.std
        assert torch.equal(bare(x), plain.backbone(x))


def test_no_prompts_is_the_bare_swin(digits_batch):
    """The re-implemented prompted block (window attention, shift, mask, merge, exit) equals timm's with no prompt."""
    model, plain = swin_model("vpt", {"num_tokens": 0}), swin_model("linear")
    with torch.no_grad():
        assert (model(digits_batch) - plain(digits_batch)).abs().max() <= 1e-6


def _manual_window_attention(a, windows, mask, rows, pk):
    """Per window, plain attention over [key/value prompts; prompts; window tokens] with an explicit bias matrix:
    relative-position bias and shift mask among the window tokens only. Returns (windows out, per-window prompt out)."""
    bw, N, C = windows.shape
    B, n, _ = rows.shape
    nw = bw // B
    h, m = a.num_heads, pk.shape[1]
    rel = a._get_rel_pos_bias()[0]  # (h, N, N)
    outs, prompt_outs = [], []
    for i in range(bw):
        seq = torch.cat([rows[i // nw], windows[i]])  # (n + N, C): the prompts prepended to this window
        q, k, v = a.qkv(seq).reshape(n + N, 3, h, -1).permute(1, 2, 0, 3)  # (h, n + N, hd)
        k, v = torch.cat([pk, k], 1), torch.cat([pk, v], 1)
        bias = torch.zeros(h, n + N, m + n + N)
        bias[:, n:, m + n:] = rel + (mask[i % nw] if mask is not None else 0)
        out = ((q * a.scale) @ k.transpose(-2, -1) + bias).softmax(-1) @ v
        out = a.proj(out.transpose(0, 1).reshape(n + N, -1))
        outs.append(out[n:])
        prompt_outs.append(out[:n])
    return torch.stack(outs), torch.stack(prompt_outs).view(B, nw, n, C)


def test_prompted_window_attention_semantics():
    """Prompts prepended to every window, zero bias and no mask on their rows and columns, key/value prompts as extra
    columns, and the prompt rows averaged over the windows of each sample (per sample, not over the batch)."""
    model = swin_model("linear")
    block = model.backbone.layers[0].blocks[1]  # shifted: 16 windows with a mask
    a = block.attn
    assert block.attn_mask is not None
    with torch.no_grad():
        a.relative_position_bias_table.mul_(50)  # a large bias: a prompt column that got it would show
        gen = torch.Generator().manual_seed(1)
        windows = torch.randn(2 * 16, 4, DIMS[0], generator=gen)
        rows = torch.randn(2, 3, DIMS[0], generator=gen)  # different prompt states per sample
        pk = torch.randn(1, 2, DIMS[0], generator=gen)
        got, got_rows = window_attention(a, windows, block.attn_mask, rows, pk, pk)
        want, want_rows = _manual_window_attention(a, windows, block.attn_mask, rows, pk)
    assert (got - want).abs().max() <= 1e-5
    assert (got_rows - want_rows.mean(1)).abs().max() <= 1e-5  # mean over windows, per sample
    assert (want_rows[0].mean(0) - want_rows[1].mean(0)).abs().max() > 1e-3  # the samples differ: no batch mean


def test_patch_merge_carries_the_prompt_by_4x_concatenation():
    merge = swin_model("linear").backbone.layers[1].downsample
    p = torch.randn(2, 3, DIMS[0])
    with torch.no_grad():
        got = merge_rows(merge, p)
        for j in range(3):  # a 2×2 neighbourhood made of the prompt vector merges to the same vector
            grid = p[:, j, None, None, :].expand(-1, 2, 2, -1)
            assert (merge(grid)[:, 0, 0] - got[:, j]).abs().max() <= 1e-6


def test_shallow_prompts_flow_through_blocks_and_merges_and_leave_before_pooling(digits_batch):
    model = swin_model("vpt", {"num_tokens": 3, "deep": False})
    seen = []
    for stage in model.backbone.layers:
        stage.downsample.register_forward_hook(lambda m, i, o: seen.append(("merge", None if o[1] is None
                                                                            else tuple(o[1].shape))))
        for b in stage.blocks:
            b.register_forward_hook(lambda m, i, o: seen.append(("block", None if o[1] is None else tuple(o[1].shape))))
    with torch.no_grad():
        model(digits_batch[:2])
    assert seen == [("merge", None), ("block", (2, 3, 16)), ("block", (2, 3, 16)), ("merge", (2, 3, 32)),
                    ("block", (2, 3, 32)), ("block", (2, 3, 32)), ("merge", (2, 3, 64)), ("block", (2, 3, 64)),
                    ("block", None)]  # the last block's prompt rows are dropped: the final norm and pool never see them
    # the block's prompted forward equals timm's for the image tokens when the prompts are cut off from them
    block = model.backbone.layers[0].blocks[0].block
    x = torch.randn(2, 8, 8, DIMS[0])
    with torch.no_grad():
        assert (swin_block(block, x)[0] - block(x)).abs().max() <= 1e-5


def test_deep_prompts_replace_the_previous_set(digits_batch):
    """Block l's output depends on block l-1's prompts only through the image tokens: set the rows a block receives to
    anything and the deep block's output is unchanged."""
    model = swin_model("vpt", {"num_tokens": 2, "deep": True})
    wrapper = model.backbone.layers[1].blocks[1]
    x = torch.randn(2, 4, 4, DIMS[1])
    with torch.no_grad():
        a = wrapper((x, None))[0]
        b = wrapper((x, torch.randn(2, 2, DIMS[1])))[0]
    assert torch.equal(a, b)


CASES = {"vpt_deep": ("vpt", {"num_tokens": 3, "deep": True}),
         "vpt_condensed": ("vpt", {"num_tokens": 3, "tokens_per_layer": [3, 0, 1, 2, 0, 3]}),
         "e2vpt": ("e2vpt", {"num_tokens": 3, "num_kv": 2, "segments": 4}),
         "e2vpt_unshared": ("e2vpt", {"num_tokens": 3, "num_kv": 2, "segments": 4, "share_kv": False})}


@pytest.mark.parametrize("case", CASES)
def test_folded_matches_unfolded(case, digits_batch):
    model = swin_model(*CASES[case])
    with torch.no_grad():
        ref = model(digits_batch)
        deploy = to_deploy(model)
        got = deploy(digits_batch)
        bare = swin_model("linear")(digits_batch)
    assert (got - ref).abs().max() <= 1e-5
    assert (ref - bare).abs().max() > 1e-3  # the prompts matter
    consts = [b.attn for b in transformer_blocks(deploy.backbone)]
    kv = [m.pk.shape[1] if isinstance(m, SwinKVConstAttention) else 0 for m in consts]
    assert kv == deploy.report.kv_columns and deploy.report.tokens == "kv"
    if case == "vpt_condensed":
        assert kv == [3, 0, 1, 2, 0, 3]
    assert not any(isinstance(m, SwinPromptBlock) for m in deploy.modules())


def test_shallow_has_no_deploy_form_yet():
    with pytest.raises(ConfigError, match="VPT-shallow on a Swin"):
        to_deploy(swin_model("vpt", {"num_tokens": 2, "deep": False}))


def test_analytic_macs_by_hand():
    info = swin_model().info
    n, kv = 3, 2
    extra = [(n, n + kv)] * 6
    base = model_macs(info, 10).total
    assert vit_macs(info, 10).total == base == swin_macs(info, 10).total  # vit_macs dispatches (condensation uses it)
    # deep (rows replaced after each block): per block, qkv of the n rows once + n rows and n + kv columns per window
    stage_windows = [16, 16, 4, 4, 1, 1]
    heads_dims = BLOCK_DIMS
    added = sum(3 * n * d * d + 2 * w * ((4 + n) * (4 + n + kv) - 16) * d for w, d in zip(stage_windows, heads_dims))
    assert model_macs(info, 10, extra).total - base == added
    shallow = swin_model("vpt", {"num_tokens": n, "deep": False})
    ex = shallow.method.extra_tokens()
    assert ex.kept == [n] * 5 + [0] and ex.merged == [0, n, n]


@pytest.mark.parametrize("case,fold", [("shallow", False), ("e2vpt", True)])
def test_analytic_macs_equal_the_onnx_graph(case, fold, tmp_path):
    pytest.importorskip("onnx")
    from edgevp.export.onnx import export_onnx, run_ort, session, simplify
    from edgevp.profile.onnx_macs import graph_cost

    model = swin_model(*({"shallow": ("vpt", {"num_tokens": 3, "deep": False})} | CASES)[case])
    module = to_deploy(model) if fold else model
    # the folded form is what `edgevp export` writes (its exporter, dynamo); VPT-shallow on Swin is never exported, so
    # its graph only has to be a true one: the TorchScript exporter writes it in a tenth of the time
    export_onnx(module, tmp_path / "m.onnx", (3, 32, 32), exporter="dynamo" if fold else "legacy")
    simplify(tmp_path / "m.onnx")
    cost = graph_cost(tmp_path / "m.onnx")
    extra = model.method.extra_tokens()
    if fold:
        extra = [(0, kv) for _, kv in extra]
    assert not cost.unknown and cost.macs == model_macs(model.info, 10, extra).total
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert abs(run_ort(session(tmp_path / "m.onnx"), x.numpy(), 2) - model(x).numpy()).max() <= 1e-4


@pytest.fixture(scope="module")
def swin_vpt_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("swin") / "vpt"
    fit(tiny_config("vpt", {"num_tokens": 3, "deep": True}, backbone=SWIN,
                    train={"epochs": 3, "lr": 0.01}), out=out)
    return out


def test_training_loss_falls_and_macs_are_recorded(swin_vpt_run):
    run = RunDir(swin_vpt_run)
    losses = [json.loads(line)["train_loss"] for line in (swin_vpt_run / "metrics.jsonl").read_text().splitlines()
              if "train_loss" in line]
    assert losses[-1] < losses[0]
    info = run.manifest()["train_info"]
    assert info["macs"] > info["bare_macs"] > 0


def test_prompt_condensation_on_swin(swin_vpt_run, tmp_path):
    report = condense_pc(swin_vpt_run, tmp_path / "pc", PCOptions(keep=0.5, finetune_epochs=1))
    counts = report["counts"] if "counts" in report else None
    from edgevp.model import load_run

    _, small, _ = load_run(tmp_path / "pc")
    assert sum(small.method.prompt_units()) == 9  # half of 3 × 6
    if counts is not None:
        assert list(counts) == small.method.prompt_units()
    with torch.no_grad():
        x = torch.rand(2, 3, 32, 32)
        assert (to_deploy(small)(x) - small(x)).abs().max() <= 1e-5
    assert model_macs(small.info, 10, small.method.extra_tokens()).total < \
        model_macs(small.info, 10, [(3, 3)] * 6).total


def test_e2vpt_token_pruning_on_swin(tmp_path):
    """E²VPT pruning runs on Swin through the same hooks: pruned tokens leave every block, MACs fall, the fold holds."""
    from edgevp.condense.e2vpt_prune import E2VPTPruneOptions, condense_e2vpt
    from edgevp.model import load_run

    src = tmp_path / "e2vpt"
    fit(tiny_config("e2vpt", {"num_tokens": 4, "num_kv": 2, "segments": 4}, backbone=SWIN,
                    train={"epochs": 1, "lr": 0.01}), out=src)
    report = condense_e2vpt(src, tmp_path / "pruned", E2VPTPruneOptions(token_budgets=[50], segment_budgets=[0],
                                                                         finetune_epochs=1))
    assert report["kept"] == 2 and report["macs"]["after"] < report["macs"]["before"]
    _, small, _ = load_run(tmp_path / "pruned")
    assert small.method.prompt_units() == [2] * 6
    assert report["macs"]["after"] == model_macs(small.info, 10, small.method.extra_tokens()).total
    with torch.no_grad():
        x = torch.rand(2, 3, 32, 32)
        assert (to_deploy(small)(x) - small(x)).abs().max() <= 1e-5
