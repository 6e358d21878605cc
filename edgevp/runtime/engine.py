"""The TensorRT engine runner (export's engine gate, the device and the profiler run engines through it).

Run a serialized TensorRT engine with nothing but `tensorrt` and the CUDA runtime library (JetPack provides
both): device memory and streams through ctypes, no torch, no pycuda. An engine's sidecar JSON is checked first:
engines built with another TensorRT version or on another GPU are refused."""
from __future__ import annotations

import ctypes
import ctypes.util
import json
from pathlib import Path

import numpy as np

from ..errors import ConfigError, IncompatibleError, MissingError
from ..optional import require
from .gpu import gpu_name

_H2D, _D2H = 1, 2


class CudaRT:
    """The few CUDA runtime calls a timing loop needs, loaded from libcudart."""

    def __init__(self, lib: ctypes.CDLL | None = None):
        if lib is None:
            name = ctypes.util.find_library("cudart")
            candidates = [name] if name else []
            candidates += ["libcudart.so", "/usr/local/cuda/lib64/libcudart.so"]
            for c in candidates:
                try:
                    lib = ctypes.CDLL(c)
                    break
                except OSError:
                    continue
        if lib is None:
            raise MissingError("the CUDA runtime (libcudart) was not found", "install CUDA / JetPack, or use trtexec")
        self.lib = lib

    def _check(self, status: int, what: str) -> None:
        if status != 0:
            raise MissingError(f"CUDA call {what} failed with error {status}")

    def malloc(self, nbytes: int) -> int:
        ptr = ctypes.c_void_p()
        self._check(self.lib.cudaMalloc(ctypes.byref(ptr), ctypes.c_size_t(nbytes)), "cudaMalloc")
        return ptr.value or 0

    def free(self, ptr: int) -> None:
        self.lib.cudaFree(ctypes.c_void_p(ptr))

    def copy_to_device(self, dst: int, src: np.ndarray) -> None:
        self._check(self.lib.cudaMemcpy(ctypes.c_void_p(dst), src.ctypes.data_as(ctypes.c_void_p),
                                        ctypes.c_size_t(src.nbytes), _H2D), "cudaMemcpy")

    def copy_to_host(self, dst: np.ndarray, src: int) -> None:
        self._check(self.lib.cudaMemcpy(dst.ctypes.data_as(ctypes.c_void_p), ctypes.c_void_p(src),
                                        ctypes.c_size_t(dst.nbytes), _D2H), "cudaMemcpy")

    def stream(self) -> int:
        s = ctypes.c_void_p()
        self._check(self.lib.cudaStreamCreate(ctypes.byref(s)), "cudaStreamCreate")
        return s.value or 0

    def synchronize(self, stream: int) -> None:
        self._check(self.lib.cudaStreamSynchronize(ctypes.c_void_p(stream)), "cudaStreamSynchronize")


def _trt():
    return require("tensorrt", "profiling an engine", "on a Jetson it comes with JetPack; elsewhere use --backend "
                                                      "trtexec or ort")


def check_sidecar(engine: str | Path, trt_version: str, gpu: str | None) -> dict:
    """Refuse an engine built for another TensorRT version or GPU (engines are not portable)."""
    side = Path(str(engine)).with_suffix(".json")
    if not side.is_file():
        return {}
    meta = json.loads(side.read_text())
    built_trt, built_gpu = meta.get("tensorrt_version"), meta.get("gpu")
    if built_trt and built_trt.split(".")[:2] != trt_version.split(".")[:2]:
        raise IncompatibleError(f"engine '{engine}' was built with TensorRT {built_trt}, this is {trt_version}",
                                "rebuild it on this device (see build_engine.sh in the export bundle)")
    if built_gpu and gpu and built_gpu != gpu:
        raise IncompatibleError(f"engine '{engine}' was built on {built_gpu}, this GPU is {gpu}",
                                "rebuild it on this device (see build_engine.sh in the export bundle)")
    return meta


class TrtEngineRunner:
    """Deserialize an engine, bind device buffers for a fixed batch, and expose `infer` / `sync` for timing."""

    def __init__(self, engine_path: str | Path, batch: int, cuda: CudaRT | None = None):
        path = Path(engine_path)
        if not path.is_file():
            raise IncompatibleError(f"engine '{path}' does not exist")
        trt = _trt()
        meta = check_sidecar(path, trt.__version__, gpu_name())
        self.cuda = cuda or CudaRT()
        logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(logger).deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise IncompatibleError(f"TensorRT could not deserialize '{path}' (another TensorRT version or GPU?)",
                                    "rebuild it on this device")
        self.context = self.engine.create_execution_context()
        self.stream = self.cuda.stream()
        self.buffers: list[int] = []
        self.batch = batch
        self.io: dict[str, tuple[int, list[int], np.dtype, bool]] = {}  # name -> (ptr, shape, dtype, is_input)
        shapes = {}
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            shape = list(self.engine.get_tensor_shape(name))
            if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                if shape[0] == -1:
                    shape[0] = batch
                    self.context.set_input_shape(name, shape)
                elif shape[0] != batch:
                    raise ConfigError(f"engine '{path}' was built for batch {shape[0]}, not {batch}",
                                      "build an engine for this batch or with a dynamic batch profile")
            shapes[name] = shape
        for name, _ in shapes.items():
            shape = list(self.context.get_tensor_shape(name))
            dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
            nbytes = int(np.prod(shape)) * dtype.itemsize
            ptr = self.cuda.malloc(max(nbytes, 1))
            self.buffers.append(ptr)
            self.context.set_tensor_address(name, ptr)
            is_input = self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            self.io[name] = (ptr, shape, dtype, is_input)
            if is_input:
                data = np.random.default_rng(0).random(shape).astype(dtype)
                self.cuda.copy_to_device(ptr, data)
        self.conditions = {"backend": "trt", "tensorrt_version": trt.__version__, "gpu": gpu_name(),
                           "engine": str(path), "batch": batch, "engine_meta": meta,
                           "scope": "model-only, device-resident input"}

    def infer(self) -> None:
        if not self.context.execute_async_v3(self.stream):
            raise RuntimeError("TensorRT execution failed")

    def sync(self) -> None:
        self.cuda.synchronize(self.stream)

    def run(self, x: np.ndarray) -> np.ndarray:
        """Logits of the single-input engine on `x`, `batch` rows at a time (the last padded): its `logits` output
        (a bundle's engine also has `probs`), or its only one."""
        (iptr, ishape, idtype, _), = [v for v in self.io.values() if v[3]]
        outputs = {k: v for k, v in self.io.items() if not v[3]}
        optr, oshape, odtype, _ = outputs["logits"] if "logits" in outputs else next(iter(outputs.values()))
        outs = []
        for i in range(0, len(x), self.batch):
            chunk = x[i:i + self.batch]
            pad = np.zeros(ishape, idtype)
            pad[:len(chunk)] = chunk
            self.cuda.copy_to_device(iptr, np.ascontiguousarray(pad))
            self.infer()
            self.sync()
            out = np.empty(oshape, odtype)
            self.cuda.copy_to_host(out, optr)
            outs.append(out[:len(chunk)].astype(np.float32))
        return np.concatenate(outs)

    def close(self) -> None:
        for p in self.buffers:
            self.cuda.free(p)
        self.buffers.clear()
