"""The conditions a latency number depends on: CPU, GPU, and on a Jetson the power mode and clocks."""
from __future__ import annotations

import os
import platform

# the GPU / Jetson probe lives in the runtime (export, the device and the profiler share it)
from ..runtime.gpu import gpu_clocks, gpu_name, jetson_state, read_text


def cpu_name() -> str:
    text = read_text("/proc/cpuinfo") or ""
    for line in text.splitlines():
        if line.lower().startswith(("model name", "hardware")):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def conditions() -> dict:
    """Machine facts recorded with every latency number."""
    env = {"host": platform.node(), "os": platform.platform(), "cpu": cpu_name(), "cpu_count": os.cpu_count(),
           "python": platform.python_version()}
    gpu = gpu_name()
    if gpu:
        env["gpu"] = gpu
        clocks = gpu_clocks()
        if clocks:
            env["gpu_clocks"] = clocks
    jetson = jetson_state()
    if jetson:
        env["jetson"] = jetson
    return env
