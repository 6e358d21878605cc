"""The front door mirrors the CLI 1:1: every command has its `edgevp.<name>` function taking the options dataclass
the command fills, every option's name and default equal that dataclass's field, and no exit code is a literal in the
CLI. Then one in-process API call per command on a tiny run."""
from __future__ import annotations

import ast
import dataclasses
import importlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import typer.main
from PIL import Image

import edgevp
from edgevp.cli import app
from edgevp.condense.api import parse_fraction, parse_int_list
from edgevp.errors import ConfigError, EdgevpError

from ..conftest import RECIPES, tiny_config

GROUP = typer.main.get_command(app)

# command -> (its API function in edgevp, the options dataclasses its options are fields of)
COMMANDS = {
    "train": ("train", ["edgevp.api:TrainOptions"]),
    "condense": ("condense", ["edgevp.condense.pc:PCOptions", "edgevp.condense.e2vpt_prune:E2VPTPruneOptions"]),
    "export": ("export", ["edgevp.export.pipeline:ExportOptions"]),
    "pack": ("pack", ["edgevp.multitask.pipeline:PackOptions"]),
    "profile": ("profile", ["edgevp.profile.options:ProfileOptions"]),
    "eval": ("evaluate", ["edgevp.device.options:EvalOptions"]),
    "predict": ("predict", ["edgevp.device.options:PredictOptions"]),
    "report": ("report", ["edgevp.api:ReportOptions"]),
    "sweep": ("sweep", ["edgevp.sweep.options:SweepOptions"]),
    "demo": ("demo", ["edgevp.api:DemoOptions"]),
    "check": ("check", ["edgevp.api:CheckOptions"]),
}
NO_API = {"list": "prints registries (methods, targets, timm models, datasets, exit codes); the API has "
                  "edgevp.list_methods and the registries themselves"}

# CLI options that are no dataclass field, and why
NOT_FIELDS = {
    ("train", "sets"): "recipe overrides: the `sets` argument of edgevp.train (they change the recipe, not the run)",
    ("train", "print_config"): "prints the resolved recipe instead of training (edgevp.api.resolve_recipe)",
    ("condense", "method"): "picks the dataclass: pc -> PCOptions, e2vpt -> E2VPTPruneOptions",
    ("condense", "out"): "the `out` argument of edgevp.condense (default RUN-<method>)",
    ("pack", "out"): "the `out` argument of edgevp.pack",
    ("sweep", "sets"): "the `sets` argument of edgevp.sweep",
    ("sweep", "out"): "the `out` argument of edgevp.sweep",
    ("demo", "sets"): "the `sets` argument of edgevp.demo",
    ("profile", "json_out"): "how the CLI prints the result",
    ("eval", "json_out"): "how the CLI prints the result",
    ("predict", "json_out"): "how the CLI prints the result",
    ("predict", "csv_out"): "how the CLI prints the result",
    ("check", "json_out"): "how the CLI prints the result",
    ("list", "pattern"): "`edgevp list` has no API function",
}
# dataclass fields that no CLI option sets, and why
API_ONLY = {
    ("ExportOptions", "min_top1_agreement"): "the fp32 parity gate's agreement stays 1.0 on the CLI",
    ("ExportOptions", "calib_images"): "static int8 calibration size, tuned in code (tools/bench_int8.py)",
    ("SweepOptions", "max_retry"): "how often a dead worker's trial is queued again",
}
# options whose CLI form is text the command parses into the field's value (the command's own parser)
CLI_TEXT = {
    ("condense", "keep"): lambda t: parse_fraction(t, "--keep"),
    ("condense", "max_overhead"): lambda t: parse_fraction(t, "--max-overhead"),
    ("condense", "token_budgets"): lambda t: parse_int_list(t, "--token-budgets"),
    ("condense", "segment_budgets"): lambda t: parse_int_list(t, "--segment-budgets"),
    ("demo", "methods"): lambda t: [m.strip() for m in t.split(",") if m.strip()],
}


def _cls(ref: str):
    module, name = ref.split(":")
    return getattr(importlib.import_module(module), name)


def _options(command: str) -> dict:
    return {p.name: p for p in GROUP.commands[command].params if p.param_type_name == "option"}


