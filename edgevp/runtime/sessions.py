"""The one ONNX Runtime session factory: every ONNX Runtime session edgevp opens (export and pack gates, the device,
the profiler, the MAC counter, the weights check) is opened here, with its options as parameters.

Defaults (what a caller gets by passing nothing but the model):

- `providers`: CPU only (`["CPUExecutionProvider"]`); the profiler passes its CUDA / TensorRT lists.
- `threads`: None = ONNX Runtime's own choice; an integer sets the intra-op pool to it and the inter-op pool to 1.
- `optimization`: None = ONNX Runtime's default level (which is `all` today); `disable`, `basic`, `extended` or
  `all` set it explicitly (the profiler passes `all` so its numbers do not depend on the default).
- `spinning`: None = ONNX Runtime's default (intra-op threads spin); False stops them spinning between runs, as the
  profiler measures.
- `profile_prefix`: None = no ONNX Runtime profiling; a path prefix turns its JSON trace on.
- `log_severity`: 3 = errors only (ONNX Runtime's warnings about unused initialisers and the like are not ours).

A model ONNX Runtime cannot load is one line (IncompatibleError, exit 6); ONNX Runtime missing is one line
(MissingError, exit 4).
"""
from __future__ import annotations

from pathlib import Path

from ..errors import IncompatibleError
from ..optional import require

CPU = ("CPUExecutionProvider",)
OPTIMIZATION = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
                "all": "ORT_ENABLE_ALL"}
HINT = "pip install 'edgevp[onnx]' (onnxruntime-gpu on a GPU)"


def onnxruntime(purpose: str = "running an ONNX model", hint: str | None = None):
    """The onnxruntime module, or MissingError (exit 4) in one line naming `purpose`."""
    return require("onnxruntime", purpose, hint or HINT)


def session_options(ort, *, threads: int | None = None, optimization: str | None = None,
                    spinning: bool | None = None, profile_prefix: str | None = None, log_severity: int = 3):
    """The SessionOptions of `open_session` (defaults in the module docstring)."""
    so = ort.SessionOptions()
    so.log_severity_level = log_severity
    if threads:
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    if optimization is not None:
        if optimization not in OPTIMIZATION:
            raise ValueError(f"optimization must be one of {sorted(OPTIMIZATION)}, got {optimization!r}")
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPTIMIZATION[optimization])
    if spinning is not None:
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = str(profile_prefix)
    return so


def open_session(model: str | Path | bytes, *, providers: list[str] | tuple[str, ...] | None = None,
                 threads: int | None = None, optimization: str | None = None, spinning: bool | None = None,
                 profile_prefix: str | None = None, log_severity: int = 3, purpose: str = "running an ONNX model",
                 hint: str | None = None):
    """An `onnxruntime.InferenceSession` of `model` (a path, or a serialised ModelProto's bytes).

    `purpose`/`hint` word the one-line error when ONNX Runtime is missing. The session's providers are what ONNX
    Runtime granted: a caller that must not fall back compares `sess.get_providers()` with what it asked for."""
    ort = onnxruntime(purpose, hint)
    so = session_options(ort, threads=threads, optimization=optimization, spinning=spinning,
                         profile_prefix=profile_prefix, log_severity=log_severity)
    src = model if isinstance(model, bytes) else str(model)
    try:
        return ort.InferenceSession(src, so, providers=list(providers or CPU))
    except Exception as e:  # noqa: BLE001 - ORT raises its own types for unreadable models
        name = "the model" if isinstance(model, bytes) else f"'{model}'"
        raise IncompatibleError(f"ONNX Runtime cannot load {name}: {str(e).splitlines()[0][:200]}") from None
