"""Open a deployed artifact on the device (torch-free): an ONNX file (fp32 / fp16 / int8, a multi-task pack with a
task), a TensorRT engine, or a directory holding one (an export directory, a TensorRT bundle, a pack). What it takes
(input size, resize policy, mean/std, whether normalisation is inside) and its class names come from its own
metadata: the ONNX metadata props edgevp writes, or for an engine the bundle's sidecar (`model.json`, labels.txt)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import ConfigError, IncompatibleError
from ..optional import require
from ..runtime.sidecar import ENGINE_SUFFIXES, precision_of, resolve
from ..runtime.formats import check_engine_name
from .preprocess import Preprocess



@dataclass
class Artifact:
    """A loaded artifact: `logits(x)` on images as `pre` says (N×3×H×W float32, already normalised if needed)."""

    path: Path
    kind: str  # onnx | pack | engine
    precision: str
    pre: Preprocess
    classes: list[str] | None
    meta: dict
    max_batch: int | None  # None: any batch
    task: int | None = None
    _run: Callable[[np.ndarray], np.ndarray] | None = None
    _close: Callable[[], None] | None = None
    notes: list[str] = field(default_factory=list)

    def logits(self, x: np.ndarray, batch: int = 32) -> np.ndarray:
        b = min(batch, self.max_batch) if self.max_batch else batch
        return np.concatenate([self._run(x[i:i + b]) for i in range(0, len(x), b)]).astype(np.float32)

    def close(self) -> None:
        if self._close is not None:
            self._close()

    def describe(self) -> dict:
        return {"path": str(self.path), "kind": self.kind, "precision": self.precision, "task": self.task,
                "classes": None if self.classes is None else len(self.classes), "preprocessing": self.pre.to_dict()}


@dataclass(frozen=True)
class DeviceRuntime:
    """A way to run a model file on the device: `open(path, task)` returns its `Artifact` (its `logits`, what it
    takes, its classes). The device commands reach every runtime through `open_artifact`, by the file's suffix."""

    name: str
    suffixes: tuple[str, ...]
    open: Callable[[Path, int | None], Artifact]


_RUNTIMES: dict[str, DeviceRuntime] = {}


def register_runtime(name: str, suffixes: tuple[str, ...]):
    """Function decorator: `@register_runtime("openvino", (".xml",))` on `open(path, task) -> Artifact`. A suffix
    belongs to one runtime."""

    def wrap(fn):
        taken = {s: r.name for r in _RUNTIMES.values() if r.name != name for s in r.suffixes}
        clash = [s for s in suffixes if s in taken]
        if clash:
            raise ValueError(f"suffix {clash[0]} is already the {taken[clash[0]]} runtime's")
        _RUNTIMES[name] = DeviceRuntime(name, tuple(suffixes), fn)
        return fn

    return wrap


def runtimes() -> list[DeviceRuntime]:
    return list(_RUNTIMES.values())


def open_artifact(path: str | Path, task: int | None = None, size: tuple[int, int] | None = None,
                  mean: tuple | None = None, std: tuple | None = None, labels: Path | None = None) -> Artifact:
    """Load ARTIFACT. Raises IncompatibleError (6) missing/unreadable, ConfigError (2) a foreign model without
    --size/--mean/--std, --task on a single-task model, a pack without --task or out of range, MissingError (4)
    no ONNX Runtime / TensorRT."""
    p = resolve(path, tuple(s for r in _RUNTIMES.values() for s in r.suffixes))
    art = next(r for r in _RUNTIMES.values() if p.suffix in r.suffixes).open(p, task)
    given = [n for n, v in (("--size", size), ("--mean", mean), ("--std", std)) if v is not None]
    if art.pre is None:  # a foreign model: no edgevp metadata
        if len(given) < 3:
            art.close()
            raise ConfigError(f"'{p}' has no edgevp metadata (input size, mean/std, class names)",
                              "give --size HxW, --mean R,G,B and --std R,G,B (0,0,0 and 1,1,1 for a model that takes "
                              "[0, 1] images), and --labels FILE for class names")
        art.pre = Preprocess(size=size, mean=mean, std=std, include_preprocess=False, source="options")
    elif given:
        art.close()
        raise ConfigError(f"'{p}' carries its own preprocessing ({'/'.join(given)} would override it)",
                          "drop " + ", ".join(given))
    if labels is not None:
        if not Path(labels).is_file():
            raise IncompatibleError(f"labels file '{labels}' does not exist")
        art.classes = [line.strip() for line in Path(labels).read_text().splitlines() if line.strip()]
    if art.task is None and task is not None:
        art.close()
        raise ConfigError(f"--task is for multi-task packs; '{p}' is a single-task model", "drop --task")
    return art


