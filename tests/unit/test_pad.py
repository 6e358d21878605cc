"""The padding prompt (VP) baseline, built in as method `pad`: exact parameter count, pixels only in the border,
folded == unfolded on real digits, detach restores the backbone, training lowers the loss, export passes parity."""
from __future__ import annotations

import json

import pytest
import torch

from edgevp.errors import ConfigError
from edgevp.export.fold import to_deploy
from edgevp.export.pipeline import ExportOptions, export_run
from edgevp.model import load_run
from edgevp.runs import RunDir
from edgevp.train import fit

from ..conftest import tiny_config, tiny_model

L = 32  # tiny recipe input size


def _count(p: int, side: int = L) -> int:
    return 2 * 3 * p * (side + side - 2 * p)  # top+bottom 3×p×L each, left+right 3×(L−2p)×p each


@pytest.mark.parametrize("p", [1, 5])
def test_parameter_count_is_the_border(p):
    model = tiny_model("pad", {"size": p})
    assert model.method.prompt_param_count() == _count(p)
    assert model.param_summary()["prompt"] == _count(p)
    assert _count(30, 224) == 69_840  # VP's default at 224 px


def test_pixels_only_in_the_border():
    p = 4
    model = tiny_model("pad", {"size": p})
    prompt = model.method.prompt()
    assert prompt.shape == (3, L, L)
    assert prompt[:, p:-p, p:-p].eq(0).all()  # the centre is exactly zero
    border = torch.ones(L, L, dtype=torch.bool)
    border[p:-p, p:-p] = False
    assert prompt.abs().sum(0)[border].ne(0).all()  # every border pixel is a parameter (vp init is random)


def test_init_choices():
    info = tiny_model("pad", {"size": 3}).info
    zeros = tiny_model("pad", {"size": 3, "init": "zeros"}).method.prompt()
    assert zeros.eq(0).all()
    torch.manual_seed(0)
    vp = torch.cat([t.flatten(1) for t in tiny_model("pad", {"size": 8}).method.parameters()], 1)
    ratio = vp.std(1) / torch.tensor(info.std)  # N(0, std_c²): the reference's N(0, 1) after normalisation
    assert torch.allclose(ratio, torch.ones(3), atol=0.1)
    torch.manual_seed(0)
    normal = torch.cat([t.flatten() for t in tiny_model("pad", {"size": 8, "init": "normal",
                                                                "init_std": 0.02}).method.parameters()])
    assert abs(normal.std().item() - 0.02) < 0.003


def test_border_width_is_checked():
    with pytest.raises(ConfigError, match="size .* must be >= 1"):
        tiny_config("pad", {"size": 0})
    with pytest.raises(ConfigError, match="narrower than half"):
        tiny_model("pad", {"size": L // 2})
    tiny_model("pad", {"size": L // 2 - 1})  # one centre ring of 2x2 pixels is enough


def test_pixel_prompt_is_added_before_normalisation(digits_batch):
    model = tiny_model("pad", {"size": 3}).eval()
    prompt = model.method.prompt()
    with torch.no_grad():
        got = model(digits_batch)
        model.method.detach(model.backbone)
        ref = model.backbone(((digits_batch + prompt) - model.mean) / model.std)
    assert torch.equal(got, ref)


def test_folded_equals_unfolded_on_real_digits(digits_batch):
    model = tiny_model("pad", {"size": 3}).eval()
    with torch.no_grad():
        for t in model.method.parameters():
            t.mul_(3.0)  # a large prompt: the fold must hold beyond the init scale
        ref = model(digits_batch)
        deploy = to_deploy(model)
        got = deploy(digits_batch)
        raw = to_deploy(model, include_preprocess=False)((digits_batch - model.mean) / model.std)
    assert deploy.report.pixel == "pos_embed"
    assert (got - ref).abs().max().item() <= 1e-5
    assert (raw - ref).abs().max().item() <= 1e-5
    # a backbone without pos_embed (a CNN) folds into the normalisation mean instead
    cnn = tiny_model("pad", {"size": 3}, backbone="test_efficientnet").eval()
    with torch.no_grad():
        ref, dep = cnn(digits_batch), to_deploy(cnn)
        assert dep.report.pixel == "mean" and (dep(digits_batch) - ref).abs().max().item() <= 1e-5


def test_attach_detach_restores_the_backbone_bit_for_bit():
    model = tiny_model("pad", {"size": 3})
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    modules = [type(m) for m in model.backbone.modules()]
    backbone = model.detach_method()
    assert [type(m) for m in backbone.modules()] == modules  # nothing was wrapped
    after = backbone.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert not any(p.requires_grad for n, p in backbone.named_parameters() if not n.startswith("head."))


@pytest.fixture(scope="module")
def pad_run(tmp_path_factory):
    cfg = tiny_config("pad", {"size": 3}, train={"epochs": 4, "lr": 0.01})
    out = tmp_path_factory.mktemp("pad") / "run"
    result = fit(cfg, out=out)
    return out, result


def test_short_training_run_lowers_the_loss(pad_run):
    run, result = pad_run
    metrics = RunDir(run).metrics()
    assert [m["epoch"] for m in metrics] == [0, 1, 2, 3]
    assert metrics[-1]["train_loss"] < metrics[0]["train_loss"]
    assert result.params["prompt"] == _count(3)
    _, model, _ = load_run(run)
    fresh = tiny_model("pad", {"size": 3})
    assert model.method.prompt()[:, 3:-3, 3:-3].eq(0).all()  # the centre stays zero through training
    assert not torch.equal(model.method.up, fresh.method.up)  # the border trained


def test_export_of_a_trained_pad_run_passes_its_parity_gate(pad_run, tmp_path, digits_batch):
    run, _ = pad_run
    side = export_run(run, ExportOptions(exporter="legacy", out=tmp_path / "export", gate_images=16))
    assert side["status"] == "ok" and side["fold"]["pixel"] == "pos_embed"
    assert side["parity"]["max_abs"] <= 1e-5 and side["parity"]["top1_agreement"] == 1.0
    assert json.loads((tmp_path / "export" / "model.json").read_text())["fold"]["pixel"] == "pos_embed"
    _, model, _ = load_run(run)
    with torch.no_grad():
        assert (to_deploy(model)(digits_batch) - model(digits_batch)).abs().max().item() <= 1e-5
