"""Methods defined outside the package go through the whole chain (train, condense, export, profile) through the
CLI, with no edit under edgevp/: the `PromptMethod` hooks are the only extension point. Also installed plug-ins
(the `edgevp.methods` entry-point group) and the registry's refusals."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn
from typer.testing import CliRunner

from edgevp import registry
from edgevp.cli import app
from edgevp.config import PromptConfig, check
from edgevp.export.fold import to_deploy
from edgevp.model import load_run
from edgevp.prompts.base import FoldedPrompts, PromptMethod
from edgevp.prompts.vpt import TokenPrompts, vpt_init_bound
from edgevp.registry import register_method
from edgevp.runs import RunDir

from .. import support

runner = CliRunner()
L = 32  # tiny recipe input size
ROOT = Path(__file__).resolve().parents[2]


# -- a pad prompt: learnable pixels in a border of width p, no prompt units -------------------------------------
@dataclass
class PadConfig(PromptConfig):
    """Pad prompt: learnable pixels in a border of width p added to the image before normalisation."""

    pad: int = field(default=3, metadata={"help": "border width p in pixels"})

    def __post_init__(self):
        check(self.pad >= 1, "pad must be >= 1")


class PadPrompt(PromptMethod):
    """The classic visual-prompting baseline (Bahng et al.): a trainable border around the image."""

    config_cls = PadConfig

    def __init__(self, config: PadConfig, info):
        super().__init__(config, info)
        _, h, w = info.input_size
        p = config.pad
        self.up = nn.Parameter(torch.randn(3, p, w) * 0.1)
        self.down = nn.Parameter(torch.randn(3, p, w) * 0.1)
        self.left = nn.Parameter(torch.randn(3, h - 2 * p, p) * 0.1)
        self.right = nn.Parameter(torch.randn(3, h - 2 * p, p) * 0.1)
        self.hw = (h, w)

    def prompt(self) -> torch.Tensor:
        h, w = self.hw
        p = self.config.pad
        mid = torch.zeros(3, h - 2 * p, w - 2 * p, dtype=self.up.dtype, device=self.up.device)
        middle = torch.cat([self.left, mid, self.right], dim=2)
        return torch.cat([self.up, middle, self.down], dim=1)

    def pixel(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.prompt().to(x.dtype).unsqueeze(0)

    @torch.no_grad()
    def fold(self, backbone: nn.Module) -> FoldedPrompts:
        return FoldedPrompts(pixel=self.prompt().detach().clone())


# -- deep prompts with a learned per-layer scale: a token method with prompt units ------------------------------
@dataclass
class ScaledDeepConfig(PromptConfig):
    """Scaled deep prompts: VPT-deep tokens times a learned scalar per layer."""

    needs_vit = True

    num_tokens: int = 4
    tokens_per_layer: list[int] | None = None

    def __post_init__(self):
        check(self.num_tokens >= 0, "num_tokens must be >= 0")


class ScaledDeepPrompts(TokenPrompts):
    """Per layer (n_l, D) tokens, multiplied by a learnable scalar of that layer."""

    config_cls = ScaledDeepConfig

    def __init__(self, config: ScaledDeepConfig, info):
        super().__init__(config, info)
        self.counts = list(config.tokens_per_layer or [config.num_tokens] * info.depth)
        bound = vpt_init_bound(info)
        self.prompts = nn.ParameterList(
            [nn.Parameter(torch.empty(n, info.embed_dim).uniform_(-bound, bound)) for n in self.counts])
        self.scale = nn.Parameter(torch.full((info.depth,), 1.5))

    def layer_counts(self) -> list[int]:
        return self.counts

    def layer_prompt(self, layer: int) -> torch.Tensor | None:
        return self.prompts[layer] * self.scale[layer] if self.counts[layer] else None

    def condensed_config(self, counts: list[int]) -> ScaledDeepConfig:
        cfg = copy.deepcopy(self.config)
        cfg.tokens_per_layer, cfg.num_tokens = list(counts), max(counts)
        return cfg


PLUGINS = {"padprompt": PadPrompt, "scaleddeep": ScaledDeepPrompts}


@pytest.fixture(scope="module", autouse=True)
def plugins():
    """Register the test's methods for this module only (other tests see the built-in registry)."""
    for name, cls in PLUGINS.items():
        register_method(name)(cls)
    yield
    for name in PLUGINS:
        registry._METHODS.pop(name, None)


