"""What many test files share: the tiny trained runs (trained once per test session, each caller gets its own
copy), the in-process CLI, and the one helper that runs `python -m edgevp` in a child process.

A child process is used only where it proves something an in-process call cannot: a kill, an environment without
torch, an import-time property, torchrun, real file-system limits. Everything else calls the typer app in-process.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from filelock import FileLock
from typer.testing import CliRunner

from .conftest import tiny_config

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def cli(*args, **kw):
    """`edgevp ARGS…` in-process (typer's runner); the result has `.exit_code` and `.output`."""
    from edgevp.cli import app

    return CliRunner().invoke(app, [str(a) for a in args], **kw)


def edgevp(*args, env: dict | None = None, cwd: Path | None = None, timeout: float = 600,
           **kw) -> subprocess.CompletedProcess:
    """`python -m edgevp ARGS…` in a child process, text output captured."""
    return subprocess.run([sys.executable, "-m", "edgevp", *map(str, args)], env=env or ENV, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, **kw)


# -- tiny trained runs, shared --------------------------------------------------------------------------------------
# name -> (method, prompt options, extra config sections); every run is one epoch on 128 digits at 32 px
RUNS: dict[str, tuple[str, dict | None, dict]] = {
    "linear": ("linear", None, {}),
    "vpt2": ("vpt", {"num_tokens": 2}, {}),
    "vpt4": ("vpt", {"num_tokens": 4}, {}),
    "lorvp": ("lorvp", None, {}),
    "lorvp_r2": ("lorvp", {"rank": 2}, {}),
    "e2vpt": ("e2vpt", {"num_tokens": 2, "num_kv": 2}, {}),
    "linear_seed5": ("linear", None, {"train": {"seed": 5}}),
}


def _config(name: str):
    method, prompt, sections = RUNS[name]
    sections = {k: dict(v) for k, v in sections.items()}
    sections.setdefault("train", {}).setdefault("epochs", 1)
    return tiny_config(method, prompt, **sections)


class RunCache:
    """Trains each named run once per session (across xdist workers too: a file lock per run) and hands out
    copies, so a test may export into, corrupt or delete its copy without touching anyone else's."""

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def _trained(self, name: str, export: bool) -> Path:
        key = hashlib.sha256(json.dumps([RUNS[name], export], sort_keys=True, default=str).encode()).hexdigest()[:10]
        path = self.root / f"{name}{'-export' if export else ''}-{key}"
        with FileLock(str(path) + ".lock"):
            if not (path / ".done").exists():
                if path.exists():
                    shutil.rmtree(path)
                if export:
                    shutil.copytree(self._trained(name, False), path, symlinks=True)
                    from edgevp.export.pipeline import ExportOptions, export_run

                    export_run(path, ExportOptions())
                else:
                    from edgevp.train import fit

                    fit(_config(name), out=path)
                (path / ".done").touch()
        return path

    def get(self, name: str, dest: Path, export: bool = False) -> Path:
        """A private copy of run `name` at `dest` (with its ONNX export under `export/` when `export`)."""
        shutil.copytree(self._trained(name, export), dest, symlinks=True, ignore=shutil.ignore_patterns(".done"))
        return dest


# -- kill -9 at a point of a real process ---------------------------------------------------------------------------
def kill_after(args: list, delay: float, watch=None) -> int:
    """Start `edgevp ARGS…`, wait until the work has begun (`watch`: a path that exists, or a function that returns
    True) plus `delay` seconds, then SIGKILL it."""
    import signal
    import time

    begun = watch if callable(watch) else (lambda: watch is None or watch.exists())
    p = subprocess.Popen([sys.executable, "-m", "edgevp", *map(str, args)], env=ENV, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    t0 = time.time()
    while not begun() and p.poll() is None and time.time() - t0 < 120:
        time.sleep(0.02)
    time.sleep(delay)
    p.send_signal(signal.SIGKILL)
    return p.wait()


def assert_nothing_partial(folder: Path) -> None:
    """Every file under its final name is whole: JSON parses, checkpoints load, ONNX checks; no temp file looks
    final."""
    from safetensors.torch import load_file

    for f in folder.rglob("*"):
        if not f.is_file():
            continue
        if f.suffix == ".json":
            json.loads(f.read_text())
        elif f.suffix == ".safetensors":
            load_file(str(f))
        elif f.name == "metrics.jsonl":
            for line in f.read_text().splitlines():
                json.loads(line)
        elif f.suffix == ".onnx":
            import onnx

            onnx.checker.check_model(str(f))


# -- ONNX exports, memoised ------------------------------------------------------------------------------------------
class ExportMemo:
    """`torch.onnx.export` memoised across the session's workers: the same module (pickled: its class, attributes,
    parameters and buffers) exported with the same argument shapes and options writes the bytes the first export
    wrote. A dynamo export of a tiny ViT costs seconds of CPU and the suite exports the same few tiny runs again and
    again; each distinct module is still exported by torch once. A module that cannot be pickled, a non-path
    destination or a failing export is not memoised. A hit returns None, not torch's ONNXProgram: edgevp's callers
    read the file it wrote."""

    def __init__(self, root: Path, export):
        self.root, self.export, self.hits, self.misses = root, export, 0, 0
        root.mkdir(parents=True, exist_ok=True)

    def key(self, model, args, kw) -> str | None:
        import io
        import pickle

        import torch

        class ByContent(pickle.Pickler):  # a tensor by its values (torch's own pickling of equal tensors can differ)
            def persistent_id(self, obj):
                if isinstance(obj, torch.Tensor):
                    t = obj.detach().cpu().contiguous()
                    return ("tensor", str(t.dtype), tuple(t.shape), hashlib.sha256(t.view(-1).view(torch.uint8)
                                                                                    .numpy().tobytes()).hexdigest())
                return None

        shapes = [(tuple(a.shape), str(a.dtype)) if isinstance(a, torch.Tensor) else repr(a) for a in args]
        buf = io.BytesIO()
        try:
            ByContent(buf, protocol=4).dump((model, shapes, sorted((k, repr(v)) for k, v in kw.items())))
        except Exception:  # noqa: BLE001 - local functions, hooks: export for real
            return None
        return hashlib.sha256(buf.getvalue() + torch.__version__.encode()).hexdigest()[:20]

    def __call__(self, model, args=(), f=None, **kw):
        key = self.key(model, args if isinstance(args, tuple) else (args,), kw) if isinstance(f, (str, Path)) else None
        if key is None:
            return self.export(model, args, f, **kw)
        cached = self.root / f"{key}.onnx"
        with FileLock(str(cached) + ".lock"):
            if cached.exists():
                self.hits += 1
                shutil.copyfile(cached, f)
                return None
            self.misses += 1
            result = self.export(model, args, f, **kw)
            tmp = cached.with_suffix(".tmp")
            shutil.copyfile(f, tmp)
            os.replace(tmp, cached)
        return result
