"""One image decoder for training and the device: a file -> uint8 (H, W) for greyscale or (H, W, 3) RGB.

8-bit conversion by mode: 16-bit integer images (I;16, I;16B, I;16L, and I holding 16-bit values) are scaled
0..65535 -> 0..255 (x / 257, rounded), never clipped; 32-bit I with values above 65535 is scaled by its own
maximum; F (float) in [0, 1] is scaled by 255, otherwise clipped to [0, 255]; 1, L and P without transparency
become L or RGB as Pillow converts them; LA, PA, RGBA and P with transparency drop their alpha (the colour under
it is kept); CMYK and YCbCr convert to RGB. EXIF orientation is not applied (the pixels as stored, on both sides).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError

_decoded = [0]  # images this process started to decode (tests: a refused config decodes none)


def decoded_count() -> int:
    """How many images this process has started to decode (read_image, decode_error)."""
    return _decoded[0]


def to_uint8(im) -> np.ndarray:
    """A Pillow image as uint8 (H, W) for grayscale modes or (H, W, 3), scaled as the module docstring says."""
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(im, dtype=np.int64)
        top = int(arr.max()) if arr.size else 0
        if mode != "I" or top > 255:
            scale = 65535.0 if top <= 65535 else float(top)
            arr = np.rint(np.clip(arr, 0, None) * (255.0 / scale))
        return arr.astype(np.uint8)
    if mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        if arr.size and np.nanmax(arr) <= 1.0:
            arr = arr * 255.0
        return np.rint(np.clip(np.nan_to_num(arr), 0, 255)).astype(np.uint8)
    if mode in ("1", "L"):
        return np.asarray(im.convert("L"))
    if mode == "LA" or (mode == "P" and "transparency" in im.info and _palette_is_gray(im)):
        return np.asarray(im.convert("LA"))[..., 0]
    if mode in ("PA", "RGBA", "P", "RGBa", "La"):
        return np.asarray(im.convert("RGBA"))[..., :3]
    return np.asarray(im.convert("RGB"))


def _palette_is_gray(im) -> bool:
    pal = np.asarray(im.getpalette() or [], dtype=np.int64).reshape(-1, 3)
    return bool(len(pal)) and bool((pal == pal[:, :1]).all())


def max_pixels() -> int:
    """Pixels above which Pillow refuses to decode an image (its decompression-bomb guard, twice MAX_IMAGE_PIXELS)."""
    from PIL import Image

    return 2 * Image.MAX_IMAGE_PIXELS if Image.MAX_IMAGE_PIXELS else 0


def _too_many_pixels() -> str:
    return f"more than {max_pixels():,} pixels (Pillow's decompression-bomb limit)"


def too_large(path: str | Path) -> DataError:
    """An image over Pillow's decompression-bomb limit: refused (or skipped) like an undecodable one."""
    return DataError(f"cannot read image '{path}': {_too_many_pixels()}", "downscale it, or remove it")


def read_image(path: str | Path) -> np.ndarray:
    """Decode an image file to uint8 (H, W) or (H, W, 3), writable (torch takes it as is); one DataError line
    (exit 5) if it cannot be read."""
    from PIL import Image, UnidentifiedImageError

    _decoded[0] += 1
    try:
        with Image.open(path) as im:
            return np.require(to_uint8(im), requirements="W")
    except Image.DecompressionBombError:
        raise too_large(path) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise DataError(f"cannot read image '{path}': {type(e).__name__}", "remove or replace the file") from None


def decode_error(path: str) -> str | None:
    """None if the file decodes (header and pixel data), else the reason (a dataset check before training)."""
    from PIL import Image

    _decoded[0] += 1
    try:
        with Image.open(path) as im:
            im.load()
        return None
    except Image.DecompressionBombError:
        return _too_many_pixels()
    except Exception as e:  # noqa: BLE001 (Pillow raises many types for broken files)
        return f"{type(e).__name__}: {str(e)[:120]}"
