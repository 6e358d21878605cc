"""The docs are true: the site builds in strict mode, and what the README and docs/ name exists in the code.

- `mkdocs build --strict` passes (a broken link or anchor, a page missing from the navigation, a failed generation
  of the reference pages fails it), and fails on a deliberately broken link (so strictness is really on);
- every recipe key (`train.lr`, `prompt.num_tokens`) is a field of the config dataclasses or of a method's config;
  every YAML recipe shown parses against the schema;
- every `edgevp COMMAND` is a command, every option after it one of that command's, and every other `--option`
  one of some command's (or of a listed outside tool: trtexec, torchrun, Polygraphy...);
- every exit code named is one of `edgevp/errors.py`'s, and the exit-code tables list exactly those;
- every repository path named (`edgevp/...`, `tools/...`, `tests/...`, `recipes/...`) exists;
- the docstrings the issue named cite no document outside the repository;
- the plug-in example of docs/extending.md registers, builds and folds.
"""
from __future__ import annotations

import glob
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md")) + [ROOT / "README.md"]

_spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "tools" / "gen_docs.py")
gen_docs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gen_docs)

# options of the other tools the docs show next to edgevp's (trtexec, torchrun, Polygraphy, TensorBoard, Triton, pytest)
OTHER_TOOLS = {
    "--fp16", "--int8", "--buildOnly", "--skipInference", "--stronglyTyped", "--loadInputs", "--exportOutput",
    "--nproc_per_node", "--nnodes", "--node_rank", "--rdzv_backend", "--rdzv_endpoint", "--standalone",
    "--onnxrt", "--load-inputs", "--load-outputs", "--override-input-shapes", "--fold-constants",
    "--logdir", "--model-repository", "--strict", "--dist", "--cov",
}
# wrong on purpose: the pages show what edgevp says to a typo (`-s train.lrr=1` suggests `train.lr`)
DELIBERATE_TYPOS = {"train.lrr"}
REPO_PATH = re.compile(r"(?<![\w./-])((?:edgevp|tools|tests|recipes|docs|\.ci)/[\w./{},*<>-]*[\w*}])")


def _rel(p: Path) -> str:
    return str(p.relative_to(ROOT))


def _read(p: Path) -> str:
    return p.read_text(encoding="utf-8")


def _fenced(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced code block."""
    return re.findall(r"^```(\w*)\n(.*?)^```", text, flags=re.S | re.M)


def _code(text: str) -> list[str]:
    """Every piece of code: fenced blocks' lines (backslash continuations joined) and inline code spans."""
    out = []
    for _, body in _fenced(text):
        out += body.replace("\\\n", " ").splitlines()
    prose = re.sub(r"^```\w*\n.*?^```", "", text, flags=re.S | re.M)
    out += re.findall(r"`([^`\n]+)`", prose)
    return out


def _keys():
    keys = gen_docs.recipe_keys()
    prompt = set().union(*(v for k, v in keys.items() if k.startswith("prompt.")))
    return {"backbone": keys["backbone"], "data": keys["data"], "train": keys["train"], "prompt": prompt}


# ----------------------------------------------------------------------------------------------------------------
# the build


def _mkdocs(config: Path, site: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # Material's end-of-life notice
    # never -q: it silences the warnings that --strict counts, and a broken link then builds with exit 0
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d",
                           str(site)], cwd=config.parent, capture_output=True, text=True, env=env, timeout=300)


def _need_mkdocs():
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("material") is None:
        pytest.fail('the docs tools are not installed: pip install -e ".[docs]" (tools/setup.sh does)')


def test_site_builds_in_strict_mode(tmp_path):
    _need_mkdocs()
    import yaml

    config = yaml.safe_load(_read(ROOT / "mkdocs.yml"))  # offline: no plugin that fetches, no web fonts
    plugins = {p if isinstance(p, str) else next(iter(p)) for p in config["plugins"]}
    assert not plugins & {"social", "privacy", "material/social", "material/privacy"}
    assert config["theme"]["font"] is False
    r = _mkdocs(ROOT / "mkdocs.yml", tmp_path / "site")
    assert r.returncode == 0, r.stdout + r.stderr
    for page in ("reference/recipe-schema", "reference/cli", "reference/exit-codes", "reference/api"):
        assert (tmp_path / "site" / page / "index.html").is_file(), page
    api = (tmp_path / "site" / "reference" / "api" / "index.html").read_text()
    assert "build_run_config" in api and "Resolve defaults" in api  # rendered from the docstring


def test_strict_build_fails_on_a_broken_link(tmp_path):
    _need_mkdocs()
    copy = tmp_path / "repo"
    shutil.copytree(DOCS, copy / "docs")
    shutil.copytree(ROOT / "tools", copy / "tools", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "mkdocs.yml", copy / "mkdocs.yml")
    (copy / "docs" / "index.md").write_text(_read(DOCS / "index.md") + "\nSee [the missing page](no-such-page.md).\n")
    r = _mkdocs(copy / "mkdocs.yml", tmp_path / "site")
    assert r.returncode != 0
    assert "no-such-page.md" in r.stdout + r.stderr


