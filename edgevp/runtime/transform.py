"""The resize / crop / normalise arithmetic that training and the device share, in numpy (float32).

uint8 pixels become float32 x / 255 (C×H×W). A resize is separable and antialiased as torch's
`interpolate(..., antialias=True)` and Pillow compute it: each output pixel is a normalised weighted sum of the input
pixels under a filter (bilinear: triangle, bicubic: Keys cubic with a = -0.5) stretched by the downscale factor;
`nearest` takes input index floor(i · in/out) (torch's nearest). Height is resampled first, then width, each a
fixed sequence of float32 multiplies and adds (no BLAS, no fused multiply-add: the same bits on any machine), and the
result is clipped to [0, 1]; it is within 2e-5 of torch's. Any other interpolation name is bilinear.

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


def _rows(x: np.ndarray, n_out: int, interpolation: str) -> np.ndarray:
    """Resample axis 1 of a C×H×W array: whole rows gathered, in blocks of output rows small enough to stay in
    cache; every output element is the same float32 sum, (x·w0) + (x·w1) + ..., however it is blocked."""
    idx, w = taps(x.shape[1], n_out, interpolation)
    out = np.empty((x.shape[0], n_out, x.shape[2]), np.float32)
    step = max(1, (1 << 16) // max(1, x.shape[0] * x.shape[2]))  # ~256 KiB of float32 per temporary
    for a in range(0, n_out, step):
        b = min(a + step, n_out)
        acc = x[:, idx[a:b, 0]]
        acc *= w[None, a:b, 0, None]
        for t in range(1, idx.shape[1]):
            term = x[:, idx[a:b, t]]
            term *= w[None, a:b, t, None]
            acc += term
        out[:, a:b] = acc
    return out


def resample(x: np.ndarray, size: tuple[int, int], interpolation: str = "bicubic") -> np.ndarray:
    """float32 C×H×W -> C×size, clipped to [0, 1]; the input itself when it already has that size. Height first
    (rows of the image as stored), then width (on the transposed, already smaller image)."""
    h, w = size
    if x.shape[1:] == (h, w):
        return x
    out = x if x.shape[1] == h else _rows(x, h, interpolation)
    if out.shape[2] != w:
        out = _rows(np.ascontiguousarray(out.transpose(0, 2, 1)), w, interpolation).transpose(0, 2, 1)
    return np.clip(out, 0.0, 1.0)


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
