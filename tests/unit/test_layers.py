"""The package's layering, read from the source (ast), where import-linter's contracts (pyproject.toml, checked by
tests/unit/test_import_contracts.py) cannot say it: no import cycle between modules; the names condensation may take from
the trainer; export and condensation never test for a concrete method (isinstance, names, attributes); method
configs resolve without torch at run time (the registry loads methods through importlib, which no import graph sees).
Which packages may import which (export, profile and report never the trainer; export and condensation no method
module) is import-linter's."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "edgevp"
BUILTIN_METHODS = ("linear", "vpt", "e2vpt", "lorvp", "pad")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}
TREES = {name: ast.parse(path.read_text(), str(path)) for name, path in MODULES.items()}


def _resolve(module: str, node: ast.ImportFrom) -> str:
    """The absolute module an ImportFrom names (relative imports resolved against `module`)."""
    if not node.level:
        return node.module or ""
    is_pkg = MODULES[module].name == "__init__.py"
    base = module.split(".")
    base = base if is_pkg else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(module: str) -> list[tuple[str, list[str], int]]:
    """Every import in `module` (top level, in functions, under TYPE_CHECKING): (imported module, names, line).
    `from pkg import sub` where `sub` is a submodule counts as an import of `pkg.sub`."""
    out = []
    for node in ast.walk(TREES[module]):
        if isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, node)
            names = [a.name for a in node.names]
            subs = [n for n in names if f"{target}.{n}" in MODULES]
            out.append((target, [n for n in names if n not in subs], node.lineno))
            out += [(f"{target}.{n}", [], node.lineno) for n in subs]
    return out


def graph() -> dict[str, set[str]]:
    """Internal import edges: module -> the edgevp modules it imports (a package import counts as its __init__)."""
    g: dict[str, set[str]] = {m: set() for m in MODULES}
    for m in MODULES:
        for target, _, _ in imports(m):
            if target in MODULES and target != m:
                g[m].add(target)
    return g


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(g[m]):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state:
                found = visit(n)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(g):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_the_graph_sees_every_kind_of_import():
    g = graph()
    assert "edgevp.prompts.base" in g["edgevp.prompts.vpt"]  # relative, top level
    assert "edgevp.prompts.base" in g["edgevp.registry"]  # under TYPE_CHECKING
    assert "edgevp.train" in g["edgevp.condense.pc"]  # inside a function
    assert "edgevp.cli" in g["edgevp.__main__"]  # `from .cli import main`
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]


def test_no_import_cycle():
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def _in(module: str, *prefixes: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_what_is_taken_from_the_trainer():
    """Names, which import-linter does not see: condensation takes `fit` only; nobody takes load_data or evaluate
    from train (they live in edgevp.data and edgevp.evaluation)."""
    bad = []
    for m in MODULES:
        for target, names, line in imports(m):
            if target != "edgevp.train" and not (target == "edgevp" and "train" in names):
                continue
            where = f"{MODULES[m].relative_to(PKG.parent)}:{line} imports edgevp.train {names}"
            if _in(m, "edgevp.condense") and set(names) != {"fit"}:
                bad.append(where + " (condense may import `fit` only)")
            elif {"load_data", "evaluate"} & set(names):
                bad.append(where + " (load_data is in edgevp.data, evaluate in edgevp.evaluation)")
    assert not bad, "\n".join(bad)


def _method_class_names() -> set[str]:
    """Every PromptMethod subclass defined under edgevp/prompts (transitively, by base-class name)."""
    classes: dict[str, list[str]] = {}
    for m, tree in TREES.items():
        if _in(m, "edgevp.prompts"):
            for node in ast.walk(tree):
                if isinstance(node, ast.ClassDef):
                    classes[node.name] = [ast.unparse(b).split(".")[-1] for b in node.bases]
    found = {"PromptMethod"}
    while True:
        more = {c for c, bases in classes.items() if c not in found and found & set(bases)}
        if not more:
            return found - {"PromptMethod"}
        found |= more


def test_export_and_condense_never_test_for_a_method():
    methods = _method_class_names()
    assert {"VPT", "E2VPT", "LoRVP", "LinearProbe", "TokenPrompts"} <= methods
    bad = []
    for m, tree in TREES.items():
        if not _in(m, "edgevp.export", "edgevp.condense"):
            continue
        rel = MODULES[m].relative_to(PKG.parent)
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                fn = ast.unparse(node.func)
                if fn in ("isinstance", "issubclass") and len(node.args) == 2:
                    kinds = {ast.unparse(e).split(".")[-1] for e in
                             (node.args[1].elts if isinstance(node.args[1], ast.Tuple) else [node.args[1]])}
                    if kinds & methods:
                        bad.append(f"{rel}:{node.lineno} {ast.unparse(node)}")
                if fn in ("hasattr", "getattr") and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant) \
                        and node.args[1].value in ("kv_prompt", "constant_kv", "kv_k", "prompts", "B", "A"):
                    bad.append(f"{rel}:{node.lineno} probes a method: {ast.unparse(node)}")
            elif isinstance(node, ast.Compare):
                ops = (ast.Eq, ast.NotEq, ast.In, ast.NotIn)
                parts = [node.left, *node.comparators]
                if any(isinstance(op, ops) for op in node.ops) and any(_names_method(p) for p in parts):
                    bad.append(f"{rel}:{node.lineno} compares with a method name: {ast.unparse(node)}")
            elif isinstance(node, ast.Attribute) and node.attr in ("kv_prompt", "kv_k", "kv_v", "token_mask",
                                                                    "segment_mask"):
                bad.append(f"{rel}:{node.lineno} reaches into a method's tensors: {ast.unparse(node)}")
    assert not bad, "\n".join(bad)


def _names_method(node: ast.AST) -> bool:
    """A string literal (or a tuple/list/set of them) naming a built-in method."""
    if isinstance(node, ast.Constant):
        return node.value in BUILTIN_METHODS
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return any(_names_method(e) for e in node.elts)
    return False


def test_the_checks_catch_what_they_look_for():
    """The AST checks above would fail on the patterns they forbid (guards against a check that never fires)."""
    src = ("from ..prompts.vpt import VPT\nif isinstance(m, (VPT, int)): pass\nif cfg.method == 'vpt': pass\n"
           "if name in ('lorvp', 'x'): pass\nif hasattr(method, 'kv_prompt'): pass\n")
    tree = ast.parse(src)
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]
    comps = [n for n in ast.walk(tree) if isinstance(n, ast.Compare)]
    assert sum(any(_names_method(p) for p in [c.left, *c.comparators]) for c in comps) == 2
    assert [ast.unparse(c.func) for c in calls] == ["isinstance", "hasattr"]
    TREES["edgevp.export.__probe__"] = tree
    MODULES["edgevp.export.__probe__"] = PKG / "export" / "__probe__.py"
    try:
        with pytest.raises(AssertionError) as e:
            test_export_and_condense_never_test_for_a_method()
        msg = str(e.value)
        assert all(s in msg for s in ("isinstance(m, (VPT, int))", "cfg.method == 'vpt'",
                                      "('lorvp', 'x')", "hasattr(method, 'kv_prompt')"))
    finally:
        del TREES["edgevp.export.__probe__"], MODULES["edgevp.export.__probe__"]
    TREES["edgevp.condense.__probe__"] = ast.parse("from ..train import fit, load_data\n")
    MODULES["edgevp.condense.__probe__"] = PKG / "condense" / "__probe__.py"
    try:
        with pytest.raises(AssertionError) as e:
            test_what_is_taken_from_the_trainer()
        assert "condense/__probe__.py:1 imports edgevp.train ['fit', 'load_data'] (condense may import `fit` only)" \
            in str(e.value)
    finally:
        del TREES["edgevp.condense.__probe__"], MODULES["edgevp.condense.__probe__"]


NO_TORCH = r'''
import sys

class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "timm", "torchvision"):
            raise ImportError(f"{name} is refused in this test")
        return None

sys.meta_path.insert(0, Refuse())

from edgevp.config import run_config_to_yaml, load_yaml
from edgevp.recipe import build_run_config
from edgevp.registry import method_config, method_specs
import yaml

prompts = {"linear": {}, "vpt": {"num_tokens": 3, "deep": False, "project": 8},
           "e2vpt": {"num_kv": 2, "tokens_per_layer": [1, 0, 2]}, "lorvp": {"rank": 2, "mapping": "flm"},
           "pad": {"size": 8}}
assert sorted(prompts) == sorted(s.name for s in method_specs())
for name, prompt in prompts.items():
    cfg = build_run_config({"method": name, "prompt": prompt})
    assert type(cfg.prompt) is method_config(name)
    text = run_config_to_yaml(cfg)
    again = build_run_config(yaml.safe_load(text))
    assert again == cfg, (name, again, cfg)
    assert run_config_to_yaml(again) == text
heavy = [m for m in ("torch", "timm", "torchvision") if m in sys.modules]
assert not heavy, heavy
print("ok")
'''


def test_method_configs_resolve_without_torch():
    r = subprocess.run([sys.executable, "-c", NO_TORCH], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