def test_generated_pages_hold_every_key_and_option():
    pages = gen_docs.pages()
    schema, cli = pages["reference/recipe-schema.md"], pages["reference/cli.md"]
    for section, names in gen_docs.recipe_keys().items():
        prefix = "prompt." if section.startswith("prompt.") else (section + "." if section else "")
        for name in names:
            assert f"`{prefix}{name}`" in schema, (section, name)
    for command, options in gen_docs.cli_options().items():
        assert f"## `edgevp {command}`".replace("edgevp `", "edgevp`") in cli or not command
        for opt in options - {"--help"}:
            assert f"`{opt}`" in cli, (command, opt)
    for code in gen_docs.exit_codes():
        assert f"| {code} |" in pages["reference/exit-codes.md"]


# ----------------------------------------------------------------------------------------------------------------
# what the pages name exists


KEY = re.compile(r"(?<![\w./-])(backbone|data|train|prompt)\.([a-z_][a-z0-9_]*)\b(?![/(])")


def test_every_recipe_key_mentioned_exists():
    keys = _keys()
    bad, seen = [], 0
    for page in PAGES:
        for m in KEY.finditer(_read(page)):
            section, name = m.groups()
            if name in ("py", "yaml", "md") or m.string[m.end():m.end() + 1] == ".":  # a file or a module path
                continue
            seen += 1
            if name not in keys[section] and f"{section}.{name}" not in DELIBERATE_TYPOS:
                bad.append(f"{_rel(page)}: {section}.{name}")
    assert seen > 20
    assert not bad, "recipe keys that are not in the schema: " + ", ".join(bad)


def test_every_yaml_recipe_shown_parses():
    from edgevp.recipe import build_run_config

    shown = 0
    for page in PAGES:
        for lang, body in _fenced(_read(page)):
            if lang == "yaml":
                import yaml

                build_run_config(yaml.safe_load(body))  # raises ConfigError on a key or value the schema refuses
                shown += 1
    assert shown >= 1


COMMAND_AT = r"(?:^|(?<=-m )|(?<=&& )|(?<=; )|(?<=\\$ ))"  # where a word after `edgevp` is a command


def _options(rest: str) -> list[str]:
    """The options in the rest of a command line, up to a comment or the next command."""
    rest = re.split(r"\s#|&&|;|\$\(", rest)[0]
    return re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", rest)


def _tool_options() -> dict[str, set[str]]:
    """tools/NAME.py -> the options its argparse parser declares (`add_argument("-o", "--out", ...)`)."""
    out = {}
    for p in sorted((ROOT / "tools").glob("*.py")):
        calls = " ".join(re.findall(r"add_argument\(([^)]*)", _read(p)))
        out[_rel(p)] = set(re.findall(r"[\"'](-[\w-]+)[\"']", calls)) | {"--help"}
    return out


def test_every_command_and_option_mentioned_exists():
    cli, tools = gen_docs.cli_options(), _tool_options()
    every = set().union(*cli.values(), *tools.values())
    bad, commands = [], set()
    for page in PAGES:
        text = _read(page)
        for code in _code(text):
            for m in re.finditer(COMMAND_AT + r"edgevp\s+([a-z][\w-]*)", code):
                if m.group(1) not in cli:
                    bad.append(f"{_rel(page)}: unknown command 'edgevp {m.group(1)}' in `{code}`")
            for m in re.finditer(r"(?<![\w./-])edgevp\s+([a-z][\w-]*)", code):
                command = m.group(1)
                if command not in cli:
                    continue
                commands.add(command)
                for opt in _options(code[m.end():]):
                    if opt not in cli[command] | cli[""]:
                        bad.append(f"{_rel(page)}: 'edgevp {command}' has no option {opt} (in `{code}`)")
            for m in re.finditer(r"(?<![\w./-])(tools/[\w-]+\.py)\b", code):
                if m.group(1) in tools:
                    bad += [f"{_rel(page)}: {m.group(1)} has no option {opt} (in `{code}`)"
                            for opt in _options(code[m.end():]) if opt.startswith("--") and opt not in tools[m.group(1)]]
        for opt in re.findall(r"(?<![\w-])(--[A-Za-z][\w-]*)", text):
            if opt not in every and opt not in OTHER_TOOLS:
                bad.append(f"{_rel(page)}: {opt} is an option of no edgevp command or tool")
    assert not bad, "\n".join(bad)
    assert commands >= {"train", "condense", "export", "pack", "profile", "report", "eval", "predict"}


def test_the_help_texts_name_only_real_options():
    """The same check over the generated CLI reference: every help text and epilog's example is a real command line."""
    cli = gen_docs.cli_options()
    bad = []
    for code in _code(gen_docs.cli_md()):
        for m in re.finditer(r"(?<![\w./-])edgevp\s+([a-z][\w-]*)", code):
            command = m.group(1)
            if command not in cli:
                bad.append(f"unknown command in `{code}`")
                continue
            bad += [f"'edgevp {command}' has no option {opt} (in `{code}`)"
                    for opt in _options(code[m.end():]) if opt not in cli[command] | cli[""]]
    assert not bad, "\n".join(bad)


