"""The resize / crop / normalise arithmetic that training and the device share, in numpy (float32).

uint8 pixels become float32 x / 255 (C×H×W). A resize is separable and antialiased as torch's
`interpolate(..., antialias=True)` and Pillow compute it: each output pixel is a normalised weighted sum of the input
pixels under a filter (bilinear: triangle, bicubic: Keys cubic with a = -0.5) stretched by the downscale factor;
`nearest` takes input index floor(i · in/out) (torch's nearest). Width is resampled first, then height, each a fixed
sequence of float32 multiply-adds, and the result is clipped to [0, 1]. Any other interpolation name is bilinear.

Policies: `direct` resizes straight to H×W; `timm` scales so the image covers (H, W) / crop_pct (shorter side to
S / crop_pct for a square S) and takes the centre H×W crop, or, when training augments, the crop at a given offset.
Greyscale is repeated over three channels and an alpha channel dropped before the resize.
"""
from __future__ import annotations

import numpy as np

INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
RESIZE_POLICIES = ("direct", "timm")


def to_chw(arr: np.ndarray) -> np.ndarray:
    """uint8 (H, W) or (H, W, C) -> float32 C×H×W in [0, 1] (x / 255)."""
    arr = np.asarray(arr)
    chw = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return np.ascontiguousarray(chw, dtype=np.float32) / np.float32(255.0)


def to_rgb(x: np.ndarray) -> np.ndarray:
    """C×H×W with C = 1 (grey: repeated), 3, or 4 (alpha: dropped) -> 3×H×W."""
    if x.shape[0] == 1:
        return np.repeat(x, 3, axis=0)
    return x[:3]


def _cubic(x: np.ndarray) -> np.ndarray:
    a, x = -0.5, np.abs(x)
    return np.where(x < 1.0, ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0,
                    np.where(x < 2.0, (((x - 5.0) * x + 8.0) * x - 4.0) * a, 0.0))


def _triangle(x: np.ndarray) -> np.ndarray:
    return np.maximum(1.0 - np.abs(x), 0.0)


_FILTERS = {"bilinear": (1.0, _triangle), "bicubic": (2.0, _cubic)}


def taps(n_in: int, n_out: int, interpolation: str) -> tuple[np.ndarray, np.ndarray]:
    """(input indices, float32 weights), both n_out × k: output i = sum_t weights[i, t] · input[indices[i, t]]."""
    if interpolation == "nearest":
        scale = np.float32(n_in / n_out)
        idx = np.floor(np.arange(n_out, dtype=np.float32) * scale).astype(np.int64)
        return np.minimum(idx, n_in - 1)[:, None], np.ones((n_out, 1), np.float32)
    radius, kernel = _FILTERS.get(interpolation, _FILTERS["bilinear"])
    scale = n_in / n_out
    stretch = max(scale, 1.0)
    support = radius * stretch
    centre = (np.arange(n_out) + 0.5) * scale
    lo = np.maximum((centre - support + 0.5).astype(np.int64), 0)
    hi = np.minimum((centre + support + 0.5).astype(np.int64), n_in)
    k = int((hi - lo).max())
    pos = lo[:, None] + np.arange(k)[None, :]
    w = np.where(pos < hi[:, None], kernel((pos - centre[:, None] + 0.5) / stretch), 0.0)
    total = w.sum(1, keepdims=True)
    w = w / np.where(total == 0.0, 1.0, total)
    return np.minimum(pos, n_in - 1), w.astype(np.float32)


def _first_axis(x: np.ndarray, n_out: int, interpolation: str) -> np.ndarray:
    """Resample axis 0 of a contiguous array (rows gathered whole: fast, and the same sum order everywhere)."""
    idx, w = taps(x.shape[0], n_out, interpolation)
    out = x[idx[:, 0]] * w[:, 0, None, None]
    for t in range(1, idx.shape[1]):
        out += x[idx[:, t]] * w[:, t, None, None]
    return out


def resample(x: np.ndarray, size: tuple[int, int], interpolation: str = "bicubic") -> np.ndarray:
    """float32 C×H×W -> C×size, clipped to [0, 1]; the input itself when it already has that size. Width first,
    then height (torch's order)."""
    h, w = size
    if x.shape[1:] == (h, w):
        return x
    out = np.ascontiguousarray(x.transpose(2, 0, 1))  # W×C×H
    if out.shape[0] != w:
        out = _first_axis(out, w, interpolation)
    out = np.ascontiguousarray(out.transpose(2, 1, 0))  # H×C×W
    if out.shape[0] != h:
        out = _first_axis(out, h, interpolation)
    return np.clip(out.transpose(1, 0, 2), 0.0, 1.0)


def scaled_size(in_hw: tuple[int, int], size: tuple[int, int], crop_pct: float) -> tuple[int, int]:
    """The `timm` policy's size before its crop: the image scaled to cover size / crop_pct, at least `size`."""
    (ih, iw), (h, w) = in_hw, size
    c = max(crop_pct, 1e-6)
    scale = max(h / c / ih, w / c / iw)
    return max(h, round(ih * scale)), max(w, round(iw * scale))


def resize_image(x: np.ndarray, size: tuple[int, int], interpolation: str = "bicubic", resize: str = "direct",
                 crop_pct: float = 1.0, crop_at: tuple[int, int] | None = None) -> np.ndarray:
    """float32 C×H×W in [0, 1] -> float32 3×size: `direct` or `timm` (see the module docstring). `crop_at`
    (top, left) replaces the centre crop (training's random crop; it implies the `timm` policy's scaling)."""
    h, w = size
    x = x[:3] if x.shape[0] > 3 else x
    if resize == "direct" and crop_at is None:
        out = resample(x, (h, w), interpolation)
    else:
        rh, rw = scaled_size(x.shape[1:], (h, w), crop_pct)
        top, left = crop_at if crop_at is not None else ((rh - h) // 2, (rw - w) // 2)
        out = resample(x, (rh, rw), interpolation)[:, top:top + h, left:left + w]
    return np.ascontiguousarray(to_rgb(out), dtype=np.float32)


def normalise(x: np.ndarray, mean, std) -> np.ndarray:
    """(x - mean) / std per channel of float32 N×3×H×W (or 3×H×W)."""
    m = np.asarray(mean, np.float32)[:, None, None]
    s = np.asarray(std, np.float32)[:, None, None]
    return ((x.astype(np.float32, copy=False) - m) / s).astype(np.float32)