@register_runtime("onnxruntime", (".onnx",))
def _open_onnx(p: Path, task: int | None) -> Artifact:
    from ..runtime import feeds

    from ..runtime.sessions import open_session

    sess = open_session(p, purpose="running an ONNX artifact",
                        hint="pip install onnxruntime (onnxruntime-gpu on a GPU)")
    meta = dict(sess.get_modelmeta().custom_metadata_map)
    inputs = sess.get_inputs()
    data = _json(meta.get("data_config"))
    pre = Preprocess.from_data_config(data) if isinstance(data, dict) and "input_size" in data else None
    dim0 = inputs[0].shape[0]
    max_batch = dim0 if isinstance(dim0, int) and dim0 > 0 else None
    info = {k: meta[k] for k in ("method", "backbone", "source_run", "source_checkpoint_sha256") if k in meta}
    if feeds.is_pack([i.name for i in inputs]):
        return _open_pack(p, sess, task, meta, pre, info, max_batch)
    name = inputs[0].name
    classes = _json(meta.get("class_names"))
    return Artifact(p, "onnx", precision_of(p, input_type=inputs[0].type), pre, classes if isinstance(classes, list) else None,
                    info, max_batch, None, lambda x: sess.run(None, {name: x})[0])


def _open_pack(p: Path, sess, task: int | None, meta: dict, pre, info: dict, max_batch) -> Artifact:
    """One task of a pack, its tables bound once to the session (`pack_session.ResidentPack`)."""
    from ..runtime import feeds
    from .pack_session import ResidentPack

    pack = ResidentPack(sess, p)
    n = pack.num_tasks
    if task is None:
        raise ConfigError(f"'{p}' is a multi-task pack of {n} tasks: give --task N (0..{n - 1})")
    feeds.task_ids(str(task), 1, n)  # ConfigError (exit 2) when out of range
    if not pack.tasks:  # no tasks.json beside a pack with constant tables: the task list of the graph's metadata
        listed = _json(meta.get("tasks"))
        pack.tasks = {int(t.get("id", i)): t for i, t in enumerate(listed)} if isinstance(listed, list) else {}
    classes = pack.classes(task)  # exit 2 for a retired id
    k = len(classes)

    def run(x):
        return pack.run(x, np.full(len(x), task, np.int64))[:, :k]

    info.update(pack_task=pack.tasks[task], tasks=n)
    return Artifact(p, "pack", precision_of(p, input_type=sess.get_inputs()[0].type), pre, classes, info, max_batch, task, run)


def _json(text):
    if text is None:
        return None
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return None


def engine_sidecar(p: Path) -> dict:
    """The engine's sidecar (`<engine stem>.json`, else the bundle's model.json), {} when there is none."""
    for side in (p.with_suffix(".json"), p.parent / "model.json"):
        if side.is_file():
            try:
                return json.loads(side.read_text())
            except ValueError:
                raise IncompatibleError(f"'{side}' is corrupt (not JSON)") from None
    return {}


@register_runtime("tensorrt", ENGINE_SUFFIXES)
def _open_engine(p: Path, task: int | None = None) -> Artifact:
    from ..runtime.gpu import compute_capability, gpu_name
    from ..runtime.engine import TrtEngineRunner, check_sidecar

    meta = engine_sidecar(p)
    trt = require("tensorrt", "running a TensorRT engine", "on a Jetson it comes with JetPack; elsewhere evaluate the "
                                                           "bundle's ONNX")
    check_engine_name(p, trt.__version__, compute_capability())
    check_sidecar(p, trt.__version__, gpu_name())  # refuses an engine from another TensorRT / GPU (exit 6)
    data = meta.get("data_config")
    pre = Preprocess.from_data_config(data) if isinstance(data, dict) and "input_size" in data else None
    classes = meta.get("class_names")
    if not isinstance(classes, list) and (p.parent / "labels.txt").is_file():
        classes = [c for c in (p.parent / "labels.txt").read_text().splitlines() if c.strip()]
    shapes = meta.get("shapes") or {}
    lo, hi = (shapes.get("min") or [1])[0], (shapes.get("max") or [1])[0]
    runner = TrtEngineRunner(p, hi if lo == hi else hi)
    info = {k: meta[k] for k in ("method", "backbone", "source_run", "source_checkpoint_sha256", "tensorrt_version",
                                 "gpu") if k in meta}
    return Artifact(p, "engine", precision_of(p, meta), pre,
                    classes if isinstance(classes, list) else None, info, hi, None, runner.run, runner.close)
