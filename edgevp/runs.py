"""Run directories: resolved config, manifest, metrics, and prompt(+head)-only safetensors checkpoints.

Reading a run (config, manifest, metrics) needs no torch, so a device with only ONNX Runtime or TensorRT can
profile and report runs; the checkpoint functions import torch / safetensors when called.

    RUN/config.yaml                 resolved RunConfig (every default materialised)
    RUN/manifest.json               versions, seeds, input hashes, stages with timings; train_info
                                    (records.TrainInfo: parameter counts, MACs, memory, best epoch, test top-1)
    RUN/metrics.jsonl               one JSON line per epoch (records.EpochRecord)
    RUN/log.txt                     the human log
    RUN/checkpoints/{best,last}.safetensors   method + head tensors; header: method, backbone, config, version
    RUN/checkpoints/resume.pt       optimizer / progress / RNG state for --resume (the only pickle)
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import shutil
import sys
from pathlib import Path
from typing import Any, Iterator

from .config import RunConfig, load_yaml, run_config_to_yaml
from .errors import BusyError, ConfigError, IncompatibleError
from .io import append_jsonl, read_json, write_json, write_text
from .optional import optional
from .recipe import build_run_config
from .records import EpochRecord, TrainInfo, train_info_of

SCHEMA_VERSION = 1


def edgevp_version() -> str:
    from . import __version__

    return __version__


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def package_versions(packages: tuple[str, ...]) -> dict[str, str]:
    """Installed versions of `packages` (absent ones are left out)."""
    from importlib import metadata

    versions = {}
    for pkg in packages:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return versions


def environment() -> dict[str, Any]:
    versions = package_versions(("torch", "timm", "torchvision", "safetensors", "numpy", "onnx", "onnxruntime",
                                 "tensorrt"))
    env = {"python": sys.version.split()[0], "platform": platform.platform(), "cpu": platform.processor() or
           platform.machine(), "packages": versions}
    torch = optional("torch")
    if torch is not None:
        env["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            env["gpu"] = torch.cuda.get_device_name(0)
            env["cuda"] = torch.version.cuda
    return env


def default_run_name(cfg: RunConfig) -> str:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{cfg.method}-{cfg.backbone.name.split('.')[0]}-{cfg.data.name}-s{cfg.train.seed}"


class RunDir:
    """A run directory on disk."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    config_path = property(lambda self: self.path / "config.yaml")
    manifest_path = property(lambda self: self.path / "manifest.json")
    metrics_path = property(lambda self: self.path / "metrics.jsonl")
    log_path = property(lambda self: self.path / "log.txt")
    ckpt_dir = property(lambda self: self.path / "checkpoints")
    resume_path = property(lambda self: self.path / "checkpoints" / "resume.pt")

    def checkpoint(self, which: str = "best") -> Path:
        return self.ckpt_dir / f"{which}.safetensors"

    @classmethod
    def create(cls, path: Path, cfg: RunConfig, command: list[str], inputs: dict) -> RunDir:
        run = cls(path)
        run.ckpt_dir.mkdir(parents=True, exist_ok=True)
        write_text(run.config_path, run_config_to_yaml(cfg))
        write_json(run.manifest_path, {
            "schema_version": SCHEMA_VERSION, "run_id": path.name, "created_at": now(), "command": command,
            "pid": os.getpid(), "edgevp_version": edgevp_version(), "method": cfg.method, "backbone": cfg.backbone.name,
            "seed": cfg.train.seed, "deterministic": cfg.train.deterministic, "env": environment(),
            "inputs": inputs, "stages": [],
        })
        return run

    # -- reading -------------------------------------------------------------------------------------------------
    def manifest(self) -> dict:
        if not self.manifest_path.is_file():
            why = "no manifest.json" if self.path.is_dir() else "it does not exist"
            raise IncompatibleError(f"'{self.path}' is not an edgevp run directory ({why})")
        try:
            m = read_json(self.manifest_path)
        except json.JSONDecodeError:
            raise IncompatibleError(f"'{self.manifest_path}' is corrupt (not JSON)") from None
        if m.get("schema_version", 0) > SCHEMA_VERSION:
            raise IncompatibleError(f"run '{self.path}' was written by a newer edgevp (schema {m['schema_version']})",
                                    "upgrade edgevp")
        return m

    def has_checkpoint(self) -> bool:
        """Whether training wrote anything to resume or load (a checkpoint or resume state)."""
        return self.resume_path.is_file() or self.checkpoint("last").is_file() or self.checkpoint("best").is_file()

    def clear(self) -> None:
        """Remove everything in the run directory but its lock (starting a failed or overwritten run again)."""
        for entry in self.path.iterdir():
            if entry.name == LOCK_NAME:
                continue
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()

    def config(self) -> RunConfig:
        if not self.config_path.is_file():
            raise IncompatibleError(f"'{self.path}' has no config.yaml; it is not a complete run directory")
        try:
            return build_run_config(load_yaml(self.config_path, what="run config"))
        except ConfigError as e:  # the run's own record, not the user's recipe: a corrupt run directory
            raise IncompatibleError(f"'{self.config_path}' is corrupt: {e.message}",
                                    "restore it, or train the run again") from None

    def metrics(self) -> list[dict]:
        """metrics.jsonl as written (one dict per line); `epochs()` gives them typed."""
        if not self.metrics_path.is_file():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line.strip()]

    def epochs(self) -> list[EpochRecord]:
        """metrics.jsonl as typed records."""
        return [EpochRecord.from_json(m, str(self.metrics_path)) for m in self.metrics()]

    def train_info(self) -> TrainInfo | None:
        """What training measured (manifest "train_info"); None until training completed."""
        return train_info_of(self.manifest(), f"'{self.manifest_path}' train_info")

    # -- metrics updates -------------------------------------------------------------------------------------------
    def append_epoch(self, record: EpochRecord) -> None:
        append_jsonl(self.metrics_path, record.to_json())

    def keep_epochs_before(self, epoch: int) -> None:
        """Cut metrics.jsonl back to the epochs before `epoch` (a resume continues from there)."""
        kept = [m for m in self.epochs() if m.epoch < epoch]
        write_text(self.metrics_path, "".join(json.dumps(m.to_json()) + "\n" for m in kept))

    def set_train_info(self, info: TrainInfo) -> None:
        self.update_manifest(train_info=info.to_json())

    # -- manifest updates ------------------------------------------------------------------------------------------
    def update_manifest(self, **fields: Any) -> None:
        m = self.manifest()
        m.update(fields)
        write_json(self.manifest_path, m)

    def set_stage(self, name: str, **fields: Any) -> None:
        """Create or update the latest record of stage `name`."""
        m = self.manifest()
        stages = m.setdefault("stages", [])
        rec = next((s for s in reversed(stages) if s["name"] == name), None)
        if rec is None or fields.get("status") == "running" and rec.get("status") != "running":
            rec = {"name": name, "started_at": now()}
            stages.append(rec)
        rec.update(fields)
        write_json(self.manifest_path, m)