def _recipe(tmp_path: Path, method: str, prompt: dict, name: str = "recipe.yaml") -> Path:
    data = {"method": method, "backbone": {"name": "test_vit", "weights": "none", "img_size": L},
            "data": {"name": "digits", "limit_train": 64, "limit_val": 32, "limit_test": 32, "batch_size": 32},
            "train": {"epochs": 1, "optimizer": "adamw", "lr": 0.003, "weight_decay": 0.0, "warmup_epochs": 0.5,
                      "seed": 0},
            "prompt": prompt}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def _folded_matches(run: Path, images: torch.Tensor) -> None:
    _, model, _ = load_run(run)
    with torch.no_grad():
        ref = model(images)
        got = to_deploy(model)(images)
    assert (got - ref).abs().max().item() <= 1e-5


def _export_and_profile(run: Path, tmp_path: Path) -> dict:
    r = invoke("export", run, "--with-references", "--gate-images", 16, "--exporter", "legacy")  # dynamo: test_export
    assert r.exit_code == 0, r.output
    side = json.loads((run / "export" / "model.json").read_text())
    assert side["status"] == "ok" and side["parity"]["max_abs"] <= 1e-5
    assert {"bare.onnx", "unfolded.onnx", "model.onnx"} <= {p.name for p in (run / "export").iterdir()}
    r = invoke("profile", run, "--iters", 3, "--warmup", 1, "--rounds", 1, "--out", tmp_path / f"{run.name}-prof")
    assert r.exit_code == 0, r.output
    return side


def test_pad_prompt_through_the_cli(tmp_path, digits_batch):
    run = tmp_path / "pad"
    r = invoke("train", _recipe(tmp_path, "padprompt", {"pad": 3}), "--out", run)
    assert r.exit_code == 0, r.output
    assert RunDir(run).config().method == "padprompt"

    _, model, _ = load_run(run)
    p = 3
    assert model.method.prompt_param_count() == 2 * 3 * p * (L + L - 2 * p)
    assert model.param_summary()["prompt"] == 2 * 3 * p * (L + L - 2 * p)
    border = model.method.prompt().abs().sum(0)
    assert border[p:-p, p:-p].eq(0).all() and border[:p].ne(0).all() and border[:, :p].ne(0).all()
    _folded_matches(run, digits_batch)

    side = _export_and_profile(run, tmp_path)
    assert side["fold"]["pixel"] == "pos_embed" and side["fold"]["tokens"] == "none"

    r = invoke("condense", run)
    assert r.exit_code == 2, r.output
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "prompt units" in lines[0] and "Traceback" not in r.output
    assert not (tmp_path / "pad-pc").exists()


def test_token_plugin_with_prompt_units_condenses_exports_and_profiles(tmp_path, digits_batch):
    run = tmp_path / "scaled"
    r = invoke("train", _recipe(tmp_path, "scaleddeep", {"num_tokens": 4}), "--out", run)
    assert r.exit_code == 0, r.output
    _, src, _ = load_run(run)
    depth, dim = src.info.depth, src.info.embed_dim
    assert src.method.prompt_units() == [4] * depth
    assert src.method.prompt_param_count() == 4 * depth * dim + depth
    assert not torch.allclose(src.method.scale, torch.full((depth,), 1.5))  # the scale trained

    out = tmp_path / "scaled-pc"
    r = invoke("condense", run, "--keep", "0.5", "--finetune-epochs", 1, "--out", out)
    assert r.exit_code == 0, r.output
    cfg = RunDir(out).config()
    assert cfg.method == "scaleddeep" and sum(cfg.prompt.tokens_per_layer) == 2 * depth
    _, small, _ = load_run(out)
    counts = small.method.prompt_units()
    assert counts == cfg.prompt.tokens_per_layer and sum(counts) < sum(src.method.prompt_units())
    assert small.method.prompt_param_count() == sum(counts) * dim + depth
    report = json.loads((out / "condense" / "report.json").read_text())
    assert report["params"] == {"prompt_before": 4 * depth * dim + depth, "prompt_after": sum(counts) * dim + depth}
    _folded_matches(out, digits_batch)

    side = _export_and_profile(out, tmp_path)
    assert side["fold"]["tokens"] == "kv" and side["fold"]["pixel"] == "none"
    assert side["fold"]["kv_columns"] == counts


