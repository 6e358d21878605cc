"""Preprocessing on the device, driven by the artifact's own metadata: edgevp.runtime's decoder and resize, the
code training's data loader runs (so the array fed to the model is the tensor training produced, bit for bit),
then normalisation with mean/std only when it is not inside the model (`include_preprocess` false).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..runtime import transform as rt
from ..runtime.decode import read_image


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
        return x if self.include_preprocess else rt.normalise(x, self.mean, self.std)

    def image(self, path: str | Path) -> np.ndarray:
        """One image file -> float32 3×H×W in [0, 1], resized (not normalised). Raises DataError (exit 5)."""
        return self.resized(read_image(path))

    def resized(self, arr: np.ndarray) -> np.ndarray:
        """uint8 H×W or H×W×C -> float32 3×H×W in [0, 1], as training's ImageTransform (no augmentation)."""
        return rt.resize_image(rt.to_chw(arr), tuple(self.size), self.interpolation, self.resize, self.crop_pct)


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