EXIT_WORDS = re.compile(r"\bexit(?:s|ed|ing)?(?: code)?(?: with)? (\d+)\b", re.I)


def test_every_exit_code_mentioned_exists():
    codes = set(gen_docs.exit_codes())
    bad, seen = [], 0
    for page in PAGES:
        text = _read(page)
        found = [int(c) for c in EXIT_WORDS.findall(text)]
        # "Exit codes: 3 ... · 4 ...", "Exit codes of eval / predict: 2 ... · 4 ...", "...: 3 ...; 4 ..."
        for m in re.finditer(r"[Ee]xit\s+codes?[^:|]{0,40}:(.*?)(?:\n\n|$)", text, flags=re.S):
            found += [int(c) for c in re.findall(r"(?:^\s*|[:·;]\s*)(\d+) (?=[a-zA-Z])", m.group(1))]
        seen += len(found)
        bad += [f"{_rel(page)}: exit {c}" for c in found if c not in codes]
    assert seen > 20
    assert not bad, "exit codes that edgevp/errors.py does not have: " + ", ".join(bad)


def test_exit_code_tables_list_exactly_the_codes():
    codes = set(gen_docs.exit_codes())
    tables = 0
    for page in PAGES:
        for m in re.finditer(r"^#+ Exit codes\n\n(?:.*\n)*?\| code \| meaning \|\n\|[-:| ]+\|\n((?:\|.*\|\n)+)",
                             _read(page), flags=re.M):
            rows = {int(r) for r in re.findall(r"^\| (\d+) \|", m.group(1), flags=re.M)}
            assert rows == codes, f"{_rel(page)}: the exit-code table lists {sorted(rows)}, the code has {sorted(codes)}"
            tables += 1
    assert tables >= 1


def _expand(path: str) -> list[str]:
    m = re.search(r"\{([^{}]*)\}", path)
    if not m:
        return [path]
    return [p for alt in m.group(1).split(",") for p in _expand(path[:m.start()] + alt + path[m.end():])]


def test_every_repository_path_mentioned_exists():
    bad, seen = [], 0
    for page in PAGES:
        for code in _code(_read(page)):
            for raw in REPO_PATH.findall(code):
                if "<" in raw:  # a placeholder: recipes/<name>.yaml
                    continue
                for path in _expand(raw.rstrip(".,")):
                    seen += 1
                    if not glob.glob(str(ROOT / path)):
                        bad.append(f"{_rel(page)}: {path}")
    assert seen > 20
    assert not bad, "paths that are not in the repository: " + ", ".join(bad)


def test_the_readme_links_into_the_docs():
    """The README's relative links (mkdocs checks the pages' own) name files that exist, and headings that exist."""
    from markdown.extensions.toc import slugify

    links = re.findall(r"\]\(([^)\s]+)\)", _read(ROOT / "README.md"))
    local = [link for link in links if not re.match(r"\w+://", link)]
    assert sum(link.startswith("docs/") for link in local) >= 10
    for link in local:
        path, _, anchor = link.partition("#")
        target = ROOT / path if path else ROOT / "README.md"
        assert target.exists(), f"README links to {link}: no such file"
        if anchor:
            headings = re.findall(r"^#+ (.+)$", re.sub(r"^```.*?^```", "", _read(target), flags=re.S | re.M),
                                  flags=re.M)
            assert anchor in {slugify(h, "-") for h in headings}, f"README links to {link}: no such heading"


@pytest.mark.parametrize("module", ["edgevp/condense/pc.py", "edgevp/export/onnx.py", "edgevp/export/ort.py"])
def test_docstrings_cite_only_files_in_the_repository(module):
    import ast

    doc = ast.get_docstring(ast.parse(_read(ROOT / module))) or ""
    for cited in re.findall(r"[\w./-]+\.md\b", doc):
        assert (ROOT / cited).is_file(), f"{module} cites {cited}, which is not in the repository"


def test_the_plugin_example_registers_builds_and_folds():
    import torch

    import edgevp
    from edgevp import registry
    from edgevp.export.fold import to_deploy

    code = re.search(r"```python\n(.*?)```", _read(DOCS / "extending.md"), flags=re.S).group(1)
    module = types.ModuleType("docs_extending_example")  # as if the user's own module
    sys.modules[module.__name__] = module
    try:
        exec(compile(code, str(DOCS / "extending.md"), "exec", dont_inherit=True), module.__dict__)
        cfg = edgevp.build_run_config({"method": "bias", "backbone": {"name": "test_vit", "weights": "none",
                                                                      "img_size": 32}})
        model = edgevp.build_model(cfg, num_classes=3).eval()
        x = torch.rand(2, 3, 32, 32)
        with torch.no_grad():
            assert (model(x) - to_deploy(model).eval()(x)).abs().max() < 1e-5
    finally:
        registry._METHODS.pop("bias", None)
        sys.modules.pop(module.__name__, None)
