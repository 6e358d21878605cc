"""The main job on the offline default: several methods trained on the same Fashion-MNIST subset with the offline
DINOv2 ViT-S/14, compared in one table (trainable parameters, top-1, training time); VPT-deep condensed with Prompt
Condensation; every run exported (prompts folded, parity-gated); the deployed forms profiled; one report; then a
second task on the same backbone (Fashion-MNIST's three super-classes) and every run packed into one graph."""
from __future__ import annotations

import datetime as _dt
from pathlib import Path

from .config import load_yaml
from .console import Reporter
from .errors import ConfigError
from .io import write_json, write_text
from .recipe import build_run_config
from .runs import RunDir

RECIPE_DIR = Path(__file__).resolve().parent.parent / "recipes" / "dinov2_fmnist"
# The demo's shared budget: the same data, epochs and optimiser for every method (CPU: a few minutes each).
DEMO_SETS = ["data.limit_train=1000", "data.limit_val=300", "data.limit_test=1000", "train.epochs=3"]


def run_demo(out: Path, methods: list[str], sets: list[str], quiet: bool = False, condense: bool = True,
             pack: bool = True) -> list[dict]:
    from .condense.pc import PCOptions, condense_pc
    from .train import fit

    if not RECIPE_DIR.is_dir():
        raise ConfigError(f"demo recipes not found in '{RECIPE_DIR}'", "run the demo from a clone of the repository")
    unknown = [m for m in methods if not (RECIPE_DIR / f"{m}.yaml").is_file()]
    if unknown:
        known = sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))
        raise ConfigError(f"no demo recipe for {', '.join(unknown)}", f"choose from {', '.join(known)}")
    root = Path(out) / _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    rep = Reporter(quiet=quiet)
    rows = []
    for m in methods:
        recipe = RECIPE_DIR / f"{m}.yaml"
        cfg = build_run_config(load_yaml(recipe), [*DEMO_SETS, *sets])
        rep.log(f"== {m}: {recipe.relative_to(RECIPE_DIR.parent.parent)} ==")
        res = fit(cfg, out=root / m, command=["edgevp", "demo"], reporter=Reporter(quiet=quiet))
        rows.append({"method": m, "trainable_params": res.params["trainable"], "prompt_params": res.params["prompt"],
                     "gmacs": res.macs and round(res.macs / 1e9, 4), "val_top1": round(res.best_val_top1, 2),
                     "test_top1": round(res.test_top1, 2), "train_seconds": round(res.train_seconds, 1),
                     "run_dir": str(res.run_dir)})
        if condense and m == "vpt_deep":  # condense step: keep the 30 % most important prompts, fine-tune 1 epoch
            rep.log("== vpt_deep + Prompt Condensation (keep 30 %) ==")
            r = condense_pc(res.run_dir, root / "vpt_deep-pc30", PCOptions(keep=0.3, finetune_epochs=1,
                                                                           score_batches=10), Reporter(quiet=quiet))
            info = RunDir(root / "vpt_deep-pc30").train_info()
            rows.append({"method": f"vpt_deep+pc30 ({r['kept']}/{r['total']})",
                         "trainable_params": info.trainable_params, "prompt_params": info.prompt_params,
                         "gmacs": round(r["macs"]["after"] / 1e9, 4), "val_top1": round(info.best_val_top1, 2),
                         "test_top1": round(info.test_top1, 2), "train_seconds": round(info.train_seconds, 1),
                         "run_dir": str(root / "vpt_deep-pc30")})
    table = format_table(rows)
    write_json(root / "summary.json", rows)
    write_text(root / "summary.md", table + "\n")
    print(table)
    base = next((r for r in rows if r["method"] == "linear"), None)
    for r in rows:
        if base is not None and r is not base and "+" not in r["method"]:
            delta = r["test_top1"] - base["test_top1"]
            verdict = "beats" if delta > 0 else "does not beat"
            print(f"{r['method']} {verdict} the linear probe: {delta:+.2f} points test top-1 (same data, epochs, "
                  f"optimiser, {r['train_seconds'] / max(base['train_seconds'], 1e-9):.1f}x its training time)")
    if condense and (root / "vpt_deep-pc30").is_dir():
        export_and_profile(root, [Path(r["run_dir"]) for r in rows], rep)
        if pack:
            pack_tasks(root, [Path(r["run_dir"]) for r in rows], sets, rep, quiet)
    print(f"summary: {root / 'summary.md'}")
    return rows