def _default(f: dataclasses.Field):
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def test_every_command_has_its_api_function_and_options_in_all():
    assert set(GROUP.commands) == set(COMMANDS) | set(NO_API)
    for command, (name, classes) in COMMANDS.items():
        assert name in edgevp.__all__ and callable(getattr(edgevp, name)), command
        for ref in classes:
            cls = _cls(ref)
            assert cls.__name__ in edgevp.__all__ and getattr(edgevp, cls.__name__) is cls, ref


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_option_has_its_dataclass_field_name_and_default(command):
    classes = [_cls(ref) for ref in COMMANDS[command][1]]
    for name, param in _options(command).items():
        fields = [f for cls in classes for f in dataclasses.fields(cls) if f.name == name]
        if (command, name) in NOT_FIELDS:
            assert not fields, f"{command} --{name} is listed as no field, but {classes} has it"
            continue
        assert fields, (f"`edgevp {command}` option {param.opts} is no field of {[c.__name__ for c in classes]}: "
                        "add the field, or list the option in NOT_FIELDS with the reason it has none")
        assert "--" + name.replace("_", "-") in param.opts, (command, param.opts)
        cli = CLI_TEXT.get((command, name), lambda v: v)(param.default)
        for f in fields:
            assert cli == _default(f), f"`edgevp {command} {param.opts[0]}` defaults to {cli!r}, {f.name} to " \
                                       f"{_default(f)!r}"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_field_is_an_option_or_listed_api_only(command):
    options = _options(command)
    for cls in map(_cls, COMMANDS[command][1]):
        for f in dataclasses.fields(cls):
            assert f.name in options or (cls.__name__, f.name) in API_ONLY, f"{cls.__name__}.{f.name}: no CLI option"


def test_the_listed_exceptions_are_real():
    for command, name in NOT_FIELDS:
        assert name in _options(command), (command, name)
    fields = {(_cls(ref).__name__, f.name) for _, refs in COMMANDS.values() for ref in refs
              for f in dataclasses.fields(_cls(ref))}
    assert set(API_ONLY) <= fields


