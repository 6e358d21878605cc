"""Training-step cost of each prompt method relative to the frozen backbone's own forward+backward.

The bound: the bare backbone with its new head, run forward and backward with gradients flowing through every
block down to the input (what any prompt method needs at least), plus the optimiser step on the head. Each method's
full training step (forward, loss, backward, optimiser step) is timed on the same batch; variants are interleaved
over repetitions in one process and reported as ratios of medians, so machine noise cancels out.

    python tools/bench_train.py                              # offline DINOv2 ViT-S/14 at 112 px and 224 px
    python tools/bench_train.py --model vit_base_patch16_224 --weights none --img-size 224 --batch 8
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from edgevp.recipe import build_run_config  # noqa: E402
from edgevp.model import build_model  # noqa: E402

VARIANTS = {
    "linear": ("linear", {}),
    "vpt_shallow_10": ("vpt", {"num_tokens": 10, "deep": False}),
    "vpt_deep_10": ("vpt", {"num_tokens": 10, "deep": True}),
    "vpt_deep_50": ("vpt", {"num_tokens": 50, "deep": True}),
    "e2vpt_10+5": ("e2vpt", {"num_tokens": 10, "num_kv": 5, "dropout": 0.0}),
    "lorvp_r4": ("lorvp", {"rank": 4}),
}


def make_step(model, x, y, bound: bool):
    params = [p for _, p in model.trainable_parameters()]
    opt = torch.optim.SGD(params, lr=1e-3, momentum=0.9)

    def step():
        xin = x.detach().requires_grad_(True) if bound else x
        loss = F.cross_entropy(model(xin), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def bench(model_name: str, weights: str, img_size: int, batch: int, reps: int, warmup: int) -> list[dict]:
    torch.manual_seed(0)
    x = torch.rand(batch, 3, img_size, img_size)
    y = torch.randint(0, 10, (batch,))
    steps = {}
    for name, (method, prompt) in {"bound (backbone fwd+bwd)": ("linear", {}), **VARIANTS}.items():
        cfg = build_run_config({"method": method, "prompt": prompt,
                                "backbone": {"name": model_name, "weights": weights, "img_size": img_size}})
        model = build_model(cfg, 10).train()
        steps[name] = (make_step(model, x, y, bound=name.startswith("bound")), model.param_summary()["trainable"])
    times = {n: [] for n in steps}
    for r in range(warmup + reps):
        for name, (step, _) in steps.items():  # interleaved: every variant sees the same machine state
            t = time.perf_counter()
            step()
            if r >= warmup:
                times[name].append(time.perf_counter() - t)
    ref = statistics.median(times["bound (backbone fwd+bwd)"])
    return [{"variant": n, "trainable": steps[n][1], "median_ms": 1e3 * statistics.median(t),
             "ratio": statistics.median(t) / ref} for n, t in times.items()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="vit_small_patch14_dinov2")
    ap.add_argument("--weights", default="offline")
    ap.add_argument("--img-size", type=int, nargs="+", default=[112, 224])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    for size in args.img_size:
        rows = bench(args.model, args.weights, size, args.batch, args.reps, args.warmup)
        print(f"\n{args.model} @ {size}px, batch {args.batch}, {torch.get_num_threads()} threads, CPU, "
              f"median of {args.reps} interleaved reps; target: every method <= 1.15x the bound")
        print("| variant | trainable params | step (ms) | ratio to bound |")
        print("|---|---:|---:|---:|")
        for r in rows:
            print(f"| {r['variant']} | {r['trainable']:,} | {r['median_ms']:.1f} | {r['ratio']:.3f} |")


if __name__ == "__main__":
    main()
