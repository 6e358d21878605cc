"""int8 on ONNX Runtime CPU, the evidence behind `ExportOptions.calib_method`'s default (issue 12): every static
calibration method (MinMax, percentile, entropy) x op set (ORT's default set, MatMul/Gemm/Conv only) plus dynamic
int8, and fp16 for reference, on the same test images as the fp32 export, and the latency of each graph form as a
ratio to fp32 measured in one run.

Per run directory (the demo's runs, `--vitb` adds a ViT-B/16-sized model):

- fp32: the run's export (`RUN/export/model.onnx` and its `test.npz`, what `edgevp export` writes; exported into the
  work directory when the run has none). Normalisation is inside the graph, so inputs are the [0, 1] test images;
- calibration: the first `--calib-images` training images, exactly what `edgevp export --target ort-int8` reads;
- each variant is built with the shipped `edgevp.export.ort.to_int8` / `to_fp16`;
- accuracy on the bundled test split (`test.npz`: the same images and labels `edgevp eval` reads): top-1, its drop vs
  the fp32 ONNX, top-1 agreement with fp32 and the largest logit difference. A drop above the export gate's 2 points
  is a fail;
- latency (`edgevp.profile.compare`: every variant in its own process, `--rounds` interleaved rounds with the order
  flipped each round, median of rounds) at batch 1 and 8, as ratios to fp32. The calibration method changes scales,
  not the graph, so latency is measured once per op set.

The ViT-B/16-sized model has no pretrained weights here (none is reachable offline): random-init ViT-B/16 at 112 px
with random VPT-deep prompts (10 per layer) and a head fitted by logistic regression on its features of 600
Fashion-MNIST training images, so its test top-1 is a real (if modest) accuracy that quantisation can lose. Its
activations lack the outlier channels of pretrained ViTs, so it is a weaker test of calibration than DINOv2.

    python tools/bench_int8.py /tmp/demo/<stamp>/{linear,lorvp,vpt_deep,vpt_deep-pc30,groups-lorvp} --vitb \\
        -o /tmp/bench_int8                       # about 40 min on 2 shared cores; results.json + results.md
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CALIB = ["minmax", "percentile", "entropy"]
OPS = ["all", "matmul"]
MAX_DROP = 2.0  # the export gate's default (ExportOptions.max_drop)


def static_name(method: str, ops: str) -> str:
    return f"int8-{method}-{ops}"


def ensure_export(run: Path, work: Path, test_images: int) -> tuple[Path, Path]:
    """The run's fp32 ONNX and test.npz: its own export when it has one, else a new export into `work`."""
    own = run / "export"
    if (own / "model.onnx").is_file() and (own / "test.npz").is_file():
        return own / "model.onnx", own / "test.npz"
    from edgevp.export.pipeline import ExportOptions, export_run

    export_run(run, ExportOptions(target="onnx", out=work, test_images=test_images))
    return work / "model.onnx", work / "test.npz"


def calibration_images(run: Path, n: int) -> np.ndarray:
    """The first `n` training images in [0, 1], as `edgevp export --target ort-int8` calibrates."""
    import torch

    from edgevp.data import load_data
    from edgevp.model import load_run

    cfg, model, _ = load_run(run)
    ds = load_data(cfg.data, model.info).train
    return torch.stack([ds[i][0] for i in range(min(n, len(ds)))]).numpy().astype(np.float32)


def build_variants(fp32: Path, calib: np.ndarray, work: Path, methods: list[str]) -> dict[str, dict]:
    """Every reduced-precision form of `fp32`, built by the shipped converters; name -> {path, build_seconds}."""
    from edgevp.export.ort import to_fp16, to_int8

    jobs = {"fp16": lambda p: to_fp16(fp32, p), "int8-dynamic": lambda p: to_int8(fp32, p, None, "dynamic")}
    for ops in OPS:
        for method in methods:  # the ranges are calibrated once per method and shared by both op sets
            jobs[static_name(method, ops)] = (lambda m, o: lambda p: to_int8(
                fp32, p, calib, "static", m, o, ranges=work / f"ranges.{m}.json"))(method, ops)
    out = {"fp32": {"path": fp32, "build_seconds": 0.0}}
    for name, build in jobs.items():
        path = work / f"model.{name}.onnx"
        t = time.time()
        build(path)
        out[name] = {"path": path, "build_seconds": round(time.time() - t, 1)}
        print(f"  built {name} in {out[name]['build_seconds']} s", flush=True)
    return out


