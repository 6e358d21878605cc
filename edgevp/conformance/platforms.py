"""The TensorRT platforms a device bundle is made for, chosen on purpose (torch-free).

| platform | TensorRT | ONNX importer it carries | what follows for the bundle |
|---|---|---|---|
| `jp5.1`  | 8.5 (JetPack 5.1.x, 8.5.2) | opsets up to 17; `Shape` start/end ignored | opset 17, batch from `Shape`+`Slice`, weak typing (`--fp16`/`--int8`) |
| `jp6.0`  | 8.6 (JetPack 6.0, 8.6.2)   | opsets up to 17; `Shape` start/end ignored | as jp5.1 |
| `jp6.1`, `jp6.2` | 10.3          | opsets 9 to 20                             | strongly typed (`--stronglyTyped`) |
| `trt10`  | desktop TensorRT 10.x (10.0 and later) | opsets 9 to 20                 | strongly typed |

`all` (the default) is a bundle every one of them imports: the most restrictive graph form (opset 17, no `Shape`
start/end), and a `build_engine.sh` that picks the trtexec flags from the TensorRT it finds on the device.
JetPack to TensorRT: JetPack 5.1.x ships 8.5.2, 6.0 ships 8.6.2, 6.1 and 6.2 ship 10.3.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError


@dataclass(frozen=True)
class Platform:
    """One TensorRT release line a bundle may be made for."""

    name: str  # `jp6.0`, `trt10`, ...
    trt: str  # TensorRT major.minor ("10" for the desktop 10.x line: the 10.0 importer is its floor)
    jetpack: str | None  # the JetPack release that ships it, None for desktop
    opset_max: int  # newest ONNX opset its importer takes
    shape_slice_attrs: bool  # the `Shape` importer honours start/end (opset 15+); 10.0 and later
    strongly_typed: bool  # trtexec --stronglyTyped / STRONGLY_TYPED network flag exists (10.x)

    @property
    def major(self) -> int:
        return int(self.trt.split(".")[0])

    def describe(self) -> str:
        where = f"JetPack {self.jetpack}" if self.jetpack else "desktop"
        return f"{self.name} (TensorRT {self.trt}, {where})"


PLATFORMS: dict[str, Platform] = {p.name: p for p in (
    Platform("jp5.1", "8.5", "5.1", 17, False, False),
    Platform("jp6.0", "8.6", "6.0", 17, False, False),
    Platform("jp6.1", "10.3", "6.1", 20, True, True),
    Platform("jp6.2", "10.3", "6.2", 20, True, True),
    Platform("trt10", "10", None, 20, True, True),
)}
ALL = "all"  # every platform above: the default


def resolve(name: str | None) -> list[Platform]:
    """The platforms a `--platform` value names: `all`, a platform name (`jp6.0`), a JetPack release (`6.0`,
    `jetpack6.0`) or a TensorRT version (`8.6`, `8.6.2`, `10.3.0`, `10`). One line (exit 2) for anything else."""
    text = (name or ALL).strip().lower()
    if text == ALL:
        return list(PLATFORMS.values())
    if text in PLATFORMS:
        return [PLATFORMS[text]]
    for prefix in ("jetpack", "jp"):
        if text.startswith(prefix):
            jp = text[len(prefix):].lstrip("-_ ")
            hits = [p for p in PLATFORMS.values() if p.jetpack and (jp == p.jetpack or jp.startswith(p.jetpack + "."))]
            if hits:
                return hits[:1]
    trt = text.removeprefix("trt").removeprefix("tensorrt").lstrip("-_ ")
    parts = trt.split(".")
    if parts and all(p.isdigit() for p in parts):
        major_minor = ".".join(parts[:2])
        exact = [p for p in PLATFORMS.values() if p.trt == major_minor]
        if exact:
            return exact[:1]
        if parts[0] == "10":  # any other 10.x: the desktop line
            return [PLATFORMS["trt10"]]
    raise ConfigError(f"unknown platform '{name}'",
                      f"use all, {', '.join(PLATFORMS)}, a JetPack release (5.1, 6.0, 6.1, 6.2) or a TensorRT version "
                      "(8.5, 8.6, 10.3, 10.x)")


def graph_form(platforms: list[Platform]) -> dict:
    """What every platform in `platforms` imports: the newest opset all of them take, and whether `Shape` may keep
    start/end attributes (never here: edgevp rewrites them to `Shape`+`Slice` for every bundle, see
    `edgevp.conformance.graph.lower_shape_slices`)."""
    return {"opset_max": min(p.opset_max for p in platforms),
            "shape_slice_attrs": all(p.shape_slice_attrs for p in platforms),
            "trt_versions": sorted({p.trt for p in platforms}, key=lambda v: [int(x) for x in v.split(".")])}


def for_trt_version(version: str) -> Platform:
    """The platform whose rules apply to TensorRT `version` as a device reports it (`8.6.2.3`, `10.3.0`)."""
    return resolve(version)[0]
