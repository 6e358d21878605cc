"""Prompt Condensation and E²VPT pruning on tiny ViTs: exact selection, real removal, exactness, CLI errors."""
from __future__ import annotations

import hashlib
import json

import pytest
import torch
from typer.testing import CliRunner

from edgevp.cli import app
from edgevp.condense.e2vpt_prune import E2VPTPruneOptions, condense_e2vpt, prune_plan, segment_prune_counts, token_prune_counts
from edgevp.condense.pc import PCOptions, condense_pc, condensed_state, finetune_config
from edgevp.condense.scores import gate_scores, mask_scores
from edgevp.condense.select import count_for_budget, global_order, keep_masks
from edgevp.cost import vit_macs
from edgevp.data import make_loader
from edgevp.model import build_model, load_run
from edgevp.runs import RunDir
from edgevp.data import load_data
from edgevp.train import fit

from ..conftest import tiny_config

D, DEPTH = 64, 6


@pytest.fixture(scope="module")
def vpt_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("src") / "vpt"
    fit(tiny_config("vpt", {"num_tokens": 5}, train={"epochs": 2, "lr": 0.01}), out=out)
    return out


@pytest.fixture(scope="module")
def e2vpt_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("src") / "e2vpt"
    fit(tiny_config("e2vpt", {"num_tokens": 5, "num_kv": 2, "dropout": 0.0}, train={"epochs": 2, "lr": 0.01}), out=out)
    return out


def _digest(path):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.rglob("*")) if p.is_file()}


def test_global_top_k_is_exact_and_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    scores = [torch.rand(n, generator=g) for n in (5, 0, 3, 7, 1)]
    for k in range(0, 17):
        masks = keep_masks(scores, k, "global")
        assert sum(int(m.sum()) for m in masks) == k
        flat = sorted(((float(s), l, i) for l, layer in enumerate(scores) for i, s in enumerate(layer)), reverse=True)
        brute = {(l, i) for _, l, i in flat[:k]}
        assert {(l, i) for l, m in enumerate(masks) for i in torch.nonzero(m).flatten().tolist()} == brute
    assert global_order(scores)[0] == max(((l, i) for l, s in enumerate(scores) for i in range(len(s))),
                                          key=lambda li: scores[li[0]][li[1]])


@pytest.mark.parametrize("ranking", ["layer", "random"])
def test_per_layer_and_random_counts_add_up(ranking):
    scores = [torch.arange(4.0), torch.arange(4.0), torch.arange(4.0)]
    masks = keep_masks(scores, 7, ranking, seed=1)
    assert sum(int(m.sum()) for m in masks) == 7
    if ranking == "layer":
        assert [int(m.sum()) for m in masks] == [3, 2, 2] and all(m[-1] for m in masks)  # the top of every layer


def test_budget_picks_the_largest_k_that_fits():
    scores = [torch.tensor([3.0, 2.0]), torch.tensor([1.0])]
    cost = lambda counts: 100 + 10 * sum(counts)  # noqa: E731
    assert count_for_budget(scores, cost, 125) == 2
    assert count_for_budget(scores, cost, 200) == 3
    with pytest.raises(ValueError):
        count_for_budget(scores, cost, 99)


def test_scores_are_reproducible_and_per_prompt(vpt_run):
    _, model, _ = load_run(vpt_run)
    cfg = RunDir(vpt_run).config()
    splits = load_data(cfg.data, model.info)
    splits.train.train = False
    a = gate_scores(model, make_loader(splits.train, 32), max_batches=2)
    b = gate_scores(model, make_loader(splits.train, 32), max_batches=2)
    assert [s.shape for s in a] == [(5,)] * DEPTH
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and all((s >= 0).all() for s in a)
    # the gate score is |sum_d p * dL/dp| for VPT without projection
    x, y = next(iter(make_loader(splits.train, 32)))
    model.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    p = model.method.prompts[3]
    torch.testing.assert_close(gate_scores(model, [(x, y)])[3], (p * p.grad).sum(1).abs().detach())


def _condensed(model, cfg, masks):
    """The model the method's `keep_units` hook describes, with the kept tensors loaded."""
    prompt_cfg, method_state = model.method.keep_units(masks)
    small = build_model(finetune_config(cfg, prompt_cfg, 1, None, 0.0), 10)
    small.load_trainable_state(condensed_state(model, method_state))
    return small


