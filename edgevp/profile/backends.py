"""Inference backends for timing: ONNX Runtime (CPU / CUDA / TensorRT execution providers), TensorRT engines and
PyTorch. Each `prepare_*(...)` returns (call, sync, conditions) where `conditions` records what really ran."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import ConfigError, MissingError
from ..runtime.engine import TrtEngineRunner, check_sidecar  # noqa: F401 (check_sidecar: re-exported)

ORT_PROVIDERS = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
                 "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]}


def _input_shape(dims, batch: int) -> list[int]:
    shape = []
    for i, d in enumerate(dims):
        if isinstance(d, int) and d > 0:
            if i == 0 and d != batch:
                raise ConfigError(f"the model was exported for batch {d}, not {batch}", "export with dynamic batch")
            shape.append(d)
        elif i == 0:
            shape.append(batch)
        else:
            raise ConfigError(f"input dimension {i} is dynamic ({d}); profile needs a fixed image size")
    return shape


def prepare_ort(path: str | Path, batch: int, device: str = "cpu", threads: int | None = None,
                task: str | None = None):
    """An ONNX Runtime session on the requested execution provider; refuses one that silently fell back. A pack is
    fed task ids `task` (one id, or "mixed": a different task per sample, the default)."""
    from ..runtime.sessions import onnxruntime, open_session
    from ..runtime.sidecar import precision_of

    ort = onnxruntime("the ort backend", "pip install 'edgevp[onnx]', or onnxruntime-gpu on a CUDA machine")
    wanted = ORT_PROVIDERS.get(device)
    if wanted is None:
        raise ConfigError(f"unknown ort device '{device}'", "choose cpu, cuda or tensorrt")
    if wanted[0] not in ort.get_available_providers():
        raise MissingError(f"ONNX Runtime here has no {wanted[0]}", "install onnxruntime-gpu on a CUDA machine")
    # the measurement options: every graph optimisation, threads that do not spin between runs
    sess = open_session(str(path), providers=wanted, threads=threads, optimization="all",
                        spinning=False, log_severity=2)
    got = sess.get_providers()
    if got[0] != wanted[0]:  # the session fell back: numbers would be for the wrong device
        raise MissingError(f"asked for {wanted[0]} but the session runs on {got[0]}")
    path = str(path)
    inp = sess.get_inputs()[0]
    x = np.random.default_rng(0).random(_input_shape(inp.shape, batch), dtype=np.float32)
    feed = {inp.name: x, **_pack_inputs(sess, path, batch, task or "mixed")}
    conditions = {"backend": "ort", "device": device, "providers": got, "threads": threads,
                  "ort_version": ort.__version__, "input_shape": list(x.shape),
                  "precision": precision_of(path, input_type=inp.type)}
    return (lambda: sess.run(None, feed)), None, conditions


def _pack_inputs(sess, path: str, batch: int, task: str) -> dict:
    """A multi-task pack's other inputs: task ids (`mixed` or one task) and its tables (`tables.npz`)."""
    from ..runtime import feeds

    names = [i.name for i in sess.get_inputs()]
    if not feeds.is_pack(names):
        return {}
    tables = feeds.load_tables(path, {i.name: i.shape for i in sess.get_inputs()})
    n = feeds.num_tasks(path, tables, sess.get_modelmeta().custom_metadata_map)
    return {feeds.TASK: feeds.task_ids(task, batch, n), **tables}


def prepare_trt(engine: str | Path, batch: int):
    """A TensorRT engine through the TensorRT runtime, after checking its sidecar against this GPU/TensorRT."""
    runner = TrtEngineRunner(engine, batch)
    return runner.infer, runner.sync, runner.conditions


def prepare_torch(model, batch: int, input_size, device: str = "cpu", compile: bool = False,
                  threads: int | None = None) -> tuple[Callable, Callable | None, dict]:
    """PyTorch eager (or torch.compile on CUDA) for comparison; needs the training stack."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise MissingError("PyTorch sees no CUDA GPU here", "profile with --device cpu, or on a machine with a GPU")
    model = model.eval().to(dev)
    if compile:
        if dev.type != "cuda":
            raise ConfigError("--compile is for CUDA; CPU numbers are eager")
        model = torch.compile(model)
    x = torch.rand(batch, *input_size, device=dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else None

    def call():
        with torch.inference_mode():
            return model(x)

    cond = {"backend": "torch", "device": str(dev), "compiled": compile, "threads": torch.get_num_threads(),
            "torch_version": torch.__version__, "input_shape": list(x.shape), "precision": "fp32"}
    return call, sync, cond


def cpu_threads_default() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
