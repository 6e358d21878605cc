"""Preprocessing on the device in numpy + Pillow, driven by the artifact's own metadata.

It redoes the training pipeline (edgevp.data.ImageTransform) without torch: decode to RGB (grey images are repeated
over three channels, an alpha channel is dropped), scale to [0, 1], resize in float (Pillow mode "F", per channel,
antialiased like torch's `antialias=True`) either straight to the input size (`direct`) or shorter side to
size/crop_pct then a centre crop (`timm`), clip to [0, 1], and normalise with mean/std only when the normalisation
is not inside the model (`include_preprocess` false).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..images import too_large

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


@dataclass
class Preprocess:
    """What the artifact takes: 3×H×W images, [0, 1] (normalised with mean/std unless the model does it)."""

    size: tuple[int, int]  # H, W
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    include_preprocess: bool = True
    resize: str = "direct"  # direct | timm
    interpolation: str = "bicubic"
    crop_pct: float = 1.0
    source: str = "metadata"  # metadata | options (a foreign model: --size/--mean/--std)

    @classmethod
    def from_data_config(cls, data: dict) -> Preprocess:
        size = list(data["input_size"])[-2:]
        return cls(size=(int(size[0]), int(size[1])), mean=tuple(map(float, data["mean"])),
                   std=tuple(map(float, data["std"])), include_preprocess=bool(data.get("include_preprocess", True)),
                   resize=str(data.get("resize", "direct")), interpolation=str(data.get("interpolation", "bicubic")),
                   crop_pct=float(data.get("crop_pct", 1.0) or 1.0))

    def to_dict(self) -> dict:
        return {**asdict(self), "size": list(self.size), "mean": list(self.mean), "std": list(self.std)}

    def normalise(self, x: np.ndarray) -> np.ndarray:
        """[0, 1] float32 N×3×H×W -> what the model takes."""
        x = x.astype(np.float32, copy=False)
        if self.include_preprocess:
            return x
        mean = np.asarray(self.mean, np.float32)[:, None, None]
        std = np.asarray(self.std, np.float32)[:, None, None]
        return ((x - mean) / std).astype(np.float32)

    def image(self, path: str | Path) -> np.ndarray:
        """One image file -> float32 3×H×W in [0, 1], resized (not normalised). Raises DataError (exit 5)."""
        return self.resized(read_image(path))

    def resized(self, arr: np.ndarray) -> np.ndarray:
        from PIL import Image

        img = arr.astype(np.float32) / 255.0
        if img.ndim == 2:
            img = img[:, :, None]
        img = img[:, :, :3]
        if img.shape[2] == 1:
            img = np.repeat(img, 3, axis=2)
        h, w = self.size
        resample = {"bilinear": Image.Resampling.BILINEAR, "nearest": Image.Resampling.NEAREST}.get(
            self.interpolation, Image.Resampling.BICUBIC)

        def resize(a: np.ndarray, hh: int, ww: int) -> np.ndarray:
            if a.shape[:2] == (hh, ww):
                return a
            return np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(a[:, :, c])).resize((ww, hh), resample))
                             for c in range(a.shape[2])], axis=2)

        if self.resize == "direct":
            out = resize(img, h, w)
        else:  # shorter side to size / crop_pct, then the centre crop (ImageTransform's eval path)
            s = w
            scale = s / max(self.crop_pct, 1e-6) / min(img.shape[:2])
            hh, ww = max(s, round(img.shape[0] * scale)), max(s, round(img.shape[1] * scale))
            out = resize(img, hh, ww)
            top, left = (hh - h) // 2, (ww - w) // 2
            out = out[top:top + h, left:left + w]
        return np.clip(out, 0.0, 1.0).transpose(2, 0, 1).astype(np.float32)


def read_image(path: str | Path) -> np.ndarray:
    """Decode an image to uint8 H×W (grey) or H×W×3 (RGB). Raises DataError (exit 5) when it cannot be decoded."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.array(im.convert("L" if im.mode in ("L", "I;16", "I", "1") else "RGB"))
    except Image.DecompressionBombError:
        raise too_large(path) from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DataError(f"cannot decode image '{path}': {type(e).__name__}", "remove or replace the file") from None


def parse_floats(text: str | None, n: int, name: str) -> tuple[float, ...] | None:
    """'0.5,0.5,0.5' -> (0.5, 0.5, 0.5); one value is repeated n times. Raises ConfigError (exit 2)."""
    from ..errors import ConfigError

    if text is None:
        return None
    try:
        vals = tuple(float(v) for v in str(text).replace(" ", "").split(",") if v)
    except ValueError:
        raise ConfigError(f"{name} takes comma-separated numbers, got '{text}'") from None
    if len(vals) == 1:
        vals = vals * n
    if len(vals) != n:
        raise ConfigError(f"{name} takes {n} numbers (or one), got '{text}'")
    return vals


def parse_size(text: str | None) -> tuple[int, int] | None:
    """'224' or '224x224' (H x W) -> (224, 224). Raises ConfigError (exit 2)."""
    from ..errors import ConfigError

    if text is None:
        return None
    parts = str(text).lower().replace(",", "x").split("x")
    try:
        vals = [int(p) for p in parts if p]
    except ValueError:
        raise ConfigError(f"--size takes S or HxW, got '{text}'") from None
    if len(vals) == 1:
        vals *= 2
    if len(vals) != 2 or min(vals) < 1:
        raise ConfigError(f"--size takes S or HxW, got '{text}'")
    return vals[0], vals[1]
