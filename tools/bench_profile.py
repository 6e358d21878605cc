"""Headline prompt-overhead table: latency ratio (ONNX Runtime CPU, batch 1) and MAC ratio vs the bare backbone for
VPT-deep-50, its 30 %-condensed structure, E²VPT (10 visual + 5 KV), LoR-VP, and — when `edgevp.export` provides
`to_deploy` — the KV-folded VPT-deep-50 and the folded LoR-VP. Every variant is exported to ONNX, then measured in
its own process, interleaved over rounds, by `edgevp.profile.compare`.

    python tools/bench_profile.py                        # ViT-B/16-sized (random init, 224 px) and offline DINOv2 (112 px)
    python tools/bench_profile.py --models dinov2 --rounds 5 --iters 50
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from edgevp.condense.pc import condensed_config, condensed_state  # noqa: E402
from edgevp.condense.select import keep_masks  # noqa: E402
from edgevp.config import build_run_config  # noqa: E402
from edgevp.model import build_model  # noqa: E402
from edgevp.profile.compare import Variant, compare  # noqa: E402
from edgevp.profile.report_table import markdown  # noqa: E402

MODELS = {"vit_b16": {"name": "vit_base_patch16_224", "weights": "none", "img_size": 224},
          "dinov2": {"name": "vit_small_patch14_dinov2", "weights": "offline", "img_size": 112}}


def export(model, path: Path, size: int) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.rand(1, 3, size, size),), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"])
    return str(path)


def variants_for(backbone: dict, work: Path) -> list[Variant]:
    size = backbone["img_size"]

    def model(method, prompt=None):
        return build_model(build_run_config({"method": method, "prompt": prompt or {}, "backbone": backbone}), 10)

    try:
        from edgevp.export.fold import to_deploy
    except ImportError:
        to_deploy = None
    out = []
    bare = model("linear")
    out.append(Variant("bare backbone", export(bare, work / "bare.onnx", size)))
    vpt = model("vpt", {"num_tokens": 50, "deep": True})
    out.append(Variant("VPT-deep-50", export(vpt, work / "vpt50.onnx", size)))
    cfg = build_run_config({"method": "vpt", "prompt": {"num_tokens": 50}, "backbone": backbone})
    scores = [torch.rand(50, generator=torch.Generator().manual_seed(i)) for i in range(vpt.info.depth)]
    masks = keep_masks(scores, round(0.3 * 50 * vpt.info.depth))
    pc = build_model(condensed_config(cfg, [int(m.sum()) for m in masks], 1, None), 10)
    pc.load_trainable_state(condensed_state(vpt, masks))
    out.append(Variant("VPT-deep-50, PC 30 %", export(pc, work / "pc30.onnx", size)))
    e2 = model("e2vpt", {"num_tokens": 10, "num_kv": 5, "dropout": 0.0})
    out.append(Variant("E2VPT 10+5", export(e2, work / "e2vpt.onnx", size)))
    lor = model("lorvp", {"rank": 4})
    with torch.no_grad():
        lor.method.B.normal_()
    out.append(Variant("LoR-VP r4 (input add)", export(lor, work / "lorvp.onnx", size)))
    if to_deploy is not None:
        for name, m in (("VPT-deep-50 KV-folded", vpt), ("VPT-deep-50 PC 30 % KV-folded", pc),
                        ("E2VPT 10+5 folded", e2), ("LoR-VP r4 folded", lor)):
            out.append(Variant(name, export(to_deploy(m), work / f"{name.split()[0]}-{len(out)}.onnx", size)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    for key in args.models:
        with tempfile.TemporaryDirectory() as d:
            variants = variants_for(MODELS[key], Path(d))
            res = compare(variants, [1], args.rounds, args.warmup, args.iters, args.threads)
        b = MODELS[key]
        print(f"\n{b['name']} ({b['weights']} weights) @ {b['img_size']} px — ONNX Runtime "
              f"{res['conditions'][variants[0].name].get('ort_version')} CPU, batch 1, {args.threads} threads, "
              f"{args.iters} timed calls x {args.rounds} interleaved rounds, one process per variant and round")
        print(markdown(res["rows"]))


if __name__ == "__main__":
    main()