def _literal_exit_codes(tree: ast.AST) -> list[int]:
    """Lines that pass an integer literal to typer.Exit, sys.exit, exit or _fail."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            fn = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if fn in ("Exit", "exit", "_fail") and any(
                    isinstance(a, ast.Constant) and type(a.value) is int for a in [*node.args,
                                                                                   *(k.value for k in node.keywords)]):
                found.append(node.lineno)
    return found


def test_no_literal_exit_code_in_the_cli():
    assert _literal_exit_codes(ast.parse("raise typer.Exit(2)\n_fail('x', 4)\nsys.exit(code=3)")) == [1, 2, 3]
    assert _literal_exit_codes(ast.parse("raise typer.Exit(EXIT_USAGE)\ntyper.Exit()")) == []
    cli = Path(edgevp.__file__).parent / "cli.py"
    assert _literal_exit_codes(ast.parse(cli.read_text())) == []


def test_the_names_shared_with_modules_call_the_function_and_reach_the_module(monkeypatch):
    import edgevp.export.onnx as onnx_module  # through the package attribute, as `import a.b.c as m` goes
    from edgevp.train import fit

    assert onnx_module.__name__ == "edgevp.export.onnx" and edgevp.train.fit is fit is edgevp.fit
    monkeypatch.setattr("edgevp.train.fit", "patched")
    assert sys.modules["edgevp.train"].fit == "patched"
    monkeypatch.undo()
    assert sys.modules["edgevp.train"].fit is fit
    import inspect

    assert list(inspect.signature(edgevp.condense).parameters)[:3] == ["run", "out", "opts"]
    with pytest.raises(ConfigError, match="give a RECIPE"):
        edgevp.train()


def test_the_front_door_imports_no_torch():
    code = ("import sys, edgevp, edgevp.api, edgevp.condense.api, edgevp.profile.options, edgevp.device.options; "
            "edgevp.train, edgevp.condense; heavy = [m for m in ('torch', 'timm', 'onnx', 'onnxruntime', "
            "'matplotlib', 'optuna') if m in sys.modules]; assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_options_are_checked_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match="--warmup >= 0"):
        edgevp.ProfileOptions(iters=0)
    with pytest.raises(ConfigError, match="--compile applies"):
        edgevp.ProfileOptions(compile=True)
    with pytest.raises(ConfigError, match="cannot be combined with --resume"):
        edgevp.TrainOptions(resume=tmp_path, overwrite=True)
    with pytest.raises(ConfigError, match="PCOptions or E2VPTPruneOptions"):
        edgevp.condense(tmp_path, None, edgevp.ExportOptions())
    with pytest.raises(ConfigError, match="a recipe file or a resume"):
        edgevp.train(tiny_config(), edgevp.TrainOptions(nproc=2))


# ---------------------------------------------------------------------------------------------------------------
# one API call per command, in process, on a tiny run


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("api") / "vpt"
    result = edgevp.train(tiny_config("vpt", {"num_tokens": 4}, train={"epochs": 1}), edgevp.TrainOptions(out=out))
    assert result.run_dir == out and (out / "checkpoints" / "best.safetensors").is_file()
    return out


def test_condense_derives_its_output_directory(run):
    report = edgevp.condense(run, None, edgevp.PCOptions(keep=0.5, finetune_epochs=0))
    assert (run.parent / "vpt-pc" / "manifest.json").is_file() and report["kept"] == report["total"] // 2


def test_export_profile_evaluate_predict_report(run, tmp_path):
    side = edgevp.export(run, edgevp.ExportOptions(exporter="legacy", gate_images=16, test_images=16))
    model = run / "export" / "model.onnx"
    assert "model.onnx" in side["files"] and model.is_file()
    result, files = edgevp.profile(model, edgevp.ProfileOptions(warmup=0, iters=2, rounds=1, out=tmp_path / "prof"))
    assert len(result["rows"]) == 1 and files[0].parent == tmp_path / "prof"
    doc, where = edgevp.evaluate(model, edgevp.EvalOptions(out=tmp_path / "eval"))
    assert where == tmp_path / "eval" and (where / "eval.json").is_file() and doc["images"] == 16
    img = tmp_path / "digit.png"
    Image.fromarray(np.full((32, 32), 200, np.uint8)).save(img)
    res = edgevp.predict(model, [img], edgevp.PredictOptions(top_k=3))
    assert len(res["predictions"]) == 1 and len(res["predictions"][0]["top"]) == 3
    md, rows = edgevp.report([run, tmp_path / "not-a-run-glob-match.md"], edgevp.ReportOptions(out=tmp_path / "rep"))
    assert md == tmp_path / "rep" / "report.md" and md.is_file() and len(rows) == 1


def test_sweep_and_check(tmp_path):
    pytest.importorskip("optuna")
    opts = edgevp.SweepOptions(grid=["train.lr=0.01"])
    sets = ["train.epochs=1", "data.limit_train=64", "data.limit_val=32", "data.limit_test=32", "train.threads=1"]
    doc = edgevp.sweep(Path(RECIPES, "tiny", "linear.yaml"), opts, sets, tmp_path / "sweep")
    assert doc["counts"] == {"COMPLETE": 1} and doc["best"]["params"] == {"train.lr": 0.01}
    with pytest.raises(EdgevpError) as e:
        edgevp.check(tmp_path / "sweep", edgevp.CheckOptions())
    assert e.value.exit_code == 6


def _passed_keywords(fn, classes: set[str]) -> dict[str, set[str]]:
    """keyword -> the names its value reads, over every call of `classes` (and `dict`, for `**common`) in `fn`."""
    import inspect
    import textwrap

    out: dict[str, set[str]] = {}
    for node in ast.walk(ast.parse(textwrap.dedent(inspect.getsource(fn)))):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) in classes | {"dict"}:
            for k in node.keywords:
                out.setdefault(k.arg, set()).update(n.id for n in ast.walk(k.value) if isinstance(n, ast.Name))
    return out


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_option_reaches_its_field(command):
    """The command hands each option to its own field (`gate_images=gate_images`), so none is silently left at the
    dataclass default."""
    classes = [_cls(ref) for ref in COMMANDS[command][1]]
    passed = _passed_keywords(GROUP.commands[command].callback, {c.__name__ for c in classes})
    for name in _options(command):
        if (command, name) not in NOT_FIELDS:
            assert name in passed.get(name, set()), f"`edgevp {command}` does not pass option {name} to field {name}"
