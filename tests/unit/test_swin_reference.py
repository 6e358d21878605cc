"""The switches to the reference implementations' Swin behaviour (docs/fidelity.md, S1 and S4).

`prompt.swin_pool: reference`: the final norm and average pool run over the image tokens *and* the last block's
prompt tokens. Checked against a forward written here from the spec, independently of edgevp.prompts.swin: per
window, the prompts prepended to the window's tokens with zero relative-position bias and no shift mask on their
rows and columns (E²VPT's key-value prompts as extra columns), their window outputs averaged per image, deep prompts
replaced at every block (shallow ones carried through patch merging by 4× concatenation), then the final norm, the
mean over image and prompt tokens and the head. Such a run has no deploy form: export and pack refuse it in one line.
`prompt.swin_init_bound: reference`: every stage's prompts drawn with the stage-0 bound.
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from edgevp.cli import app
from edgevp.cost import model_macs
from edgevp.errors import EXIT_USAGE, ConfigError
from edgevp.export.fold import to_deploy
from edgevp.model import load_run
from edgevp.runs import RunDir
from edgevp.train import fit

from ..conftest import tiny_config, tiny_model
from .test_swin import BLOCK_DIMS, SWIN, swin_model

runner = CliRunner()
TINY_VIT_RECIPE = Path(__file__).parents[2] / "recipes" / "tiny" / "vpt_deep.yaml"
CASES = {"vpt_deep": ("vpt", {"num_tokens": 3, "deep": True}),
         "vpt_shallow": ("vpt", {"num_tokens": 3, "deep": False}),
         "e2vpt": ("e2vpt", {"num_tokens": 3, "num_kv": 2, "segments": 4})}


# -- the reference forward, from the spec --------------------------------------------------------------------------
def _windows(x: torch.Tensor, m: int) -> torch.Tensor:
    """(B, H, W, C) -> (B, nW, m·m, C), windows in row-major order."""
    B, H, W, C = x.shape
    return x.view(B, H // m, m, W // m, m, C).permute(0, 1, 3, 2, 4, 5).reshape(B, -1, m * m, C)


def _merge_windows(w: torch.Tensor, H: int, W: int, m: int) -> torch.Tensor:
    B, C = w.shape[0], w.shape[-1]
    return w.view(B, H // m, W // m, m, m, C).permute(0, 1, 3, 2, 4, 5).reshape(B, H, W, C)


def _ref_block(blk: nn.Module, x: torch.Tensor, p: torch.Tensor, kv: torch.Tensor | None):
    """One Swin block on image tokens x (B, H, W, C) and prompt tokens p (B, n, C), one window at a time."""
    B, H, W, C = x.shape
    m, s = blk.window_size[0], blk.shift_size[0]
    a, h, n = blk.attn, blk.attn.num_heads, p.shape[1]
    N, mk = m * m, 0 if kv is None else kv.shape[1]
    table = a.relative_position_bias_table[a.relative_position_index.view(-1)]
    rel = table.view(N, N, h).permute(2, 0, 1)  # (h, N, N)
    y = blk.norm1(x)
    win = _windows(torch.roll(y, (-s, -s), (1, 2)) if s else y, m)
    pn = blk.norm1(p)
    outs, prompt_outs = torch.zeros_like(win), torch.zeros_like(p)
    for b in range(B):
        for w in range(win.shape[1]):
            seq = torch.cat([pn[b], win[b, w]])  # the image's prompts prepended to this window
            q, k, v = a.qkv(seq).view(n + N, 3, h, C // h).permute(1, 2, 0, 3)
            if kv is not None:
                k, v = torch.cat([kv, k], 1), torch.cat([kv, v], 1)
            bias = torch.zeros(h, n + N, mk + n + N, dtype=x.dtype)
            bias[:, n:, mk + n:] = rel + (blk.attn_mask[w] if blk.attn_mask is not None else 0)
            att = (q * (C // h) ** -0.5 @ k.transpose(-2, -1) + bias).softmax(-1)
            o = a.proj((att @ v).transpose(0, 1).reshape(n + N, C))
            outs[b, w] = o[n:]
            prompt_outs[b] += o[:n] / win.shape[1]  # the prompts' outputs averaged over the image's windows
    y = _merge_windows(outs, H, W, m)
    x = x + (torch.roll(y, (s, s), (1, 2)) if s else y)
    x = x + blk.mlp(blk.norm2(x))
    p = p + prompt_outs
    return x, p + blk.mlp(blk.norm2(p))


def reference_forward(model, images: torch.Tensor) -> torch.Tensor:
    """Logits of the prompted tiny Swin `model` computed from the spec with the prompts pooled."""
    bb, method = model.backbone, model.method
    deep = method.deep
    x = bb.patch_embed((images - model.mean) / model.std)
    p, layer = None, 0
    for stage in bb.layers:
        merge = stage.downsample.merge
        if not isinstance(merge, nn.Identity):
            x = merge(x)
            if not deep:  # a 2×2 neighbourhood of the same prompt vector
                p = merge.reduction(merge.norm(torch.cat([p] * 4, dim=-1)))
        for wrapped in stage.blocks:
            if deep or layer == 0:
                p = method.prompts[layer].unsqueeze(0).expand(x.shape[0], -1, -1)
            kv = method.kv_k[layer] if hasattr(method, "kv_k") else None
            x, p = _ref_block(wrapped.block, x, p, kv)
            layer += 1
    tokens = bb.norm.norm(torch.cat([x.flatten(1, 2), p], dim=1))
    return model.head(tokens.mean(1))


@pytest.mark.parametrize("case", CASES)
def test_reference_pooling_equals_the_spec_forward(case, digits_batch):
    method, prompt = CASES[case]
    pooled = swin_model(method, {**prompt, "swin_pool": "reference"}).double()
    default = swin_model(method, prompt).double()  # the same seed: the same backbone, head and prompts
    x = digits_batch[:3].double()
    with torch.no_grad():
        want = reference_forward(pooled, x)
        got, image_only = pooled(x), default(x)
    assert pooled.method.pool_prompts and not default.method.pool_prompts
    assert (got - want).abs().max() <= 1e-10  # float64 rounding
    assert (image_only - want).abs().max() > 1e-3  # the default pools the image tokens only: not the reference


def test_reference_pooling_macs_equal_the_onnx_graph(tmp_path):
    """The cost model counts the last block's prompt rows (projected, through the MLP) when they are pooled."""
    pytest.importorskip("onnx")
    from edgevp.export.onnx import export_onnx, simplify
    from edgevp.profile.onnx_macs import graph_cost

    model = swin_model("vpt", {"num_tokens": 3, "deep": True, "swin_pool": "reference"})
    extra = model.method.extra_tokens()
    assert extra.kept == [0] * 5 + [3]
    export_onnx(model, tmp_path / "m.onnx", (3, 32, 32), exporter="legacy")  # never exported by edgevp: any true graph
    simplify(tmp_path / "m.onnx")
    cost = graph_cost(tmp_path / "m.onnx")
    assert not cost.unknown and cost.macs == model_macs(model.info, 10, extra).total
    assert cost.macs > model_macs(model.info, 10, swin_model("vpt", CASES["vpt_deep"][1]).method.extra_tokens()).total


