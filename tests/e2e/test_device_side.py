"""The device side without the training stack: a run trained and exported here is profiled, reported and listed by
Python processes whose imports refuse torch, timm and torchvision (as on a Jetson with only ONNX Runtime), and
missing files exit 6 in one line."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgevp.cli import DATASETS, app
from edgevp.errors import MissingError
from edgevp.optional import optional, pyplot, require

from ..conftest import TRAINING_STACK
from .. import support



@pytest.fixture(scope="module")
def exported_run(tmp_path_factory, run_cache) -> Path:
    run = run_cache.get("vpt4", tmp_path_factory.mktemp("device") / "vpt")
    r = CliRunner().invoke(app, ["export", str(run), "--with-references", "--exporter", "legacy",
                                 "--gate-images", "16"])
    assert r.exit_code == 0, r.output
    return run


def _python(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=300)


def _edgevp(env: dict, *args) -> subprocess.CompletedProcess:
    return support.edgevp(*args, env=env, timeout=300)


def test_the_blocker_refuses_the_training_stack_in_children_too(no_torch_env):
    for name in TRAINING_STACK:
        r = _python(no_torch_env, "-c", f"import {name}")
        assert r.returncode == 1 and f"No module named '{name}'" in r.stderr
    child = "import subprocess, sys; sys.exit(subprocess.run([sys.executable, '-c', 'import torch']).returncode)"
    assert _python(no_torch_env, "-c", child).returncode == 1
    assert _python(no_torch_env, "-c", "import numpy, onnxruntime, edgevp.runs, edgevp.report").returncode == 0


def test_profile_and_report_a_run_without_torch(exported_run, no_torch_env, tmp_path):
    fast = ["--iters", "3", "--warmup", "1", "--rounds", "1", "--threads", "1"]
    r = _edgevp(no_torch_env, "profile", exported_run, *fast, "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)["rows"]
    assert [row["variant"] for row in rows] == ["bare backbone", "unfolded prompts", "folded (this run)"]
    assert rows[0]["ratio_p50"] == 1.0 and rows[2]["ratio_macs"] > 1.0 and rows[2]["p50_ms"] > 0
    assert (exported_run / "profile" / "profile.json").is_file()

    r = _edgevp(no_torch_env, "profile", exported_run / "export" / "model.onnx", *fast, "-o", tmp_path / "p")
    assert r.returncode == 0, r.stderr
    assert "| model | 1 |" in r.stdout and (tmp_path / "p" / "profile.md").is_file()

    r = _edgevp(no_torch_env, "report", exported_run, "-o", tmp_path / "report")
    assert r.returncode == 0, r.stderr
    (row,) = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert row["method"] == "vpt" and row["latency_ratio"] == rows[2]["ratio_p50"]
    assert "| vpt | all |" in (tmp_path / "report" / "report.md").read_text()


def test_listing_without_torch(no_torch_env):
    r = _edgevp(no_torch_env, "list", "methods")
    assert r.returncode == 0 and [line.split()[0] for line in r.stdout.splitlines()] == ["e2vpt", "linear", "lorvp",
                                                                                         "pad", "vpt"]
    r = _edgevp(no_torch_env, "list", "targets")
    assert r.returncode == 0 and "trt-fp16" in r.stdout
    r = _edgevp(no_torch_env, "list", "datasets")
    assert r.returncode == 0 and r.stdout.split() == list(DATASETS)
    assert _edgevp(no_torch_env, "list", "exit-codes").returncode == 0
    r = _edgevp(no_torch_env, "list", "models")  # timm's model list needs timm: say which install brings it
    assert r.returncode == 4 and "pip install 'edgevp[train]'" in r.stderr and "Traceback" not in r.stderr


def test_listed_datasets_are_the_data_modules():
    from edgevp.data import BUILTIN

    assert DATASETS == (*BUILTIN, "folder")


def test_optional_imports_name_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails as when it is not installed
    assert optional("matplotlib") is None and pyplot() is None
    with pytest.raises(MissingError, match=r"^matplotlib is not installed here; plotting needs it "
                                           r"\(pip install 'edgevp\[plot\]'\)$") as e:
        require("matplotlib", "plotting")
    assert e.value.exit_code == 4
    assert optional("json") is not None


@pytest.mark.parametrize("args, message", [
    (["profile", "/nonexistent"], "'/nonexistent' does not exist"),
    (["profile", "/nonexistent", "--backend", "torch"], "'/nonexistent' does not exist"),
    (["profile", "RUN", "--against", "/nonexistent.onnx"], "artifact '/nonexistent.onnx' does not exist"),
    (["report", "/nonexistent"], "'/nonexistent' is not an edgevp run directory (it does not exist)"),
    (["report", "RUN", "--profile", "/nonexistent.json"], "profile '/nonexistent.json' does not exist"),
])
def test_missing_files_exit_6_in_one_line(exported_run, tmp_path, args, message):
    args = [str(exported_run) if a == "RUN" else a for a in args]
    out = ["--out", str(tmp_path / "out")]
    r = CliRunner().invoke(app, [*args, *out])
    assert r.exit_code == 6, r.output
    assert message in r.output and r.output.strip().count("\n") == 0 and "Traceback" not in r.output
    assert not (tmp_path / "out").exists()


def _imports(path: Path, module: str, package: str, known: set[str]) -> set[str]:
    """The edgevp modules `path` imports anywhere (function bodies included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
            mod = ".".join(base + ([node.module] if node.module else []))
            names = [mod, *(f"{mod}.{a.name}" for a in node.names)]
        else:
            continue
        found.update(n for n in names if n in known and n != module)
    return found


def test_no_import_cycles():
    root = Path(__file__).resolve().parents[2] / "edgevp"
    files = {}
    for f in root.rglob("*.py"):
        parts = f.relative_to(root.parent).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    graph = {}
    for m, f in files.items():
        graph[m] = _imports(f, m, m if f.name == "__init__.py" else m.rpartition(".")[0], set(files))

    def cycle_from(start: str) -> list[str] | None:
        stack, seen = [(start, [start])], set()
        while stack:
            node, trail = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    return trail + [start]
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, trail + [nxt]))
        return None

    cycles = [c for c in map(cycle_from, sorted(graph)) if c]
    assert not cycles, cycles[0]