def accuracy(variants: dict[str, dict], test: Path, threads: int) -> dict[str, dict]:
    """Top-1 of every variant on test.npz, its drop vs fp32, agreement with fp32 and the largest logit difference."""
    from edgevp.export.onnx import compare, run_ort, session

    with np.load(test) as z:
        x, y = z["images"].astype(np.float32) / 255.0, z["labels"]
        torch_top1 = float(z["torch_top1"]) if "torch_top1" in z.files else None
    logits = {name: run_ort(session(v["path"], threads), x, 50) for name, v in variants.items()}
    ref = logits["fp32"]
    top1_fp32 = float((ref.argmax(1) == y).mean() * 100)
    rows = {}
    for name, got in logits.items():
        top1 = float((got.argmax(1) == y).mean() * 100)
        rows[name] = {"top1": top1, "drop": top1_fp32 - top1, **compare(ref, got), "torch_top1": torch_top1,
                      "pass": top1_fp32 - top1 <= MAX_DROP}
    return rows


def latency(variants: dict[str, dict], rounds: int, threads: int) -> dict[str, dict]:
    """p50 ratios to fp32 at batch 1 and 8 of one graph per op set (fp32, fp16, static all/matmul, dynamic)."""
    from edgevp.profile.compare import Variant, compare

    names = ["fp32", "fp16", static_name("minmax", "all"), static_name("minmax", "matmul"), "int8-dynamic"]
    timed = [Variant(n, str(variants[n]["path"])) for n in names]
    out: dict[str, dict] = {n: {} for n in names}
    for batch, iters in ((1, 30), (8, 8)):
        res = compare(timed, [batch], rounds=rounds, warmup=3, iters=iters, threads=threads)
        for row in res["rows"]:
            out[row["variant"]][f"b{batch}"] = {"p50_ms": row["p50_ms"], "ratio": row["ratio_p50"],
                                                "ratio_rounds": row["ratio_p50_rounds"]}
    return out


def vitb_run(work: Path, seed: int = 0) -> Path:
    """A ViT-B/16-sized run directory: random-init backbone at 112 px, random VPT-deep-10 prompts, a head fitted by
    logistic regression on the prompted model's features of 600 Fashion-MNIST training images."""
    import torch
    from sklearn.linear_model import LogisticRegression

    from bench_multitask import _randomise
    from edgevp.data import load_data
    from edgevp.model import build_model
    from edgevp.recipe import build_run_config
    from edgevp.runs import RunDir, save_checkpoint

    cfg = build_run_config({"method": "vpt", "prompt": {"num_tokens": 10, "deep": True},
                            "backbone": {"name": "vit_base_patch16_224", "weights": "none", "img_size": 112},
                            "data": {"name": "fashion_mnist", "limit_train": 600, "limit_val": 100, "limit_test": 500},
                            "train": {"seed": seed, "epochs": 0}})
    model = build_model(cfg, 10).eval()
    _randomise(model, seed)
    splits = load_data(cfg.data, model.info)
    feats: list[torch.Tensor] = []
    hook = model.head.register_forward_pre_hook(lambda _m, args: feats.append(args[0].detach()))
    with torch.no_grad():
        for i in range(0, len(splits.train), 50):
            model(torch.stack([splits.train[j][0] for j in range(i, min(i + 50, len(splits.train)))]))
    hook.remove()
    clf = LogisticRegression(max_iter=2000, C=1.0).fit(torch.cat(feats).numpy(), splits.train.labels)
    with torch.no_grad():
        model.head.weight.copy_(torch.as_tensor(clf.coef_, dtype=torch.float32))
        model.head.bias.copy_(torch.as_tensor(clf.intercept_, dtype=torch.float32))
    run = RunDir.create(work / "vitb-run", cfg, ["tools/bench_int8.py --vitb"],
                        {"backbone": cfg.backbone.name, "weights": "none", "weights_sha256": model.info.weights_sha256,
                         "note": "random-init ViT-B/16, random VPT-deep prompts, head fitted by logistic regression"})
    for which in ("best", "last"):
        save_checkpoint(run.checkpoint(which), model.trainable_state(), cfg, num_classes=10, epoch=-1)
    return run.path


def study(label: str, run: Path, work: Path, args) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    fp32, test = ensure_export(run, work / "export", args.test_images)
    print(f"{label}: calibrating on {args.calib_images} training images", flush=True)
    variants = build_variants(fp32, calibration_images(run, args.calib_images), work, args.calib)
    acc = accuracy(variants, test, args.threads)
    lat = latency(variants, args.rounds, args.threads) if args.rounds else {}
    return {"label": label, "run": str(run), "accuracy": acc, "latency": lat,
            "build_seconds": {n: v["build_seconds"] for n, v in variants.items()}}


