"""The package's layer contracts, in import-linter (pyproject.toml, [tool.importlinter]): they hold on the package, and
each one fails on a deliberate violation (the package copied to a temporary folder, one import added, the linter run
there). Plus what import-linter cannot express, read with ast: no literal exit code outside errors.py, and no private
name imported across packages."""
from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "edgevp"
CONTRACTS = {"layers", "runtime", "device", "trainer", "methods", "torch-free", "root"}

# Run in a child whose cwd and sys.path[0] are the tree to check (this process has imported the real edgevp, and
# grimp finds a package through the import system): {contract id: kept, ...} plus what a broken one reports.
CHILD = r'''
import json, sys
sys.path.insert(0, ".")
from importlinter import configuration
configuration.configure()
from importlinter.application.use_cases import create_report, read_user_options
from importlinter.contracts.forbidden import ForbiddenContract
from importlinter.contracts.layers import LayersContract
from importlinter.domain.contract import registry

registry.register(ForbiddenContract, "forbidden")
registry.register(LayersContract, "layers")
report = create_report(read_user_options("pyproject.toml"), cache_dir=None)
out = {"invalid": {k: str(v) for k, v in report.invalid_contract_options.items()}, "kept": {}, "metadata": {}}
for contract, check in report.get_contracts_and_checks():
    out["kept"][contract.contract_options["id"]] = check.kept
    out["metadata"][contract.contract_options["id"]] = check.metadata
print(json.dumps(out, default=str))
'''


