"""Image files: decoding any Pillow mode to 8-bit, checking a dataset's files before training, and fingerprints
that tell whether a folder dataset changed. numpy + Pillow only (no torch).

8-bit conversion by mode: 16-bit integer images (I;16, I;16B, I;16L, and I holding 16-bit values) are scaled
0..65535 -> 0..255 (x / 257, rounded), never clipped; 32-bit I with values above 65535 is scaled by its own
maximum; F (float) in [0, 1] is scaled by 255, otherwise clipped to [0, 255]; 1, L and P without transparency
become L or RGB as Pillow converts them; LA, PA, RGBA and P with transparency drop their alpha (the colour under
it is kept); CMYK and YCbCr convert to RGB.
"""
from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .errors import DataError

HIDDEN_PREFIXES = (".", "._")  # dotfiles and macOS AppleDouble files ("._photo.png") are not images
SKIPPED_DIRS = ("__MACOSX",)


def is_hidden(path: Path) -> bool:
    """A file that no dataset should read: a dotfile, an AppleDouble file, or anything under __MACOSX."""
    return path.name.startswith(HIDDEN_PREFIXES) or any(part in SKIPPED_DIRS for part in path.parts)


def check_class_links(root: Path, classes: list[str]) -> None:
    """Refuse class folders that are links back into the dataset: a link to another class folder (its images would
    count twice, as a second class), to the root or a folder above it (a loop). A link elsewhere is followed once."""
    real_root = root.resolve()
    seen: dict[Path, str] = {}
    for c in classes:
        real = (root / c).resolve()
        if real == real_root or real in real_root.parents:
            raise DataError(f"class folder '{root / c}' is a link to '{real}', which holds the dataset itself (a loop)",
                            "remove the link")
        other = seen.get(real) or next((o for r, o in seen.items() if r in real.parents or real in r.parents), None)
        if other is not None:
            raise DataError(f"class folders '{c}' and '{other}' of '{root}' are the same images through a link",
                            "remove the link, or give the class a folder of its own images")
        seen[real] = c


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

    _count_decode()
    try:
        with Image.open(path) as im:
            return np.require(to_uint8(im), requirements="W")
    except Image.DecompressionBombError:
        raise too_large(path) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise DataError(f"cannot read image '{path}': {type(e).__name__}", "remove or replace the file") from None


_decoded = [0]  # images this process started to decode (tests: a refused config decodes none)


def _count_decode() -> None:
    _decoded[0] += 1


def decoded_count() -> int:
    """How many images this process has started to decode (read_image, check_images)."""
    return _decoded[0]


def _check_one(path: str) -> str | None:
    """None if the file decodes (header and pixel data), else the reason."""
    from PIL import Image

    _count_decode()
    try:
        with Image.open(path) as im:
            im.load()
        return None
    except Image.DecompressionBombError:
        return _too_many_pixels()
    except Exception as e:  # noqa: BLE001 (Pillow raises many types for broken files)
        return f"{type(e).__name__}: {str(e)[:120]}"


def _cache_file() -> Path:
    root = Path(os.environ.get("EDGEVP_CACHE", Path.home() / ".cache" / "edgevp"))
    return root / "image-check.json"


def _key(path: str) -> str:
    st = os.stat(path)
    return f"{path}|{st.st_size}|{st.st_mtime_ns}"


def check_images(paths: list[str], workers: int = 4) -> tuple[int, int]:
    """Decode every image once, in parallel, remembering good files by path + size + mtime; returns (checked,
    cached). The first unreadable file is one DataError line (exit 5) naming it and how many others failed."""
    from .io import write_json

    cache_path = _cache_file()
    try:
        good = set(json.loads(cache_path.read_text())) if cache_path.is_file() else set()
    except (OSError, ValueError):
        good = set()
    try:
        keys = {p: _key(p) for p in paths}
    except FileNotFoundError as e:
        raise DataError(f"image '{e.filename}' does not exist", "the dataset changed while it was read") from None
    todo = [p for p in paths if keys[p] not in good]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        errors = [(p, err) for p, err in zip(todo, pool.map(_check_one, todo)) if err is not None]
    if errors:
        path, err = errors[0]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise DataError(f"cannot read image '{path}': {err}{more}", "remove or replace the file before training")
    good.update(keys[p] for p in todo)
    try:
        write_json(cache_path, sorted(good))
    except OSError:
        pass  # a read-only cache only costs the next run a re-check
    return len(paths), len(paths) - len(todo)


def fingerprint(paths: list[str], root: str | Path | None = None) -> dict:
    """What identifies a folder dataset's content cheaply: the count, a sha256 over every file's relative path, size
    and mtime (a file replaced, added or removed changes it) and one over the paths and sizes alone (`names_sha256`:
    what a copy that loses the mtimes keeps)."""
    full, names = hashlib.sha256(), hashlib.sha256()
    for p in sorted(paths):
        st = os.stat(p)
        line = f"{_name(p, root)}\0{st.st_size}"
        full.update(f"{line}\0{st.st_mtime_ns}\n".encode())
        names.update(f"{line}\n".encode())
    return {"files": len(paths), "sha256": full.hexdigest(), "names_sha256": names.hexdigest()}


def _name(path: str, root: str | Path | None) -> str:
    return os.path.relpath(path, Path(root)) if root is not None else path


def content_sha256(paths: list[str], root: str | Path | None = None, workers: int = 4) -> str:
    """A sha256 over every file's relative path and the sha256 of its bytes. Each file's hash is cached by path,
    size and mtime (EDGEVP_CACHE/file-sha256.json), so a dataset is read for it once."""
    from .io import sha256_file, write_json

    cache_path = _cache_file().with_name("file-sha256.json")
    try:
        cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    except (OSError, ValueError):
        cache = {}
    cache = cache if isinstance(cache, dict) else {}
    keys = {p: _key(p) for p in paths}
    todo = [p for p in paths if keys[p] not in cache]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        cache.update(zip((keys[p] for p in todo), pool.map(sha256_file, todo)))
    if todo:
        try:
            write_json(cache_path, cache)
        except OSError:
            pass  # a read-only cache only costs the next comparison a re-read
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(f"{_name(p, root)}\0{cache[keys[p]]}\n".encode())
    return h.hexdigest()


def dataset_change(before: dict, now: dict, paths: list[str], root: str | Path | None = None) -> str | None:
    """What changed between two fingerprints of a dataset (None: the same data). Names and sizes that match with
    other mtimes (a copy that did not keep them) are compared by content, when `before` recorded it."""
    if before.get("sha256") == now.get("sha256"):
        return None
    if before.get("files") != now.get("files"):
        return f"{before.get('files')} files then, {now.get('files')} now"
    if before.get("names_sha256") != now.get("names_sha256") or "content_sha256" not in before:
        return "the same number of files, but some were changed"
    if content_sha256(paths, root) != before["content_sha256"]:
        return "the same files with other modification times, and some of their content changed"
    return None
