"""Data-parallel scaling of a training step: steps/s with 1 and N processes on the same global batch.

Each variant is a fresh process group launched by torchrun (`python -m torch.distributed.run --standalone`) running
this file as a worker: it builds the model, takes its slice of one fixed global batch and times the training step
edgevp's fit runs under torchrun (forward/backward of the slice, the one flat gradient all-reduce, the optimizer
step); one process runs fit's single-process step. Variants are interleaved over rounds and reported as medians.

CPU: 1 process x 1 thread (the per-core baseline), 1 process x N threads (the same cores, one process) and
N processes x 1 thread. Scaling efficiency = steps/s(N processes) / (N x steps/s(1 process, 1 thread)); the
speed-up over 1 process x N threads says whether data parallelism beats intra-op threads on the same cores.
GPU (when there are N >= 2): 1 GPU vs N GPUs, one process each.

    python tools/bench_ddp.py                        # vit_tiny at 112 px, VPT-deep 10, global batch 32, 2 CPUs
    python tools/bench_ddp.py --nproc 4 --model vit_small_patch16_224 --img-size 224 --batch 64 --device cuda
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def worker(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(ROOT))
    import torch
    import torch.nn.functional as F

    from edgevp import distributed as ddp
    from edgevp.model import build_model
    from edgevp.recipe import build_run_config
    from edgevp.train import _ddp_step, make_optimizer

    ddp.init_from_env()
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "cuda" else "cpu")
    cfg = build_run_config({"method": "vpt", "prompt": {"num_tokens": 10, "deep": True},
                            "backbone": {"name": args.model, "weights": "none", "img_size": args.img_size},
                            "train": {"optimizer": "adamw", "lr": 1e-3, "amp": False}})
    torch.manual_seed(0)
    model = build_model(cfg, 10).to(device).train()
    optimizer = make_optimizer(model, cfg.train)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(args.batch, 3, args.img_size, args.img_size, generator=g)
    y = torch.randint(0, 10, (args.batch,), generator=g)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    params = [p for _, p in model.trainable_parameters()]
    reducer = ddp.GradientReducer(params, extras=4) if ddp.active() else None
    if reducer is None:
        x, y = x.to(device), y.to(device)

        def step():
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    else:
        mine = ddp.batch_slice(args.batch)
        batch = (x[mine].to(device), y[mine].to(device), args.batch)

        def step():
            _ddp_step(model, batch, optimizer, scaler, reducer, cfg.train, device, False)
            optimizer.step()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()
        ddp.barrier()

    for _ in range(args.warmup):
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync()
    seconds = time.perf_counter() - t0
    reduce_ms = 0.0
    if reducer is not None:  # the all-reduce alone, on the gradients of the last step
        sync()
        t1 = time.perf_counter()
        for _ in range(args.steps):
            reducer.reduce([0.0, 0.0, 0.0, 0.0])
        sync()
        reduce_ms = 1000 * (time.perf_counter() - t1) / args.steps
    if ddp.is_main():
        print("RESULT " + json.dumps({"steps_per_s": args.steps / seconds, "allreduce_ms": reduce_ms,
                                      "allreduce_bytes": reducer.bytes_per_step if reducer else 0,
                                      "trainable": sum(p.numel() for p in params)}), flush=True)
    ddp.shutdown()


def launch(args: argparse.Namespace, nproc: int, threads: int) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", __file__,
           "--worker", "--threads", str(threads), "--model", args.model, "--img-size", str(args.img_size),
           "--batch", str(args.batch), "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--device", args.device]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    if out.returncode != 0 or not lines:
        sys.exit(f"variant {nproc}x{threads} failed:\n{out.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--nproc", type=int, default=None, help="processes (default: 2 on CPU, every GPU on CUDA)")
    ap.add_argument("--model", default="vit_tiny_patch16_224")
    ap.add_argument("--img-size", type=int, default=112)
    ap.add_argument("--batch", type=int, default=32, help="the global batch")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    import torch

    if args.device == "cuda":
        n = args.nproc or torch.cuda.device_count()
        variants = {"1 GPU": (1, 1), f"{n} GPUs": (n, 1)}
    else:
        n = args.nproc or 2
        variants = {"1 process x 1 thread": (1, 1), f"1 process x {n} threads": (1, n),
                    f"{n} processes x 1 thread": (n, 1)}
    runs: dict[str, list[dict]] = {k: [] for k in variants}
    for _ in range(args.rounds):  # interleaved, so a busy moment of the machine hits every variant
        for name, (nproc, threads) in variants.items():
            runs[name].append(launch(args, nproc, threads))
    rate = {k: statistics.median(r["steps_per_s"] for r in v) for k, v in runs.items()}
    base = rate[next(iter(variants))]
    load = f", load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs" if args.device == "cpu" else ""
    print(f"\n{args.model} at {args.img_size} px, VPT-deep 10, global batch {args.batch}, {args.device}, "
          f"median of {args.rounds} rounds x {args.steps} steps; torch {torch.__version__}{load}\n")
    print("| variant | steps/s | images/s | vs 1 x 1 | all-reduce per step |")
    print("|---|---:|---:|---:|---|")
    for name, (nproc, threads) in variants.items():
        r = runs[name][-1]
        ar = (f"{r['allreduce_bytes']:,} B, {statistics.median(x['allreduce_ms'] for x in runs[name]):.2f} ms"
              if nproc > 1 else "-")
        print(f"| {name} | {rate[name]:.2f} | {rate[name] * args.batch:.1f} | {rate[name] / base:.2f}x | {ar} |")
    multi = list(variants)[-1]
    eff = rate[multi] / (n * base)
    print(f"\nscaling efficiency = steps/s({multi}) / ({n} x steps/s({next(iter(variants))})): {eff:.2f}")
    if args.device == "cpu":
        print(f"data parallel vs intra-op threads on the same {n} cores: "
              f"{rate[multi] / rate[list(variants)[1]]:.2f}x")


if __name__ == "__main__":
    main()