def test_token_plugin_layers_without_prompts_fold_exactly(digits_batch):
    """A layer whose `layer_prompt` is None (it inserts nothing) still drops the previous layer's deep prompts."""
    from ..conftest import tiny_model

    counts = [2, 0, 1, 0, 0, 3]
    model = tiny_model("scaleddeep", {"num_tokens": 3, "tokens_per_layer": counts}).eval()
    seen = []
    hooks = [b.block.register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[1])) for b in model.backbone.blocks]
    with torch.no_grad():
        ref = model(digits_batch)
        for h in hooks:
            h.remove()
        deploy = to_deploy(model)
        got = deploy(digits_batch)
    npre, patches = model.info.num_prefix_tokens, (L // model.info.patch_size[0]) ** 2
    assert seen == [npre + patches + n for n in counts]
    assert (got - ref).abs().max().item() <= 1e-5
    assert deploy.report.kv_columns == counts
    assert model.method.extra_tokens() == [(n, n) for n in counts]


# -- installed plug-ins: the entry-point group ------------------------------------------------------------------
PLUGIN_MODULE = '''
from dataclasses import dataclass

from edgevp.config import PromptConfig
from edgevp.registry import register_method


@dataclass
class MyConfig(PromptConfig):
    """My method: a plug-in found through its entry point."""

    strength: int = 7


@register_method("mymethod")
class MyMethod(__import__("edgevp.prompts.linear", fromlist=["LinearProbe"]).LinearProbe):
    config_cls = MyConfig
'''


def _dist(tmp_path: Path, module: str, source: str, value: str) -> dict:
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    info = site / "something-0.0.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: something\nVersion: 0.0\n")
    (info / "entry_points.txt").write_text(f"[edgevp.methods]\nmymethod = {value}\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    return env


def _edgevp(env: dict, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return support.edgevp(*args, env=env, cwd=cwd, timeout=120)


def test_entry_point_plugin_is_listed_and_resolves(tmp_path):
    env = _dist(tmp_path, "themodule", PLUGIN_MODULE, "themodule")
    r = _edgevp(env, "list", "methods", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    names = [line.split()[0] for line in r.stdout.splitlines()]
    assert "mymethod" in names and {"linear", "vpt", "e2vpt", "lorvp"} <= set(names)
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("mymethod"))
    assert "My method: a plug-in found through its entry point." in line
    recipe = tmp_path / "r.yaml"
    recipe.write_text("method: mymethod\nbackbone: {name: test_vit, weights: none, img_size: 32}\n"
                      "prompt: {strength: 3}\n")
    r = _edgevp(env, "train", str(recipe), "--print-config", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    cfg = yaml.safe_load(r.stdout)
    assert cfg["method"] == "mymethod" and cfg["prompt"] == {"strength": 3}


def test_broken_entry_point_is_one_line_exit_4(tmp_path):
    env = _dist(tmp_path, "brokenmodule", "raise ImportError('no such thing here')\n", "brokenmodule")
    r = _edgevp(env, "list", "methods", cwd=tmp_path)
    assert r.returncode == 4, (r.stdout, r.stderr)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "mymethod" in lines[0] and "brokenmodule" in lines[0]


# -- the registry's refusals ------------------------------------------------------------------------------------
@dataclass
class _OtherConfig(PromptConfig):
    """Another method."""


def test_registering_twice_or_without_config_raises():
    class A(PromptMethod):
        config_cls = _OtherConfig

    class B(PromptMethod):
        config_cls = _OtherConfig

    class NoConfig(PromptMethod):
        pass

    try:
        register_method("twice_test")(A)
        with pytest.raises(ValueError, match="already registered"):
            register_method("twice_test")(B)
        with pytest.raises(ValueError, match="config_cls"):
            register_method("noconfig_test")(NoConfig)
        with pytest.raises(ValueError):
            register_method("vpt")(B)  # a built-in's name
        with pytest.raises(ValueError):
            register_method("padprompt")(B)  # a plug-in's name
        with pytest.raises(ValueError):
            register_method("Bad-Name")(B)
        assert "noconfig_test" not in registry._METHODS
    finally:
        registry._METHODS.pop("twice_test", None)
        registry._METHODS.pop("noconfig_test", None)
