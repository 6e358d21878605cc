"""Serving a multi-task pack on the device (torch-free): one ONNX Runtime session whose task tables are resident.

A pack made with `--tables-as-inputs` takes its tables as graph inputs. Fed through `session.run(feed)` they would be
handed to ONNX Runtime again on every call (and, on a GPU provider, copied to the device every call). `ResidentPack`
binds them once per session as OrtValues on the session's device (IO binding); each call binds only the images and
the per-sample task ids, so a batch mixes tasks freely and the tables are never copied again. Tasks added or removed
with `edgevp pack --add/--remove` are picked up by opening the pack again (`reload`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ConfigError, IncompatibleError
from ..optional import require
from ..runtime import feeds

DEVICES = {"CUDAExecutionProvider": "cuda", "DmlExecutionProvider": "dml"}


class ResidentPack:
    """`run(images, task_ids)` -> logits (B, C_max) of a pack session, its tables bound once.

    `tasks` maps live task ids to their tasks.json records; `retired` the removed ids (NaN logits, as out of range).
    """

    def __init__(self, sess, model_path: str | Path):
        ort = require("onnxruntime", "running an ONNX pack", "pip install onnxruntime (onnxruntime-gpu on a GPU)")
        self.sess, self.path = sess, Path(model_path)
        inputs = {i.name: i.shape for i in sess.get_inputs()}
        if not feeds.is_pack(list(inputs)):
            raise ConfigError(f"'{model_path}' is not a multi-task pack (no `images` and `task` inputs)")
        self.tables = feeds.load_tables(model_path, inputs)
        self.num_tasks = feeds.num_tasks(model_path, self.tables, dict(sess.get_modelmeta().custom_metadata_map))
        doc = _tasks_doc(self.path)
        self.tasks, self.retired = feeds.live_tasks(doc), feeds.retired_ids(doc)
        self.device = DEVICES.get(sess.get_providers()[0], "cpu")
        self.output = sess.get_outputs()[0].name
        self.binding = sess.io_binding()
        # the tables' OrtValues live as long as this object: the binding refers to their memory
        self.values = {k: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v), self.device, 0)
                       for k, v in self.tables.items()}
        for name, value in self.values.items():
            self.binding.bind_ortvalue_input(name, value)

    def run(self, images: np.ndarray, task_ids: np.ndarray) -> np.ndarray:
        """Logits (B, C_max) for images with per-sample task ids (a mixed batch); a retired or out-of-range id gives
        NaN for that sample only."""
        ids = np.ascontiguousarray(task_ids, dtype=np.int64).reshape(-1)
        if len(ids) != len(images):
            raise ConfigError(f"{len(images)} images but {len(ids)} task ids")
        self.binding.bind_cpu_input(feeds.IMAGES, np.ascontiguousarray(images, dtype=np.float32))
        self.binding.bind_cpu_input(feeds.TASK, ids)
        self.binding.bind_output(self.output, self.device)  # allocated by ONNX Runtime for this batch's shape
        self.sess.run_with_iobinding(self.binding)
        return self.binding.copy_outputs_to_cpu()[0]

    def classes(self, task: int) -> list[str]:
        """Task `task`'s class names (exit 2 for a retired or unknown id)."""
        return list(self.record(task)["classes"])

    def record(self, task: int) -> dict:
        if task in self.retired:
            raise ConfigError(f"task {task} of '{self.path}' was removed from the pack (its id is retired)",
                              "see tasks.json for the pack's tasks")
        if task not in self.tasks:
            known = ", ".join(map(str, sorted(self.tasks)))
            raise ConfigError(f"task {task} is not in the pack '{self.path}'", f"its tasks: {known}")
        if not isinstance(self.tasks[task].get("classes"), list):
            raise IncompatibleError(f"'{self.path}' lists no classes for task {task}",
                                    "copy the pack's tasks.json beside it")
        return self.tasks[task]

    def predict(self, images: np.ndarray, task_ids: np.ndarray) -> list[tuple[int, str, float]]:
        """Per sample: (task id, class name, logit) of its top-1 among its own task's classes."""
        logits = self.run(images, task_ids)
        out = []
        for row, t in zip(logits, np.asarray(task_ids).tolist()):
            names = self.classes(int(t))
            k = int(np.argmax(row[:len(names)]))
            out.append((int(t), names[k], float(row[k])))
        return out


def _tasks_doc(path: Path) -> dict:
    """The pack's tasks.json (the graph's metadata carries the task list too, as packed; tasks.json is current)."""
    import json

    side = path.parent / "tasks.json"
    try:
        doc = json.loads(side.read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def open_pack(path: str | Path, providers: list[str] | None = None) -> ResidentPack:
    """An ONNX Runtime session of the pack at `path` (its model.onnx or its directory) with its tables resident."""
    from ..runtime.sessions import open_session
    from ..runtime.sidecar import resolve

    p = resolve(path)
    sess = open_session(p, providers=providers, purpose="running an ONNX pack",
                        hint="pip install onnxruntime (onnxruntime-gpu on a GPU)")
    return ResidentPack(sess, p)
