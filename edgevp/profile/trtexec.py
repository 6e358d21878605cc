"""Time an engine (or an ONNX file) with NVIDIA's `trtexec` and parse its summary — the fallback that needs no
Python bindings at all."""
from __future__ import annotations

import math
import re
import os
import shutil
import subprocess
from pathlib import Path

from ..errors import MissingError
from .latency import LatencyStats

_NUM = r"([0-9.]+(?:e[-+]?\d+)?)"
_STATS = re.compile(rf"{{what}}: min = {_NUM} ms, max = {_NUM} ms, mean = {_NUM} ms, median = {_NUM} ms, "
                    rf"percentile\(90%\) = {_NUM} ms, percentile\(95%\) = {_NUM} ms, percentile\(99%\) = {_NUM} ms"
                    .replace("{what}", "(?P<what>GPU Compute Time|Latency)"))
_THROUGHPUT = re.compile(rf"Throughput: {_NUM} qps")
_ITERS = re.compile(r"(\d+) iterations? ")


def command(artifact: str | Path, batch: int, iters: int, warmup_ms: int, input_name: str = "input",
            input_chw: tuple[int, int, int] | None = None) -> list[str]:
    """trtexec arguments: a saved engine is loaded; an ONNX file is built strongly typed first."""
    exe = os.environ.get("TRTEXEC") or shutil.which("trtexec") or "/usr/src/tensorrt/bin/trtexec"  # as build_engine.sh
    art = str(artifact)
    args = [exe, f"--loadEngine={art}"] if art.endswith((".engine", ".plan")) else [exe, f"--onnx={art}",
                                                                                     "--stronglyTyped"]
    if input_chw is not None:
        args.append(f"--shapes={input_name}:{batch}x{'x'.join(map(str, input_chw))}")
    return args + [f"--iterations={iters}", f"--warmUp={warmup_ms}", "--duration=0", "--useSpinWait",
                   "--noDataTransfers"]


def parse(output: str, batch: int, warmup: int = 0) -> LatencyStats:
    """LatencyStats from trtexec's performance summary (GPU compute time when printed, else latency)."""
    found = {m.group("what"): [float(v) for v in m.groups()[1:]] for m in _STATS.finditer(output)}
    vals = found.get("GPU Compute Time") or found.get("Latency")
    if vals is None:
        raise ValueError("no performance summary in the trtexec output")
    mn, mx, mean, median, p90, _p95, p99 = vals
    tp = _THROUGHPUT.search(output)
    iters = _ITERS.search(output)
    return LatencyStats(batch=batch, warmup=warmup, iters=int(iters.group(1)) if iters else 0, mean_ms=mean,
                        std_ms=math.nan, min_ms=mn, p50_ms=median, p90_ms=p90, p99_ms=p99, max_ms=mx,
                        throughput=float(tp.group(1)) * batch if tp else 1000.0 * batch / mean)


def run(artifact: str | Path, batch: int, iters: int = 200, warmup_ms: int = 500, **kw) -> tuple[LatencyStats, dict]:
    cmd = command(artifact, batch, iters, warmup_ms, **kw)
    if shutil.which(cmd[0]) is None and not Path(cmd[0]).is_file():
        raise MissingError("trtexec was not found", "it ships with TensorRT (/usr/src/tensorrt/bin on a Jetson)")
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise MissingError(f"trtexec failed (exit {out.returncode}): {out.stdout.strip().splitlines()[-1:]}")
    return parse(out.stdout, batch), {"backend": "trtexec", "command": " ".join(cmd)}
