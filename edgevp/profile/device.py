"""The conditions a latency number depends on: CPU, GPU, and on a Jetson the power mode and clocks."""
from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path


def _run(cmd: list[str], timeout: float = 5.0) -> str | None:
    if shutil.which(cmd[0]) is None:
        return None
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _read(path: str | Path) -> str | None:
    try:
        return Path(path).read_text().strip().rstrip("\x00")
    except OSError:
        return None


def gpu_name() -> str | None:
    out = _run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"])
    if out:
        return out.splitlines()[0].strip()
    model = _read("/proc/device-tree/model")  # Jetson boards name themselves here
    return model if model and "jetson" in model.lower() else None


def compute_capability() -> str | None:
    """CUDA compute capability of GPU 0 ('8.7'), from nvidia-smi or, on a Jetson, the SoC; None when unknown."""
    out = _run(["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"])
    if out and out.splitlines()[0].strip().replace(".", "").isdigit():
        return out.splitlines()[0].strip()
    compat = _read("/proc/device-tree/compatible") or ""
    for soc, cc in (("tegra234", "8.7"), ("tegra194", "7.2"), ("tegra186", "6.2"), ("tegra210", "5.3")):
        if soc in compat:
            return cc
    return None


def cpu_name() -> str:
    text = _read("/proc/cpuinfo") or ""
    for line in text.splitlines():
        if line.lower().startswith(("model name", "hardware")):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def jetson_state(root: str = "/") -> dict | None:
    """Power mode and clocks on a Jetson (None elsewhere), with warnings when they make timings unstable."""
    root = Path(root)
    release = _read(root / "etc/nv_tegra_release")
    if release is None:
        return None
    state: dict = {"l4t": release.splitlines()[0], "warnings": []}
    mode = _run(["nvpmodel", "-q"])
    if mode:
        state["nvpmodel"] = " ".join(mode.split())
    cpus = sorted((root / "sys/devices/system/cpu").glob("cpu[0-9]*/cpufreq"))
    freqs = {}
    for c in cpus:
        cur, lo, hi = (_read(c / f) for f in ("scaling_cur_freq", "scaling_min_freq", "scaling_max_freq"))
        gov = _read(c / "scaling_governor")
        freqs[c.parent.name] = {"cur_khz": cur, "min_khz": lo, "max_khz": hi, "governor": gov}
    state["cpu_clocks"] = freqs
    unlocked = [n for n, f in freqs.items() if f["min_khz"] != f["max_khz"]]
    if unlocked:
        state["warnings"].append(f"CPU clocks not locked on {len(unlocked)} cores: run `sudo jetson_clocks` for "
                                 "stable numbers")
    for dev in (root / "sys/devices").glob("*gpu*/devfreq/*"):
        cur, lo, hi = (_read(dev / f) for f in ("cur_freq", "min_freq", "max_freq"))
        state["gpu_clock"] = {"cur_hz": cur, "min_hz": lo, "max_hz": hi}
        if lo != hi:
            state["warnings"].append("GPU clock can scale (min != max): run `sudo jetson_clocks` to lock it")
        break
    return state


def conditions() -> dict:
    """Machine facts recorded with every latency number."""
    env = {"host": platform.node(), "os": platform.platform(), "cpu": cpu_name(), "cpu_count": os.cpu_count(),
           "python": platform.python_version()}
    gpu = gpu_name()
    if gpu:
        env["gpu"] = gpu
        clocks = _run(["nvidia-smi", "--query-gpu=clocks.sm,clocks.max.sm,pstate,driver_version",
                       "--format=csv,noheader"])
        if clocks:
            env["gpu_clocks"] = clocks
    jetson = jetson_state()
    if jetson:
        env["jetson"] = jetson
    return env