# -- the init bound ------------------------------------------------------------------------------------------------
def _bound(dim: int) -> float:
    return math.sqrt(6.0 / (3 * 4 * 4 + dim))  # VPT's bound for patch 4


@pytest.mark.parametrize("method", ["vpt", "e2vpt"])
@pytest.mark.parametrize("init", ["stage", "reference"])
def test_init_bound_per_stage_or_stage_zero(method, init):
    prompt = {"num_tokens": 400, "swin_init_bound": init}
    if method == "e2vpt":
        prompt.update(num_kv=1, segments=4)
    model = swin_model(method, prompt, randomize=False)
    want = [_bound(BLOCK_DIMS[0] if init == "reference" else d) for d in BLOCK_DIMS]
    got = [p.detach().abs().max().item() for p in model.method.prompts]
    for g, w in zip(got, want):  # ≥ 6400 draws per block: the max is within 1% of the bound
        assert 0.99 * w <= g <= w, (got, want)
    assert _bound(BLOCK_DIMS[-1]) < 0.99 * _bound(BLOCK_DIMS[0])  # the two settings can be told apart


def test_swin_switches_are_refused_on_a_vit():
    for key, value in (("swin_pool", "reference"), ("swin_init_bound", "reference")):
        with pytest.raises(ConfigError, match=f"prompt.{key}={value} applies to Swin backbones only"):
            tiny_model("vpt", {"num_tokens": 2, key: value})
    with pytest.raises(ConfigError, match="applies to Swin backbones only"):
        tiny_model("e2vpt", {"num_tokens": 2, "swin_pool": "reference"})
    tiny_model("vpt", {"num_tokens": 2, "swin_pool": "image", "swin_init_bound": "stage"})  # the defaults are fine


def test_a_vit_run_with_a_swin_switch_is_refused_before_training(tmp_path):
    out = tmp_path / "run"
    r = runner.invoke(app, ["train", str(TINY_VIT_RECIPE), "-o", str(out), "-s", "prompt.swin_pool=reference"])
    line = r.output.strip()
    assert r.exit_code == EXIT_USAGE and "applies to Swin backbones only" in line and len(line.splitlines()) == 1, line
    assert not (out / "manifest.json").exists()


# -- a trained reference-pooled run: its record, and export / pack refuse it ---------------------------------------
@pytest.fixture(scope="module")
def pooled_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("swin_reference") / "run"
    fit(tiny_config("vpt", {"num_tokens": 2, "deep": True, "swin_pool": "reference", "swin_init_bound": "reference"},
                    backbone=SWIN, train={"epochs": 1}), out=out)
    return out


def test_the_switches_round_trip_through_the_run_record(pooled_run):
    cfg = RunDir(pooled_run).config()
    assert (cfg.prompt.swin_pool, cfg.prompt.swin_init_bound) == ("reference", "reference")
    text = (pooled_run / "config.yaml").read_text()
    assert "swin_pool: reference" in text and "swin_init_bound: reference" in text
    _, model, _ = load_run(pooled_run)
    assert model.method.pool_prompts
    with torch.no_grad():
        x = torch.rand(2, 3, 32, 32)
        assert (model(x) - reference_forward(model, x)).abs().max() <= 1e-4  # float32 this time


def test_fold_refuses_reference_pooling():
    with pytest.raises(ConfigError, match=r"swin_pool=reference.*retrain with the default prompt.swin_pool=image"):
        to_deploy(swin_model("e2vpt", {**CASES["e2vpt"][1], "swin_pool": "reference"}))


@pytest.mark.parametrize("command", ["export", "pack"])
def test_export_and_pack_refuse_a_reference_pooled_run_in_one_line(command, pooled_run, tmp_path):
    out = tmp_path / "out"
    r = runner.invoke(app, [command, str(pooled_run), "-o", str(out)])
    line = r.output.strip()
    assert r.exit_code == EXIT_USAGE, line
    assert "Traceback" not in line and len(line.splitlines()) == 1, line
    assert "prompt.swin_pool=reference" in line and "retrain with the default prompt.swin_pool=image" in line
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and not p.name.startswith(".edgevp.lock")]
    assert not (pooled_run / "export").exists()
