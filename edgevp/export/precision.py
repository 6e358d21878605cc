"""The reduced-precision gate (fp16, int8, TensorRT engines, fp16 packs): decide on evidence, not on noise.

Two measures against the fp32 model, both with an exact one-sided bound at `confidence`:

- top-1 agreement with fp32 on every gate image (validation images, topped up with training images when validation
  is small; no labels needed). It fails only when its upper bound is below `min_agreement`.
- the labelled top-1 drop on the validation images. Only the images where exactly one of the two is right move it:
  b (fp32 right, reduced wrong) and c (the reverse). Conditional on d = b + c, b is binomial (McNemar's exact test),
  so drop = d/n * (2*pi - 1) with pi's Clopper-Pearson lower bound gives the drop's lower bound. It fails only when
  that bound exceeds `max_drop`: a 3-image flip on 120 images (2.5 points) passes, 80 of 1000 fails.
"""
from __future__ import annotations

import math

import numpy as np


def _tail_at_least(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p)."""
    if k <= 0:
        return 1.0
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * math.log(p)
            + (n - i) * math.log1p(-p) for i in range(k, n + 1)]
    top = max(logs)
    return min(1.0, math.exp(top) * sum(math.exp(v - top) for v in logs))


def lower_bound(k: int, n: int, confidence: float) -> float:
    """One-sided Clopper-Pearson lower bound of a binomial proportion with `k` successes in `n` trials."""
    if k == 0 or n == 0:
        return 0.0
    lo, hi = 0.0, k / n
    for _ in range(60):  # P(X >= k | p) rises with p: the bound is where it reaches 1 - confidence
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _tail_at_least(k, n, mid) < 1 - confidence else (lo, mid)
    return lo


def upper_bound(k: int, n: int, confidence: float) -> float:
    """One-sided Clopper-Pearson upper bound (the lower bound of the failures, mirrored)."""
    return 1.0 - lower_bound(n - k, n, confidence) if n else 1.0


def precision_gate(ref: np.ndarray, got: np.ndarray, labels: np.ndarray, max_drop: float, min_agreement: float,
                   confidence: float) -> dict:
    """The record of the gate for logits `ref` (fp32) and `got` (reduced) on the same images, the first
    len(`labels`) of them labelled (validation), the rest not (training images for the agreement). `failed` (a
    sentence, or None) says why it fails."""
    agree = ref.argmax(1) == got.argmax(1)
    n, k = len(agree), int(agree.sum())
    m = len(labels)
    right_ref, right_got = ref[:m].argmax(1) == labels, got[:m].argmax(1) == labels
    b, c = int((right_ref & ~right_got).sum()), int((~right_ref & right_got).sum())
    drop = (b - c) / m * 100 if m else 0.0
    drop_low = (b + c) / m * (2 * lower_bound(b, b + c, confidence) - 1) * 100 if b + c else 0.0
    rec = {"images": n, "labelled_images": m, "confidence": confidence,
           "top1_agreement": k / n if n else 1.0, "top1_agreement_upper_bound": upper_bound(k, n, confidence),
           "min_agreement": min_agreement,
           "top1_fp32": float(right_ref.mean() * 100) if m else None, "top1": float(right_got.mean() * 100) if m else None,
           "only_fp32_right": b, "only_reduced_right": c, "top1_drop": drop, "top1_drop_lower_bound": drop_low,
           "max_drop": max_drop}
    rec["failed"] = _verdict(rec)
    return rec


def _verdict(rec: dict) -> str | None:
    pct = rec["confidence"] * 100
    if rec["top1_agreement_upper_bound"] < rec["min_agreement"]:
        return (f"top-1 agreement with fp32 {rec['top1_agreement']:.3f} on {rec['images']} images (at most "
                f"{rec['top1_agreement_upper_bound']:.3f} at {pct:g}% confidence, floor {rec['min_agreement']:g})")
    if rec["top1_drop_lower_bound"] > rec["max_drop"]:
        return (f"val top-1 drops {rec['top1_drop']:.2f} points vs fp32 on {rec['labelled_images']} labelled images (at least "
                f"{rec['top1_drop_lower_bound']:.2f} at {pct:g}% confidence, max {rec['max_drop']:g})")
    return None


def images_of(ds, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """Images `start`..`stop`-1 of dataset `ds` (clipped to its length) as float32 N×3×H×W in [0, 1] and int64
    labels."""
    import torch

    idx = range(max(start, 0), min(stop, len(ds)))
    if not idx:
        return np.zeros((0, 0, 0, 0), np.float32), np.zeros(0, np.int64)
    xs, ys = zip(*(ds[i] for i in idx))
    return torch.stack(xs).numpy().astype(np.float32), np.asarray(ys, dtype=np.int64)


def top_up(train, have: int, n: int, skip: int) -> np.ndarray:
    """Training images for the agreement when validation gave only `have` of the `n` gate images: the ones after
    the first `skip` (those that calibrated int8 ranges), none when there is no training split."""
    if train is None or have >= n:
        return np.zeros((0, 0, 0, 0), np.float32)
    return images_of(train, skip, skip + n - have)[0]
