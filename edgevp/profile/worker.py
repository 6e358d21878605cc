"""One measurement in its own process: `python -m edgevp.profile.worker ARTIFACT --backend ort ...` prints JSON.

Running every variant in a fresh process keeps allocator state, thread pools and caches of one variant from
colouring the next; `compare` interleaves such processes over rounds.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys

from .latency import measure


def measure_artifact(artifact: str, backend: str, batch: int, warmup: int, iters: int, device: str = "cpu",
                     threads: int | None = None, task: str | None = None) -> dict:
    if backend == "ort":
        from .backends import prepare_ort

        call, sync, cond = prepare_ort(artifact, batch, device, threads, task)
    elif backend == "trt":
        from .backends import prepare_trt

        call, sync, cond = prepare_trt(artifact, batch)
    elif backend in ("torch", "torch-compile"):  # a run directory: the prompted model, or its bare backbone ("RUN#bare")
        call, sync, cond = prepare_run_torch(artifact, batch, device, threads, backend == "torch-compile")
    elif backend == "trtexec":
        from . import trtexec

        stats, cond = trtexec.run(artifact, batch, iters)
        return {"stats": stats.to_dict(), "conditions": cond}
    else:
        raise ValueError(f"unknown backend {backend}")
    stats = measure(call, batch, warmup, iters, sync)
    cond["peak_rss_mib"] = peak_rss_mib()
    return {"stats": stats.to_dict(), "conditions": cond}


def peak_rss_mib() -> float:
    """Peak resident memory of this process image: VmHWM (ru_maxrss would include the parent's peak, which Linux
    carries across fork + exec)."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024.0, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)


def prepare_run_torch(spec: str, batch: int, device: str, threads: int | None, compile: bool = False):
    """PyTorch eager (or compiled, CUDA) on a run's model; `RUN#bare` times the same backbone and head with the
    prompts detached."""
    from ..model import load_run
    from .backends import prepare_torch

    run, _, variant = spec.partition("#")
    _, model, _ = load_run(run)
    if variant == "bare":
        model.detach_method()
    return prepare_torch(model, batch, model.info.input_size, "cpu" if device == "cpu" else device, compile, threads)


def main(argv: list[str] | None = None) -> int:
    from ..errors import EXIT_OK, EdgevpError

    ap = argparse.ArgumentParser()
    ap.add_argument("artifact")
    ap.add_argument("--backend", default="ort")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--iters", type=int, default=100)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--task", default=None)
    a = ap.parse_args(argv)
    try:
        out = measure_artifact(a.artifact, a.backend, a.batch, a.warmup, a.iters, a.device, a.threads, a.task)
    except EdgevpError as e:
        print(json.dumps({"error": e.line(), "exit_code": e.exit_code}))
        return e.exit_code
    print(json.dumps(out))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
