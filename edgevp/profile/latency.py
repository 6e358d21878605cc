"""Latency measurement: warm-up, then timed iterations; percentiles, spread and throughput; no torch needed."""
from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np


@dataclass
class LatencyStats:
    """Per-call latency in milliseconds over `iters` timed calls after `warmup` untimed ones."""

    batch: int
    warmup: int
    iters: int
    mean_ms: float
    std_ms: float
    min_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    throughput: float  # images per second at the mean latency

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_samples(cls, samples_ms: list[float], batch: int, warmup: int) -> LatencyStats:
        a = np.asarray(samples_ms, dtype=np.float64)
        p50, p90, p99 = np.percentile(a, [50, 90, 99])
        mean = float(a.mean())
        return cls(batch, warmup, len(a), mean, float(a.std(ddof=1)) if len(a) > 1 else 0.0, float(a.min()),
                   float(p50), float(p90), float(p99), float(a.max()), 1000.0 * batch / mean if mean > 0 else 0.0)


def measure(fn: Callable[[], object], batch: int, warmup: int = 10, iters: int = 100,
            sync: Callable[[], None] | None = None) -> LatencyStats:
    """Call `fn` `warmup` times, then time `iters` calls (each followed by `sync`, e.g. a CUDA synchronize)."""
    if iters < 1 or warmup < 0:
        raise ValueError("iters must be >= 1 and warmup >= 0")
    for _ in range(warmup):
        fn()
    if sync:
        sync()
    samples = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        if sync:
            sync()
        samples.append(1e3 * (time.perf_counter() - t))
    return LatencyStats.from_samples(samples, batch, warmup)


def median_of(stats: list[LatencyStats]) -> LatencyStats:
    """Combine rounds: the median of each field over rounds (rounds interleave variants to cancel drift)."""
    fields = {k: statistics.median(getattr(s, k) for s in stats) for k in asdict(stats[0])}
    fields.update(batch=stats[0].batch, warmup=stats[0].warmup, iters=sum(s.iters for s in stats))
    return LatencyStats(**fields)