def markdown(results: list[dict], conditions: str, methods: list[str]) -> str:
    names = ["fp16", "int8-dynamic"] + [static_name(m, o) for o in OPS for m in methods]
    lines = [f"Conditions: {conditions}", "",
             "Test top-1 (points lost vs the fp32 ONNX in brackets; **bold**: over the 2-point gate)", "",
             "| run | PyTorch | fp32 ONNX | " + " | ".join(names) + " |", "|---|" + "---:|" * (len(names) + 2)]
    for r in results:
        a = r["accuracy"]
        cells = [f"{a[n]['top1']:.2f} ({-a[n]['drop']:+.2f})" if a[n]["pass"] else
                 f"**{a[n]['top1']:.2f} ({-a[n]['drop']:+.2f})**" for n in names]
        torch_top1 = a["fp32"]["torch_top1"]
        lines.append(f"| {r['label']} | {'' if torch_top1 is None else f'{torch_top1:.2f}'} | {a['fp32']['top1']:.2f} | "
                     + " | ".join(cells) + " |")
    lines += ["", "Top-1 agreement with fp32 / largest logit difference", "",
              "| run | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for r in results:
        a = r["accuracy"]
        lines.append(f"| {r['label']} | " + " | ".join(f"{a[n]['top1_agreement']:.3f} / {a[n]['max_abs']:.2g}"
                                                        for n in names) + " |")
    timed = [n for n in (results[0]["latency"] if results else {}) if n != "fp32"]
    if timed:
        lines += ["", "Latency, p50 as a ratio to fp32 (ORT CPU; batch 1 / batch 8; per-round ratios in results.json)",
                  "", "| run | fp32 p50 ms b1 / b8 | " + " | ".join(timed) + " |", "|---|---:|" + "---:|" * len(timed)]
        for r in results:
            lat = r["latency"]
            lines.append(f"| {r['label']} | {lat['fp32']['b1']['p50_ms']:.1f} / {lat['fp32']['b8']['p50_ms']:.1f} | "
                         + " | ".join(f"{lat[n]['b1']['ratio']:.2f} / {lat[n]['b8']['ratio']:.2f}" for n in timed)
                         + " |")
    worst = {n: max(r["accuracy"][n]["drop"] for r in results) for n in names if n.startswith("int8-")}
    lines += ["", "Largest drop over the runs: " + ", ".join(f"{n} {d:+.2f}" for n, d in worst.items())]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="*", type=Path, help="run directories (the demo's)")
    ap.add_argument("--vitb", action="store_true", help="add the ViT-B/16-sized model")
    ap.add_argument("-o", "--out", type=Path, default=Path("bench_int8"))
    ap.add_argument("--calib-images", type=int, default=64, help="as ExportOptions.calib_images")
    ap.add_argument("--test-images", type=int, default=500, help="for runs exported here (as ExportOptions)")
    ap.add_argument("--rounds", type=int, default=3, help="latency rounds; 0 skips latency")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calib", type=lambda v: v.split(","), default=CALIB,
                    help="calibration methods, comma-separated (entropy takes minutes per model: ORT's threshold "
                         "search is Python)")
    args = ap.parse_args()
    if not args.runs and not args.vitb:
        ap.error("give run directories and/or --vitb")
    args.out.mkdir(parents=True, exist_ok=True)
    from edgevp.profile.device import conditions

    machine = conditions()
    import onnxruntime

    import os

    cond = (f"{machine.get('cpu', 'CPU')} ({machine.get('cpu_count')} cores), ORT {onnxruntime.__version__} CPU, "
            f"{args.threads} threads, {args.calib_images} calibration images, load average at start "
            f"{os.getloadavg()[0]:.1f}")
    todo = [(p.name, p) for p in args.runs]
    results = []
    if args.vitb:
        todo.append(("vitb16-112 (random init)", None))
    for label, run in todo:
        work = args.out / label.split(" ")[0]
        if run is None:
            run = vitb_run(work) if not (work / "vitb-run" / "manifest.json").is_file() else work / "vitb-run"
        results.append(study(label, run, work, args))
        (args.out / "results.json").write_text(json.dumps({"conditions": cond, "results": results}, indent=1,
                                                          default=str))
    md = markdown(results, cond, args.calib)
    (args.out / "results.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
