"""The one GPU / Jetson probe (standard library only): is there a CUDA GPU, what is it called, its compute
capability, and on a Jetson the board, its L4T release, power mode and clocks.

Export names an engine and writes its sidecar with these answers; the device and the profiler compare an engine's
sidecar with them. Sources, in order: `nvidia-smi` (discrete GPUs), then the Jetson's own files
(`/proc/device-tree/model`, `/proc/device-tree/compatible`, `/etc/nv_tegra_release`), then the NVIDIA driver's
`/proc/driver/nvidia/version`. Nothing here imports CUDA, torch or TensorRT.

Every file is read under `root` ("/" on a real machine) so tests can fake a machine with a directory; commands are
found on PATH. Two copies stay outside by design: `build_engine.sh` (export/bundle.py) runs on a device without
edgevp and keeps its shell probe of the compute capability and its few lines of Python for the GPU name; they
give the same answers as `compute_capability` and `gpu_name` (same commands, same files, same SoC table).
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

# Jetson SoCs (in /proc/device-tree/compatible) -> CUDA compute capability
TEGRA_SM = (("tegra234", "8.7"), ("tegra194", "7.2"), ("tegra186", "6.2"), ("tegra210", "5.3"))


def command_output(cmd: list[str], timeout: float = 5.0) -> str | None:
    """A command's stripped stdout, or None when it is not on PATH, fails to run or prints nothing."""
    if shutil.which(cmd[0]) is None:
        return None
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def read_text(path: str | Path) -> str | None:
    """A small system file's text (device-tree strings lose their trailing NUL), or None when unreadable."""
    try:
        return Path(path).read_text().strip().rstrip("\x00")
    except OSError:
        return None


def _under(root: str | Path, path: str) -> Path:
    return Path(root) / path.lstrip("/")


def _smi(field: str) -> str | None:
    out = command_output(["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader"])
    return out.splitlines()[0].strip() if out else None


def jetson_model(root: str | Path = "/") -> str | None:
    """The Jetson board's name ('NVIDIA Jetson Orin Nano Developer Kit'), None elsewhere."""
    model = read_text(_under(root, "/proc/device-tree/model"))
    return model if model and "jetson" in model.lower() else None


def l4t_release(root: str | Path = "/") -> str | None:
    """The first line of a Jetson's /etc/nv_tegra_release (its L4T / JetPack release), None elsewhere."""
    release = read_text(_under(root, "/etc/nv_tegra_release"))
    return release.splitlines()[0] if release else None


def gpu_name(root: str | Path = "/") -> str | None:
    """GPU 0's name from nvidia-smi, or on a Jetson the board's name; None without an NVIDIA GPU."""
    return _smi("name") or jetson_model(root)


def compute_capability(root: str | Path = "/") -> str | None:
    """CUDA compute capability of GPU 0 ('8.7'), from nvidia-smi or, on a Jetson, the SoC; None when unknown."""
    out = _smi("compute_cap")
    if out and out.replace(".", "").isdigit():
        return out
    compat = read_text(_under(root, "/proc/device-tree/compatible")) or ""
    for soc, cc in TEGRA_SM:
        if soc in compat:
            return cc
    return None


def cuda_present(root: str | Path = "/") -> bool:
    """Whether this machine has an NVIDIA GPU with its driver: nvidia-smi names one, the driver's /proc file
    exists, or it is a Jetson. (Whether a given library can use it is that library's question.)"""
    return bool(gpu_name(root) or read_text(_under(root, "/proc/driver/nvidia/version")) or l4t_release(root))


def jetson_state(root: str | Path = "/") -> dict | None:
    """Power mode and clocks on a Jetson (None elsewhere), with warnings when they make timings unstable."""
    release = l4t_release(root)
    if release is None:
        return None
    root = Path(root)
    state: dict = {"l4t": release, "warnings": []}
    mode = command_output(["nvpmodel", "-q"])
    if mode:
        state["nvpmodel"] = " ".join(mode.split())
    freqs = {}
    for c in sorted((root / "sys/devices/system/cpu").glob("cpu[0-9]*/cpufreq")):
        cur, lo, hi = (read_text(c / f) for f in ("scaling_cur_freq", "scaling_min_freq", "scaling_max_freq"))
        freqs[c.parent.name] = {"cur_khz": cur, "min_khz": lo, "max_khz": hi,
                                "governor": read_text(c / "scaling_governor")}
    state["cpu_clocks"] = freqs
    unlocked = [n for n, f in freqs.items() if f["min_khz"] != f["max_khz"]]
    if unlocked:
        state["warnings"].append(f"CPU clocks not locked on {len(unlocked)} cores: run `sudo jetson_clocks` for "
                                 "stable numbers")
    for dev in (root / "sys/devices").glob("*gpu*/devfreq/*"):
        cur, lo, hi = (read_text(dev / f) for f in ("cur_freq", "min_freq", "max_freq"))
        state["gpu_clock"] = {"cur_hz": cur, "min_hz": lo, "max_hz": hi}
        if lo != hi:
            state["warnings"].append("GPU clock can scale (min != max): run `sudo jetson_clocks` to lock it")
        break
    return state


def gpu_clocks() -> str | None:
    """nvidia-smi's SM clock, its maximum, the performance state and the driver version, one CSV line."""
    return command_output(["nvidia-smi", "--query-gpu=clocks.sm,clocks.max.sm,pstate,driver_version",
                           "--format=csv,noheader"])
