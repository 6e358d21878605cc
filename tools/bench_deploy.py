"""Prompt overhead as deployed: ONNX Runtime CPU latency (batch 1, fixed threads) and graph MACs of unfolded vs
folded prompts, as ratios to the bare backbone's own export measured in the same run (the headline table of the
export and profile stages).

Variants per backbone: the bare backbone, LoR-VP r4 unfolded (input add) and folded (into pos_embed), VPT-deep-50
unfolded and KV-folded, VPT-deep-50 condensed to 30 % of its prompts (non-uniform per layer) unfolded and KV-folded,
E²VPT default sizes (10 visual + 5 KV prompts) unfolded and folded. Prompts are random and
far from zero (so a fold that dropped them would show in the parity column). Every variant goes through the shipped
export path (`edgevp.export.onnx.export_onnx`: dynamo, opset 18, dynamic batch, onnxsim) and is measured in its own
process, interleaved over rounds with the order flipped each round, by `edgevp.profile.compare`.

    python tools/bench_deploy.py        # ViT-B/16-sized (random init, 224 px) and DINOv2 ViT-S (112 px)
    python tools/bench_deploy.py --models dinov2 --rounds 5 --iters 50 --out runs/bench_deploy
    python tools/bench_deploy.py --swin     # Swin-B-sized (random init, 224 px): bare, VPT-deep-50 unfolded and
                                            # KV-folded (constant keys/values shared by every window), E²VPT folded,
                                            # LoR-VP folded (its patch embedding has a norm: the mean fold)

Each variant also prints PyTorch folded-vs-unfolded max abs logit difference and the analytic MACs (edgevp.cost)
next to the graph's.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from edgevp.condense.pc import condensed_state, finetune_config  # noqa: E402
from edgevp.cost import model_macs  # noqa: E402
from edgevp.condense.select import keep_masks  # noqa: E402
from edgevp.recipe import build_run_config  # noqa: E402
from edgevp.export.fold import to_deploy  # noqa: E402
from edgevp.export.onnx import export_onnx, run_ort, session, simplify  # noqa: E402
from edgevp.io import write_json  # noqa: E402
from edgevp.model import build_model  # noqa: E402
from edgevp.profile.compare import Variant, compare  # noqa: E402

MODELS = {"vit_b16": {"name": "vit_base_patch16_224", "weights": "none", "img_size": 224},
          "dinov2": {"name": "vit_small_patch14_dinov2", "weights": "offline", "img_size": 112},
          "swin_b": {"name": "swin_base_patch4_window7_224", "weights": "none", "img_size": 224}}
DEFAULT_MODELS = ["vit_b16", "dinov2"]
SWIN_PLAN = [("bare backbone", "linear", True), ("VPT-deep-50 unfolded", "vpt", False),
             ("VPT-deep-50 KV-folded", "vpt", True), ("E2VPT 10+5 folded", "e2vpt", True),
             ("LoR-VP r4 folded", "lorvp", True)]


def _model(backbone: dict, method: str, prompt: dict | None = None):
    model = build_model(build_run_config({"method": method, "prompt": prompt or {}, "backbone": backbone}), 10).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.method.named_parameters():
            if name == "B":
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return model


def _condensed(backbone: dict, vpt, keep: float = 0.3):
    """VPT-deep-50 condensed to `keep` of its prompts by random scores (non-uniform per layer, as PC's are)."""
    cfg = build_run_config({"method": "vpt", "prompt": {"num_tokens": 50, "deep": True}, "backbone": backbone})
    scores = [torch.rand(50, generator=torch.Generator().manual_seed(i)) for i in range(vpt.info.depth)]
    masks = keep_masks(scores, round(keep * 50 * vpt.info.depth))
    prompt_cfg, method_state = vpt.method.keep_units(masks)
    pc = build_model(finetune_config(cfg, prompt_cfg, 1, None, 0.0), 10).eval()
    pc.load_trainable_state(condensed_state(vpt, method_state))
    return pc


def variants_for(backbone: dict, work: Path) -> tuple[list[Variant], dict]:
    """Export every variant; returns the variants and, per variant, ORT-vs-PyTorch max abs logit difference."""
    size = backbone["img_size"]
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    models = {"linear": _model(backbone, "linear"), "lorvp": _model(backbone, "lorvp", {"rank": 4}),
              "vpt": _model(backbone, "vpt", {"num_tokens": 50, "deep": True}),
              "e2vpt": _model(backbone, "e2vpt", {"num_tokens": 10, "num_kv": 5})}
    if models["linear"].info.is_swin:
        return _export(SWIN_PLAN, models, work, x, size)
    models["pc"] = _condensed(backbone, models["vpt"])
    plan = [("bare backbone", "linear", True), ("LoR-VP r4 unfolded", "lorvp", False),
            ("LoR-VP r4 folded", "lorvp", True), ("VPT-deep-50 unfolded", "vpt", False),
            ("VPT-deep-50 KV-folded", "vpt", True), ("VPT-deep-50 PC 30 % unfolded", "pc", False),
            ("VPT-deep-50 PC 30 % KV-folded", "pc", True), ("E2VPT 10+5 unfolded", "e2vpt", False),
            ("E2VPT 10+5 folded", "e2vpt", True)]
    return _export(plan, models, work, x, size)


def _export(plan: list, models: dict, work: Path, x: torch.Tensor, size: int) -> tuple[list[Variant], dict]:
    variants, parity = [], {}
    for i, (name, key, fold) in enumerate(plan):
        model = models[key]
        module = to_deploy(model) if fold else model
        path = work / f"v{i}.onnx"
        t = time.time()
        produced = export_onnx(module, path, (3, size, size))
        simplify(path)
        with torch.no_grad():
            ref = model(x).numpy()
            fold_diff = float((module(x) - model(x)).abs().max()) if fold else 0.0
        extra = model.method.extra_tokens()
        if fold:
            extra = [(0, kv) for _, kv in extra]
        analytic = model_macs(model.info, 10, extra)
        parity[name] = float(np.abs(run_ort(session(path), x.numpy(), 2) - ref).max())
        info = {"fold": module.report.pixel if fold and key == "lorvp" else "kv" if fold and key != "linear" else "",
                "export_s": round(time.time() - t, 1), "exporter": produced["exporter"]}
        variants.append(Variant(name, str(path), info=info))
        info.update(fold_max_abs=fold_diff, analytic_macs=analytic and analytic.total)
        print(f"  exported {name}: {info['export_s']} s, ORT vs PyTorch max abs {parity[name]:.2e}, folded vs "
              f"unfolded (PyTorch) max abs {fold_diff:.2e}, analytic MACs {analytic and analytic.total}", flush=True)
    return variants, parity


def table(rows: list[dict], parity: dict) -> str:
    head = ("| variant | p50 ms | p90 ms | p50 ratio vs bare | ratio per round | GMACs | MAC ratio | ORT vs PyTorch max abs "
            "| analytic GMACs | folded vs unfolded max abs |")
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lo, hi = min(r["ratio_p50_rounds"]), max(r["ratio_p50_rounds"])
        lines.append(f"| {r['variant']} | {r['p50_ms']:.2f} | {r['p90_ms']:.2f} | {r['ratio_p50']:.3f} | {lo:.3f}–{hi:.3f} | "
                     f"{r['macs'] / 1e9:.4f} | {r.get('ratio_macs', float('nan')):.3f} | {parity[r['variant']]:.1e} | "
                     f"{(r.get('analytic_macs') or float('nan')) / 1e9:.4f} | {r.get('fold_max_abs', 0.0):.1e} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=DEFAULT_MODELS, choices=list(MODELS))
    ap.add_argument("--swin", action="store_true", help="only Swin-B (swin_base_patch4_window7_224, random weights)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help="also write bench_deploy.{json,md} here")
    args = ap.parse_args()
    results, md = {}, []
    for key in (["swin_b"] if args.swin else args.models):
        b = MODELS[key]
        print(f"{b['name']} @ {b['img_size']} px: exporting", flush=True)
        with tempfile.TemporaryDirectory() as d:
            variants, parity = variants_for(b, Path(d))
            load_before = os.getloadavg()
            res = compare(variants, [1], args.rounds, args.warmup, args.iters, args.threads)
            load_after = os.getloadavg()
        cond = res["conditions"][variants[0].name]
        title = (f"{b['name']} ({b['weights']} weights) @ {b['img_size']} px — ONNX Runtime "
                 f"{cond.get('ort_version')} CPU, batch 1, {args.threads} threads, spinning off, {args.warmup} "
                 f"warm-up + {args.iters} timed calls x {args.rounds} interleaved rounds (one process each), "
                 f"median of round medians; "
                 f"load average before/after {load_before[0]:.2f}/{load_after[0]:.2f}")
        md += [f"### {title}", "", table(res["rows"], parity), ""]
        print("\n" + "\n".join(md[-4:]), flush=True)
        results[key] = {**res, "parity_max_abs": parity, "load_avg": [load_before, load_after]}
    if args.out:
        write_json(args.out / "bench_deploy.json", results)
        (args.out / "bench_deploy.md").write_text("\n".join(md))


if __name__ == "__main__":
    main()