def test_condensing_removes_prompts_parameters_and_macs(vpt_run, tmp_path):
    _, model, _ = load_run(vpt_run)
    cfg = RunDir(vpt_run).config()
    masks = [torch.tensor([True, False, True, False, False])] + [torch.zeros(5, dtype=torch.bool)] * 4 + \
            [torch.ones(5, dtype=torch.bool)]
    counts = [int(m.sum()) for m in masks]
    small = _condensed(model, cfg, masks)
    assert [tuple(p.shape) for p in small.method.prompts] == [(c, D) for c in counts]
    assert small.param_summary()["prompt"] == 7 * D == model.param_summary()["prompt"] - 23 * D
    assert torch.equal(small.method.prompts[0], model.method.prompts[0][[0, 2]])
    full = vit_macs(model.info, 10, model.method.extra_tokens()).total
    cut = vit_macs(small.info, 10, small.method.extra_tokens()).total
    assert cut < full and small.method.extra_tokens() == [(2, 2), (0, 0), (0, 0), (0, 0), (0, 0), (5, 5)]


def test_keep_everything_changes_nothing(vpt_run, digits_batch):
    _, model, _ = load_run(vpt_run)
    cfg = RunDir(vpt_run).config()
    masks = [torch.ones(5, dtype=torch.bool)] * DEPTH
    same = _condensed(model, cfg, masks).eval()
    with torch.no_grad():
        assert torch.equal(same(digits_batch), model(digits_batch))


def test_pc_end_to_end_run_round_trips_and_leaves_the_source_alone(vpt_run, tmp_path):
    before = _digest(vpt_run)
    out = tmp_path / "pc"
    report = condense_pc(vpt_run, out, PCOptions(keep=0.3, finetune_epochs=1))
    assert report["kept"] == 9 and sum(report["kept_per_layer"]) == 9 and report["total"] == 30
    assert report["macs"]["after"] < report["macs"]["before"]
    assert report["params"]["prompt_after"] == 9 * D
    # the removal-only state is the first candidate for "best": fine-tuning can only keep or improve val top-1
    assert report["top1_after_finetune"]["val"] >= report["top1_after_removal"]["val"]
    for f in ("keep_mask.json", "scores.safetensors", "report.json", "keep_heatmap.csv", "scores.csv"):
        assert (out / "condense" / f).is_file()
    assert json.loads((out / "condense" / "keep_mask.json").read_text())["kept"] == 9
    cfg, model, _ = load_run(out)  # a normal, loadable run of the same method
    assert cfg.prompt.tokens_per_layer == report["kept_per_layer"]
    assert RunDir(out).manifest()["stages"][-1]["name"] == "condense"
    assert _digest(vpt_run) == before


def test_pc_budget_mode(vpt_run, tmp_path):
    report = condense_pc(vpt_run, tmp_path / "b", PCOptions(keep=None, max_overhead=0.10, finetune_epochs=0))
    assert report["macs"]["after"] <= 1.10 * report["macs"]["bare"]
    assert 0 < report["kept"] < report["total"]


def test_e2vpt_budgets_follow_the_reference():
    assert token_prune_counts(10) == list(range(1, 10))
    assert segment_prune_counts(16) == [1, 3, 4, 6, 8, 9, 11, 12]
    keep, seg = prune_plan(torch.tensor([0.5, 0.1, 0.9, 0.3]), torch.arange(16.0).repeat(4, 1), 2, 3)
    assert keep.tolist() == [True, False, True, False]
    assert seg.shape == (2, 16) and (~seg).sum(1).tolist() == [3, 3] and not seg[:, :3].any()


def test_e2vpt_pruning_removes_tokens_and_bakes_segments(e2vpt_run, tmp_path):
    _, src, _ = load_run(e2vpt_run)
    cfg = RunDir(e2vpt_run).config()
    splits = load_data(cfg.data, src.info)
    tok, seg = mask_scores(src, make_loader(splits.train, 32), max_batches=2)
    assert tok.shape == (5,) and seg.shape == (5, 16)
    out = tmp_path / "pruned"
    report = condense_e2vpt(e2vpt_run, out, E2VPTPruneOptions(token_budgets=[40], segment_budgets=[4], finetune_epochs=1))
    assert report["kept"] == 3 and report["tokens_pruned"] == 2 and len(report["candidates"]) == 1
    pcfg, pruned, _ = load_run(out)
    assert pcfg.prompt.token_keep.count(True) == 3
    assert all(p.shape == (3, D) for p in pruned.method.prompts)
    assert (pruned.method.segment_mask == 0).sum(1).tolist() == [4, 4, 4]  # stayed zero through retraining
    assert report["macs"]["after"] == vit_macs(pruned.info, 10, pruned.method.extra_tokens()).total
    assert report["macs"]["after"] < report["macs"]["before"]
    assert (out / "candidates" / "t2-s4").is_dir()