def export_and_profile(root: Path, runs: list[Path], rep: Reporter) -> None:
    """Export every run (prompts folded, ORT parity-gated), profile the condensed run's deployed form against the
    bare backbone, its unfolded form, its uncondensed source and the other runs (ONNX Runtime CPU, batch 1, each
    variant in its own process, interleaved rounds), then write one report across every run."""
    from .export.pipeline import ExportOptions, export_run
    from .profile.report_table import markdown
    from .profile.run import profile_targets
    from .report import write_report

    condensed = root / "vpt_deep-pc30"
    rep.log("== export: prompts folded into constants, ONNX checked against PyTorch on validation images ==")
    labels = {}
    for run in runs:
        side = export_run(run, ExportOptions(with_references=run == condensed))
        fold, par = side["fold"], side["parity"]
        kind = fold["kind"]
        how = {"pos_embed": "LoR-VP prompt folded into pos_embed", "kv": "prompts folded into per-layer K/V",
               "none": "nothing to fold"}.get(kind, f"{kind} fold")
        labels[run] = f"{run.name} ({'deployed' if kind == 'none' else 'folded'})"
        print(f"{run.name}: {how}; ORT vs PyTorch max abs {par['max_abs']:.1e}, top-1 agreement "
              f"{par['top1_agreement']:.3f} on {par['images']} images -> {', '.join(side['files'])}")
    rep.log("== profile: ONNX Runtime CPU, batch 1, ratios to the bare backbone ==")
    against = [Path(f"{labels[r]}={r / 'export' / 'model.onnx'}") for r in runs
               if r != condensed and r.name != "vpt_deep"]  # vpt_deep is already there as the uncondensed source
    result, _ = profile_targets(condensed, against, "ort", "cpu", [1], 10, 50, 3, None, None)
    print(markdown(result["rows"]))
    md, _ = write_report(runs, root / "report")
    print(f"report: {md} (Pareto plot: {md.parent / 'pareto.png'})")


def pack_tasks(root: Path, runs: list[Path], sets: list[str], rep: Reporter, quiet: bool) -> dict:
    """Train a second task on the same backbone (LoR-VP on Fashion-MNIST's super-classes), then pack it with every
    run into one graph, gated against each run's own export on its whole validation split."""
    from .export.pipeline import ExportOptions, export_run
    from .multitask.pipeline import PackOptions, pack
    from .tables import markdown_table
    from .train import fit

    rep.log("== a second task on the same backbone: Fashion-MNIST super-classes (clothing, footwear, bag), LoR-VP ==")
    cfg = build_run_config(load_yaml(RECIPE_DIR / "lorvp_groups.yaml"), [*DEMO_SETS, *sets])
    res = fit(cfg, out=root / "groups-lorvp", command=["edgevp", "demo"], reporter=Reporter(quiet=quiet))
    export_run(res.run_dir, ExportOptions())
    tasks = [*runs, Path(res.run_dir)]
    rep.log(f"== pack: {len(tasks)} tasks, one backbone, one graph; each task checked against its own export ==")
    side = pack(tasks, root / "pack", PackOptions(gate_images=cfg.data.limit_val or 300))
    rows = [[str(p["task"]), p["run"], str(t["num_classes"]), f"{p['top1_own_export']:.2f}", f"{p['top1_pack']:.2f}",
             f"{p['max_abs']:.1e}"] for p, t in zip(side["parity"]["per_task"], side["tasks"])]
    print(markdown_table(["task", "run", "classes", "val top-1 (own export)", "val top-1 (pack)", "max abs"], rows,
                         "rllrrr"))
    separate = sum((r / "export" / "model.onnx").stat().st_size for r in tasks)
    packed = side["onnx"]["bytes"]
    print(f"one pack: {packed / 2**20:.1f} MB for {len(tasks)} tasks vs {separate / 2**20:.1f} MB as separate exports "
          f"({packed / separate:.3f}x); mixed-batch max abs vs per-sample {side['parity']['mixed_batch']['max_abs']:.1e}"
          f" -> {root / 'pack'}")
    return side


DEMO_COLUMNS = [("method", "method", "{}"), ("trainable_params", "trainable params", "{:,}"),
                ("prompt_params", "prompt params", "{:,}"), ("gmacs", "GMACs/image", "{:.3f}"),
                ("val_top1", "val top-1", "{:.2f}"), ("test_top1", "test top-1", "{:.2f}"),
                ("train_seconds", "train time (s)", "{:.1f}")]


def format_table(rows: list[dict]) -> str:
    from .tables import cell, markdown_table

    headers = [h for _, h, _ in DEMO_COLUMNS]
    cells = [[cell(r.get(k), f) for k, _, f in DEMO_COLUMNS] for r in rows]
    return markdown_table(headers, cells, "l" + "r" * (len(DEMO_COLUMNS) - 1))
