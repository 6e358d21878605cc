"""The import graph's edges that go the wrong way, measured against the layers in this checkout's pyproject.toml.

    python tools/import_edges.py                 # this checkout
    python tools/import_edges.py --root OTHER    # another checkout (e.g. a `git worktree` of an older commit),
                                                 # held against this checkout's layers

import-linter fails on the first broken contract; this lists every edge, so a refactor can be compared before and
after: upward edges (a lower layer imports a higher one), sideways edges (between the packages of one layer, which
import-linter's `A : B` layers forbid) and the torch-free modules that reach torch (lazily imported too, shortest
chain each). Uses grimp, the graph library import-linter is built on.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

HERE = Path(__file__).resolve().parent.parent


def contracts() -> dict[str, dict]:
    config = tomllib.loads((HERE / "pyproject.toml").read_text())["tool"]["importlinter"]
    return {c["id"]: c for c in config["contracts"]}


def layer_of(module: str, layers: list[list[str]]) -> int | None:
    parts = module.split(".")
    for i, names in enumerate(layers):
        if len(parts) > 1 and parts[1] in names:
            return i
    return None


def measure(root: Path) -> dict[str, list[str]]:
    import grimp

    sys.path.insert(0, str(root))
    graph = grimp.build_graph("edgevp", include_external_packages=True, exclude_type_checking_imports=True,
                              cache_dir=None)
    c = contracts()
    layers = [[n.strip() for n in layer.split(":")] for layer in c["layers"]["layers"]]  # top first
    torch_free = [m.removeprefix("edgevp.") for m in c["torch-free"]["source_modules"]]
    out: dict[str, list[str]] = {"upward": [], "sideways": [], "torch": []}
    for importer in sorted(m for m in graph.modules if m.startswith("edgevp.")):
        for imported in sorted(graph.find_modules_directly_imported_by(importer)):
            a, b = layer_of(importer, layers), layer_of(imported, layers)
            if a is None or b is None or importer.split(".")[1] == imported.split(".")[1]:
                continue
            if a > b:
                out["upward"].append(f"{importer} -> {imported}")
            elif a == b:
                out["sideways"].append(f"{importer} -> {imported}")
        if importer.split(".")[1] in torch_free and "torch" in graph.modules:
            chain = graph.find_shortest_chain(importer=importer, imported="torch")
            if chain:
                out["torch"].append(" -> ".join(chain))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=HERE, help="the checkout to measure (default: this one)")
    found = measure(ap.parse_args().root.resolve())
    titles = {"upward": "upward edges (a lower layer imports a higher one)",
              "sideways": "sideways edges (between the packages of one layer)",
              "torch": "torch-free modules that reach torch (shortest chain, lazy imports included)"}
    for key, title in titles.items():
        print(f"{title}: {len(found[key])}")
        for edge in found[key]:
            print(f"    {edge}")


if __name__ == "__main__":
    main()
