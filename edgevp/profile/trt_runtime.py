"""The TensorRT engine runner moved to `edgevp.runtime.engine` (export, the device and the profiler share it);
this name stays for existing imports."""
from ..runtime.engine import CudaRT, TrtEngineRunner, check_sidecar  # noqa: F401
