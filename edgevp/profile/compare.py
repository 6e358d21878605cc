"""Fair comparisons: every variant measured in its own process, variants interleaved over rounds (the order flips
each round), medians over rounds, and every number reported as a ratio to the first variant measured in the same
run."""
from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import EdgevpError, IncompatibleError, MissingError
from .latency import LatencyStats, median_of


@dataclass
class Variant:
    name: str
    artifact: str
    backend: str = "ort"  # ort | trt | trtexec
    device: str = "cpu"  # for ort: cpu | cuda | tensorrt
    info: dict = field(default_factory=dict)  # extra columns (method, prompts kept, top-1, ...)
    task: str | None = None  # a pack's task ids per sample: one id or "mixed" (None: "mixed" for a pack)


def _measure(v: Variant, batch: int, warmup: int, iters: int, threads: int | None, isolate: bool) -> dict:
    if not isolate:
        from .worker import measure_artifact

        return measure_artifact(v.artifact, v.backend, batch, warmup, iters, v.device, threads, v.task)
    cmd = [sys.executable, "-m", "edgevp.profile.worker", v.artifact, "--backend", v.backend, "--device", v.device,
           "--batch", str(batch), "--warmup", str(warmup), "--iters", str(iters)]
    if threads:
        cmd += ["--threads", str(threads)]
    if v.task is not None:
        cmd += ["--task", v.task]
    p = subprocess.run(cmd, capture_output=True, text=True)
    lines = [line for line in p.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise EdgevpError(f"measuring '{v.name}' failed: {(p.stderr.strip().splitlines() or ['no output'])[-1]}")
    out = json.loads(lines[-1])
    if "error" in out:
        err = MissingError(out["error"]) if out.get("exit_code") == 4 else EdgevpError(out["error"])
        err.exit_code = out.get("exit_code", 1)
        raise err
    return out


def artifact_cost(path: str) -> dict:
    """Size and sha256 on disk, MACs/params counted on the graph for ONNX files, and for an engine the sha256 of the
    ONNX it was built from (its sidecar's): what lets a profile taken on the device find its run again."""
    from ..io import sha256_file

    info = {"bytes": Path(path).stat().st_size, "sha256": sha256_file(path)}
    side = Path(path).with_suffix(".json")
    if path.endswith((".engine", ".plan")) and side.is_file():
        try:
            info["onnx_sha256"] = json.loads(side.read_text()).get("onnx_sha256")
        except (OSError, ValueError):
            pass
    if path.endswith(".onnx"):
        from .onnx_macs import graph_cost

        c = graph_cost(path)
        info.update(macs=c.macs, params=c.params, macs_per_block=c.per_block)
    return info


def compare(variants: list[Variant], batches: list[int], rounds: int = 3, warmup: int = 10, iters: int = 100,
            threads: int | None = None, isolate: bool = True) -> dict:
    """Latency of every variant at every batch size, with ratios to the first variant."""
    if not variants:
        raise ValueError("nothing to profile")
    for v in variants:
        if not Path(v.artifact.partition("#")[0]).exists():
            raise IncompatibleError(f"artifact '{v.artifact}' does not exist")
    costs = {v.name: ({} if v.backend.startswith("torch") else artifact_cost(v.artifact)) for v in variants}
    rows, conditions = [], {}
    for b in batches:
        samples: dict[str, list[LatencyStats]] = {v.name: [] for v in variants}
        for r in range(rounds):
            for v in (variants if r % 2 == 0 else variants[::-1]):
                out = _measure(v, b, warmup, iters, threads, isolate)
                samples[v.name].append(LatencyStats(**out["stats"]))
                conditions[v.name] = out["conditions"]
        ref = median_of(samples[variants[0].name])
        for v in variants:
            s = median_of(samples[v.name])
            # the ratio within each round (same machine state for both): its spread is the comparison's noise
            per_round = [a.p50_ms / r.p50_ms for a, r in zip(samples[v.name], samples[variants[0].name])]
            task = {"task": v.task} if v.task is not None else {}
            row = {"variant": v.name, "artifact": v.artifact, **task, "batch": b, **s.to_dict(),
                   "ratio_p50": s.p50_ms / ref.p50_ms, "ratio_p50_rounds": per_round, "rounds": rounds,
                   "peak_rss_mib": conditions[v.name].get("peak_rss_mib"), **costs[v.name], **v.info}
            ref_macs = costs[variants[0].name].get("macs")
            if ref_macs and costs[v.name].get("macs"):
                row["ratio_macs"] = costs[v.name]["macs"] / ref_macs
            rows.append(row)
    from .device import conditions as machine

    return {"reference": variants[0].name, "rows": rows, "conditions": conditions, "machine": machine(),
            "method": f"each variant in its own process, {rounds} interleaved rounds, median of rounds"}