def lint(root: Path) -> dict:
    r = subprocess.run([sys.executable, "-c", CHILD], cwd=root, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert not out["invalid"], out["invalid"]
    return out


def test_the_contracts_hold():
    """`lint-imports`, as CI runs it, on the package: every contract kept (no cache written into the tree)."""
    exe = Path(sys.executable).with_name("lint-imports")
    cmd = [str(exe)] if exe.is_file() else [sys.executable, "-c", "from importlinter.cli import lint_imports_command "
                                                                   "as c; c()"]
    r = subprocess.run([*cmd, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "COLUMNS": "200"})
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"Contracts: {len(CONTRACTS)} kept, 0 broken." in r.stdout, r.stdout


def test_every_contract_is_configured_and_kept():
    out = lint(ROOT)
    assert set(out["kept"]) == CONTRACTS
    assert all(out["kept"].values()), {k: out["metadata"][k] for k, v in out["kept"].items() if not v}


# contract id -> (file under edgevp/, the import added to it, every contract that import breaks)
VIOLATIONS = {
    "layers": ("conformance/rules.py", "from ..device import preprocess", {"layers"}),
    "runtime": ("runtime/scan.py", "from ..images import check_images", {"runtime"}),
    "device": ("device/preprocess.py", "from ..sweep import options", {"device", "layers"}),
    "trainer": ("export/targets.py", "from ..train import fit", {"trainer", "layers"}),
    "methods": ("condense/select.py", "from ..prompts.vpt import VPT", {"methods"}),
    "methods/submodule": ("export/targets.py", "from ..prompts import lorvp", {"methods"}),
    "torch-free": ("cost.py", "import torch", {"torch-free"}),
    # the same contract reached indirectly, and from inside a function
    "torch-free/indirect": ("tables.py", "def f():\n    from .model import build_model", {"torch-free"}),
    # the device modules read edgevp.__version__, so torch in `import edgevp` reaches them too
    "root": ("__init__.py", "import torch", {"root", "torch-free"}),
}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """A copy of the package and its pyproject.toml: every contract is kept there before anything is injected."""
    root = tmp_path_factory.mktemp("pristine")
    shutil.copytree(PKG, root / "edgevp", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy(ROOT / "pyproject.toml", root / "pyproject.toml")
    out = lint(root)
    assert set(out["kept"]) == CONTRACTS and all(out["kept"].values()), out["metadata"]
    return root


@pytest.mark.parametrize("case", sorted(VIOLATIONS))
def test_each_contract_fails_on_a_violation(case, pristine, tmp_path):
    rel, line, broken = VIOLATIONS[case]
    root = tmp_path / "tree"
    shutil.copytree(pristine, root)
    target = root / "edgevp" / rel
    assert line not in target.read_text()
    target.write_text(target.read_text() + f"\n\n{line}  # injected by the test\n")
    out = lint(root)
    assert {k for k, kept in out["kept"].items() if not kept} == broken, out["metadata"]
    assert case.split("/")[0] in broken


# -- what import-linter cannot express -------------------------------------------------------------------------
EXIT_CALLS = ("typer.Exit", "Exit", "SystemExit", "sys.exit", "exit", "os._exit", "_fail", "fail")
CODE_NAMES = ("exit_code", "returncode", "code", "rc")


def _is_int(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and type(node.value) is int


def _names_code(node: ast.AST) -> bool:
    name = node.attr if isinstance(node, ast.Attribute) else node.id if isinstance(node, ast.Name) else None
    return name in CODE_NAMES


def literal_exit_codes(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, source) of every exit code written as a number: passed to an exit call or `exit_code=`, assigned to
    `exit_code`, stored under "exit_code", compared with a process's return code (other than 0) or returned by `main`."""
    found = []
    for node in ast.walk(tree):
        bad = False
        if isinstance(node, ast.Call):
            fn = ast.unparse(node.func)
            bad = (fn in EXIT_CALLS and any(_is_int(a) for a in node.args)) or any(
                k.arg in ("code", "exit_code") and _is_int(k.value) for k in node.keywords)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            bad = _is_int(node.value) and any(_names_code(t) and not isinstance(t, ast.Name) or
                                              isinstance(t, ast.Name) and t.id == "exit_code" for t in targets)
        elif isinstance(node, ast.Dict):
            bad = any(isinstance(k, ast.Constant) and k.value == "exit_code" and _is_int(v)
                      for k, v in zip(node.keys, node.values))
        elif isinstance(node, ast.Compare):
            parts = [node.left, *node.comparators]
            bad = any(_names_code(p) for p in parts) and any(_is_int(p) and p.value != 0 for p in parts)
        elif isinstance(node, ast.FunctionDef) and node.name == "main":
            bad = any(isinstance(r, ast.Return) and _is_int(r.value) for r in ast.walk(node))
            found += [(r.lineno, ast.unparse(r)) for r in ast.walk(node) if isinstance(r, ast.Return) and bad
                      and _is_int(r.value)]
            continue
        if bad:
            found.append((node.lineno, ast.unparse(node).splitlines()[0]))
    return sorted(found)


def _module(path: Path) -> tuple[str, str]:
    """(module, package) of a file under edgevp/: a package's __init__ is the package itself."""
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), ".".join(parts[:-1])
    return ".".join(parts), ".".join(parts[:-1])


def _package_of(module: str) -> str:
    """The package a module belongs to (a package belongs to itself)."""
    path = PKG.parent.joinpath(*module.split("."))
    return module if path.is_dir() else module.rpartition(".")[0]


def private_imports(tree: ast.AST, module: str, package: str) -> list[tuple[int, str]]:
    """(line, what) for every private name (`_x`) of another edgevp package that `module` imports, or reaches as an
    attribute of a module it imported from another package."""
    found, aliases = [], {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("edgevp"):
                continue
            for a in node.names:
                sub = f"{target}.{a.name}"
                is_module = PKG.parent.joinpath(*sub.split(".")).with_suffix(".py").is_file() or \
                    PKG.parent.joinpath(*sub.split(".")).is_dir()
                owner = _package_of(sub) if is_module else _package_of(target)
                if a.name.startswith("_") and not a.name.startswith("__") and owner != package:
                    found.append((node.lineno, f"from {target} import {a.name}"))
                if is_module and _package_of(sub) != package:
                    aliases[a.asname or a.name] = sub
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("edgevp.") and a.asname and _package_of(a.name) != package:
                    aliases[a.asname] = a.name
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases \
                and node.attr.startswith("_") and not node.attr.startswith("__"):
            found.append((node.lineno, f"{aliases[node.value.id]}.{node.attr}"))
    return sorted(found)


def _scan(check, skip=()) -> list[str]:
    bad = []
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel in skip:
            continue
        module, package = _module(path)
        tree = ast.parse(path.read_text(), rel)
        hits = check(tree) if check is literal_exit_codes else check(tree, module, package)
        bad += [f"{rel}:{line}: {what}" for line, what in hits]
    return bad


def test_no_literal_exit_code_outside_errors_py():
    bad = _scan(literal_exit_codes, skip=("edgevp/errors.py", "edgevp/cli.py"))
    assert not bad, "exit codes come from edgevp/errors.py (EXIT_* or an exception class):\n" + "\n".join(bad)


def test_the_cli_writes_no_literal_exit_code():
    tree = ast.parse((PKG / "cli.py").read_text())
    bad = [f"edgevp/cli.py:{line}: {what}" for line, what in literal_exit_codes(tree)]
    assert not bad, "exit codes come from edgevp/errors.py (EXIT_* or an exception class):\n" + "\n".join(bad)


def test_no_private_name_is_imported_across_packages():
    bad = _scan(private_imports)
    assert not bad, "make the name public where it is an API, or move it:\n" + "\n".join(bad)


def test_the_scans_catch_what_they_look_for():
    """Each pattern the two scans forbid, in a synthetic module (guards against a scan that never fires)."""
    src = ("raise typer.Exit(2)\nsys.exit(3)\n_fail('x', 4)\nraise SystemExit(5)\nf(exit_code=6)\n"
           "class E(Exception):\n    exit_code = 7\nprint({'exit_code': 8})\nif proc.returncode == 130: pass\n"
           "def main():\n    return 1\n")
    allowed = ("raise typer.Exit(EXIT_USAGE)\nsys.exit(main())\nraise typer.Exit()\nif r.returncode != 0: pass\n"
               "x = {'exit_code': e.exit_code}\ndef main():\n    return EXIT_OK\nprint(3)\nflag = True\n")
    assert [line for line, _ in literal_exit_codes(ast.parse(src))] == [1, 2, 3, 4, 5, 7, 8, 9, 11]
    assert literal_exit_codes(ast.parse(allowed)) == []
    src = ("from ..profile.device import _read, gpu_name\nfrom ..runs import _now\nfrom .artifact import _open\n"
           "from ..profile import device as dev\ndev._run(['x'])\nimport edgevp.export.pipeline as ep\n"
           "ep._install()\nfrom . import formats\nformats._private()\n")
    got = private_imports(ast.parse(src), "edgevp.device.evaluate", "edgevp.device")
    assert [what for _, what in got] == ["from edgevp.profile.device import _read", "from edgevp.runs import _now",
                                         "edgevp.profile.device._run", "edgevp.export.pipeline._install"]


MAX_FUNCTION_LINES = 80  # issue 19: no function over ~80 lines in edgevp/ (a longer one does several jobs)


def long_functions(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, name and length) of every function or method longer than MAX_FUNCTION_LINES, decorators excluded."""
    return [(node.lineno, f"{node.name} ({node.end_lineno - node.lineno + 1} lines)") for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]


def test_no_function_is_over_80_lines():
    bad = _scan(lambda tree, module, package: long_functions(tree))
    assert not bad, "cut the function at its seams (one job each):\n" + "\n".join(bad)
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))  # 81 lines with the def: caught
    assert long_functions(ast.parse(f"def f():\n{body}\n")) == [(1, f"f ({MAX_FUNCTION_LINES + 1} lines)")]
    assert long_functions(ast.parse("def g():\n" + "\n".join(body.splitlines()[1:]) + "\n")) == []