LOCK_NAME = ".edgevp.lock"


@contextlib.contextmanager
def writer_lock(path: str | Path, create: bool = True, staging: str | None = None) -> Iterator[Path]:
    """Hold an exclusive lock on directory `path` while writing into it (train, resume, condense, export, pack).

    A second writer gets one line and exit 8 instead of mixing its files into the first's. The lock is an flock on
    `path/.edgevp.lock`, so it dies with its process (kill -9 leaves no stale lock). An output that cannot be created
    or written is exit 2. `staging`: the prefix of the staging folders this kind of writer makes in `path` (`.export-`,
    `.pack-`); those a killed writer left are removed once the lock is held.
    """
    path = Path(path)
    created = not path.exists()
    handle = _acquire(path, create)
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}: {' '.join(sys.argv[:3])}")
        handle.flush()
        _remove_stale_temporaries(path, staging)
        yield path
    finally:
        with contextlib.suppress(OSError):  # a finished directory keeps no lock file; removed while still held
            (path / LOCK_NAME).unlink()
            if created and not any(path.iterdir()):  # made for a writer that wrote nothing (it failed first)
                path.rmdir()
        handle.close()  # releases the flock


def _acquire(path: Path, create: bool):
    """An open, flock-ed `path/.edgevp.lock`. The file is removed when its holder finishes, so a lock taken on a file
    that was unlinked meanwhile is retried on the new one."""
    import fcntl

    while True:
        try:
            if create:
                path.mkdir(parents=True, exist_ok=True)
            handle = open(path / LOCK_NAME, "a+")
        except FileNotFoundError:
            raise IncompatibleError(f"'{path}' does not exist") from None
        except OSError as e:
            raise ConfigError(f"cannot write to '{path}': {e.strerror or e}", "choose a writable directory") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip()
            handle.close()
            raise BusyError(f"'{path}' is being written by another edgevp process{f' ({holder})' if holder else ''}",
                            "wait for it to finish, or choose another directory") from None
        try:
            if os.fstat(handle.fileno()).st_ino == os.stat(path / LOCK_NAME).st_ino:
                return handle
        except FileNotFoundError:
            pass
        handle.close()  # the previous holder removed this file after we opened it: lock the current one


def _remove_stale_temporaries(path: Path, staging: str | None = None) -> None:
    """Temporary files (`io.atomic_path`'s `.NAME.*.tmp`) a killed writer left in `path` or its checkpoints, and its
    staging folders (`staging*`); the lock is held, so none is being written."""
    for folder in (path, path / "checkpoints"):
        for tmp in folder.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
    for stale in path.glob(f"{staging}*") if staging else ():
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
