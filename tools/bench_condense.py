"""Prompt Condensation on real data: PC (global ranking) at a keep ratio vs the uncondensed model, vs keeping a
random subset and vs a per-layer ranking — same budget, same fine-tuning, same run.

    python tools/bench_condense.py --source runs/demo/<stamp>/vpt_deep        # a trained VPT run
    python tools/bench_condense.py                                             # trains the demo's VPT-deep first
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from edgevp.condense.pc import PCOptions, condense_pc  # noqa: E402
from edgevp.config import load_yaml  # noqa: E402
from edgevp.recipe import build_run_config  # noqa: E402
from edgevp.console import Reporter  # noqa: E402
from edgevp.demo import DEMO_SETS, RECIPE_DIR  # noqa: E402
from edgevp.runs import RunDir  # noqa: E402
from edgevp.train import fit  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", type=Path, help="trained VPT run directory (default: train the demo's VPT-deep)")
    ap.add_argument("--keep", type=float, default=0.3)
    ap.add_argument("--finetune-epochs", type=int, default=1)
    ap.add_argument("--score-batches", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    work = args.out or Path(tempfile.mkdtemp(prefix="bench_condense_"))
    rep = Reporter(quiet=True)
    src = args.source
    if src is None:
        src = work / "source"
        fit(build_run_config(load_yaml(RECIPE_DIR / "vpt_deep.yaml"), DEMO_SETS), out=src, reporter=rep)
    info = RunDir(src).manifest()["train_info"]
    rows = []
    for ranking in ("global", "layer", "random"):
        r = condense_pc(src, work / f"pc-{ranking}", PCOptions(keep=args.keep, ranking=ranking, seed=args.seed,
                                                             finetune_epochs=args.finetune_epochs,
                                                             score_batches=args.score_batches), rep)
        rows.append(r)
    base = rows[0]
    print(f"\nsource: {src} (val top-1 {info['best_val_top1']:.2f}, test top-1 {info['test_top1']:.2f}); keep "
          f"{args.keep:.0%} = {base['kept']}/{base['total']} prompts, fine-tune {args.finetune_epochs} epoch(s)")
    print("| variant | kept per layer | MACs vs uncondensed | test top-1 after removal | val top-1 | test top-1 |")
    print("|---|---|---:|---:|---:|---:|")
    print(f"| uncondensed | {base['total'] // len(base['kept_per_layer'])} each | 1.000 | "
          f"{base['top1_before']['test']:.2f} | {base['top1_before']['val']:.2f} | {base['top1_before']['test']:.2f} |")
    for r in rows:
        name = {"global": "PC (global ranking)", "layer": "per-layer ranking", "random": "random"}[r["ranking"]]
        print(f"| {name} | {r['kept_per_layer']} | {r['macs']['after'] / r['macs']['before']:.3f} | "
              f"{r['top1_after_removal']['test']:.2f} | {r['top1_after_finetune']['val']:.2f} | "
              f"{r['top1_after_finetune']['test']:.2f} |")
    print(f"bare backbone MACs / uncondensed: {base['macs']['bare'] / base['macs']['before']:.3f}")
    if args.out is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
