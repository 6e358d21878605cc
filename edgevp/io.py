"""Atomic file writes: write to a temporary file in the same directory, then rename over the target."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from .errors import ConfigError, DiskFullError, EdgevpError

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


_ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def disk_full(error: BaseException, folder: Path) -> bool:
    """Whether a failed write into `folder` ran out of space. Writers other than Python's own file objects say so
    in their own words (torch.save: an 'unexpected pos' RuntimeError), so a folder left with under 1 MiB free counts."""
    if isinstance(error, OSError):
        return error.errno in DISK_FULL or isinstance(error, DiskFullError)
    if "No space left" in str(error) or "os error 28" in str(error):
        return True
    try:
        st = os.statvfs(folder)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < 1 << 20


def cannot_write(path: str | Path, error: OSError) -> ConfigError:
    """The one sentence (exit 2) for an output that cannot be written: no permission, not a folder, a full disk."""
    if error.errno in DISK_FULL:
        return DiskFullError(f"cannot write to '{path}': {error.strerror or error}",
                             "free space on that disk, or choose another directory")
    return ConfigError(f"cannot write to '{path}': {error.strerror or error}", "choose a writable directory")


def check_writable(path: str | Path) -> Path:
    """Check that folder `path` can be written (or created) without creating anything: its nearest existing ancestor
    must be a writable folder. ConfigError (exit 2) with the sentence of `cannot_write` if not."""

    path = Path(path)
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise cannot_write(path, OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR)))
    if not os.access(probe, os.W_OK | os.X_OK):
        code = errno.EROFS if _read_only(probe) else errno.EACCES
        raise cannot_write(path, OSError(code, os.strerror(code)))
    return path


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def output_dir(path: str | Path) -> Path:
    """Create folder `path` (and its parents) and check a file can be created in it; ConfigError (exit 2) if not."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise cannot_write(path, e) from None
    return path


@contextlib.contextmanager
def disk_full_is_one_line(folder: Path, out: str | Path) -> Iterator[None]:
    """Any failure inside that ran out of space writing into `folder` (whatever the writer raised) becomes the one
    sentence of `cannot_write` for `out` (exit 2); other errors of ours pass unchanged."""
    try:
        yield
    except Exception as e:
        if (isinstance(e, EdgevpError) and not isinstance(e, DiskFullError)) or not disk_full(e, folder):
            raise
        raise cannot_write(out, _ENOSPC) from None


@contextlib.contextmanager
def staged_dir(out: str | Path) -> Iterator[Path]:
    """A hidden folder inside `out` to write a set of files into: on success each entry moves to `out` under its
    final name (one rename each); on any failure the folder is removed, so nothing half-written is left in `out`."""
    out = output_dir(out)
    try:
        stage = Path(tempfile.mkdtemp(prefix=".staging-", dir=out))
    except OSError as e:
        raise cannot_write(out, e) from None
    try:
        with disk_full_is_one_line(stage, out):
            yield stage
        for entry in sorted(stage.iterdir()):
            final = out / entry.name
            if final.is_dir() and not final.is_symlink():
                shutil.rmtree(final)
            os.replace(entry, final)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `target`; on success it replaces `target` in one rename. A full disk is one
    ConfigError line (exit 2) and leaves `target` as it was."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as e:
        if e.errno not in DISK_FULL:
            raise
        raise cannot_write(target.parent, e) from None
    os.fchmod(fd, 0o666 & ~umask())  # mkstemp makes 0600: a copied bundle must be readable by a container's user
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    except Exception as e:
        if not disk_full(e, target.parent):
            raise
        raise cannot_write(target, _ENOSPC) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def umask() -> int:
    """This process's umask (read by setting it and back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_text(target: str | Path, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text)


def write_json(target: str | Path, data: Any) -> None:
    write_text(target, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def append_jsonl(target: str | Path, record: dict) -> None:
    """Append one JSON line, flushed to disk, whole or not at all."""
    append_line(target, json.dumps(record, default=str), sync=True)


def append_line(target: str | Path, line: str, sync: bool = False) -> None:
    """Append one line, whole or not at all: a failed write (a full disk) is cut off again before it is raised."""
    fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        start = os.lseek(fd, 0, os.SEEK_END)
        data = memoryview((line + "\n").encode())
        try:
            while data:  # unbuffered: nothing is left to be flushed (and half-written) at close
                data = data[os.write(fd, data):]
            if sync:
                os.fsync(fd)
        except OSError as e:
            os.ftruncate(fd, start)
            if e.errno not in DISK_FULL:
                raise
            raise cannot_write(target, e) from None
    finally:
        os.close(fd)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