def test_e2vpt_rewind_uses_the_original_initial_values(e2vpt_run):
    cfg = RunDir(e2vpt_run).config()
    first = build_model(cfg, 10)
    again = build_model(cfg, 10)
    assert all(torch.equal(a, b) for a, b in zip(first.method.prompts, again.method.prompts))
    _, trained, _ = load_run(e2vpt_run)
    assert not torch.equal(first.method.prompts[0], trained.method.prompts[0])


@pytest.mark.parametrize("args, code, message", [
    (["--keep", "0"], 2, "keep must be in (0, 1]"),
    (["--keep", "1.5"], 2, "keep must be in (0, 1]"),
    (["--max-overhead", "-5%"], 2, "budget below the bare backbone"),
    (["--method", "e2vpt"], 2, "has token/segment masks"),
    (["--method", "magic"], 2, "unknown condense method"),
])
def test_condense_cli_errors(vpt_run, tmp_path, args, code, message):
    r = CliRunner().invoke(app, ["condense", str(vpt_run), "--out", str(tmp_path / "x"), *args])
    assert r.exit_code == code, r.output
    assert message in r.output and "Traceback" not in r.output


def test_condense_refuses_runs_without_prompts_and_newer_versions(tmp_path, run_cache):
    lor = run_cache.get("lorvp", tmp_path / "lor")
    r = CliRunner().invoke(app, ["condense", str(lor), "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "has prompt units to score" in r.output
    m = json.loads((lor / "manifest.json").read_text())
    m["schema_version"] = 99
    (lor / "manifest.json").write_text(json.dumps(m))
    r = CliRunner().invoke(app, ["condense", str(lor), "--out", str(tmp_path / "y")])
    assert r.exit_code == 6 and "newer edgevp" in r.output


def test_condense_cli_end_to_end(vpt_run, tmp_path):
    r = CliRunner().invoke(app, ["condense", str(vpt_run), "--keep", "50%", "--finetune-epochs", "1",
                                 "--out", str(tmp_path / "c")])
    assert r.exit_code == 0, r.output
    assert "kept 15/30 prompts" in r.output


def test_pc_on_e2vpt_bakes_masks_and_keeps_kv_prompts(e2vpt_run, tmp_path, digits_batch):
    _, model, _ = load_run(e2vpt_run)
    cfg = RunDir(e2vpt_run).config()
    with torch.no_grad():  # masks that are not all ones must be baked into the kept prompts exactly
        model.method.segment_mask[1, 3] = 0.0
        model.method.token_mask[2] = 0.5
    everything = [torch.ones(5, dtype=torch.bool)] * DEPTH
    same = _condensed(model, cfg, everything).eval()
    with torch.no_grad():
        torch.testing.assert_close(same(digits_batch), model.eval()(digits_batch), rtol=0, atol=1e-6)
    assert same.method.token_mask.numel() == 0 and torch.equal(same.method.kv_k, model.method.kv_k)
    report = condense_pc(e2vpt_run, tmp_path / "pc", PCOptions(keep=0.4, finetune_epochs=1))
    assert report["kept"] == 12 and report["total"] == 30
    _, small, _ = load_run(tmp_path / "pc")
    assert [p.shape[0] for p in small.method.prompts] == report["kept_per_layer"]
    kv = DEPTH * 2 * 2 * (D // 2)  # KV prompts are not condensed
    assert small.param_summary()["prompt"] == 12 * D + kv
    assert report["macs"]["after"] == vit_macs(small.info, 10, small.method.extra_tokens()).total
    with pytest.raises(Exception, match="already pruned or condensed"):
        condense_e2vpt(tmp_path / "pc", tmp_path / "again", E2VPTPruneOptions())
