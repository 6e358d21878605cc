"""Datasets' image files before training: checking that every file decodes, and fingerprints that tell whether a
folder dataset changed. numpy + Pillow only (no torch). Decoding itself is edgevp.runtime.decode's (the one decoder
training and the device share).
"""
from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .errors import DataError
from .runtime.decode import decode_error

__all__ = ["check_images", "content_sha256", "dataset_change", "fingerprint"]


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
        errors = [(p, err) for p, err in zip(todo, pool.map(decode_error, todo)) if err is not None]
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
