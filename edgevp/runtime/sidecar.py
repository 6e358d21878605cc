"""What a deployed artifact is: its model file (`resolve`: the file itself, or the one in an export / bundle / pack
directory) and what it says about itself in its sidecar JSON, read in one place: its precision.

Export and pack record the precision explicitly (`"precision": "fp32" | "fp16" | "int8"`) in every sidecar they
write: an export's `model.json` / `model.fp16.json` / `model.int8.json` / `trt-<precision>.json`, a bundle's and an
engine's `model.json` / `<engine stem>.json`, a pack's `pack.json`. The device and the profiler read it back with
`precision_of`, never from the graph: edgevp's fp16 and int8 ONNX keep fp32 inputs and outputs, so the input dtype
calls them "fp32".

A model's sidecar is `<model stem>.json` beside it, else the `model.json` or `pack.json` beside it when that sidecar
names the model (its `files`, `onnx` or `engine`). Sidecars written before the precision was recorded (or none at
all, or unreadable) fall back to what was done before, here only: the file name (`.int8.` / `.fp16.`, an engine's
`-<precision>.engine`), then an fp16 input dtype, else fp32.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from ..errors import IncompatibleError
from ..optional import optional

PRECISIONS = ("fp32", "fp16", "int8")
ENGINE_SUFFIXES = (".engine", ".plan")
_ENGINE = re.compile(r"-(fp32|fp16|int8)\.(engine|plan)$")


def target_precision(target: str) -> str:
    """The precision of an export or pack target: `onnx` fp32, `ort-fp16` fp16, `trt-int8` int8, ..."""
    tail = target.rsplit("-", 1)[-1]
    return tail if tail in PRECISIONS else "fp32"


def sidecar_for(model: str | Path) -> tuple[Path, dict] | None:
    """(path, contents) of the sidecar that describes `model`, None when there is none (or it is not JSON)."""
    p = Path(model)
    for side in (p.with_suffix(".json"), p.parent / "model.json", p.parent / "pack.json"):
        if side == p or not side.is_file():
            continue
        try:
            doc = json.loads(side.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(doc, dict):
            continue
        files = doc.get("files") if isinstance(doc.get("files"), list) else []
        named = [*files, doc.get("onnx"), doc.get("engine")]  # a pack's `onnx` is a record, not a name
        if side.stem == p.stem or p.name in named:
            return side, doc
    return None


def precision_of(model: str | Path, sidecar: dict | None = None, input_type: str | None = None) -> str:
    """The precision `model` was exported at: its sidecar's `precision` (`sidecar` when the caller already read
    it, else `sidecar_for(model)`); for sidecars without one, the file name, then `input_type` (an ONNX input's
    type string such as 'tensor(float16)'), else fp32. A recorded value that is no precision is refused (exit 6)."""
    where = "its sidecar"
    if sidecar is None:
        found = sidecar_for(model)
        if found is not None:
            where, sidecar = f"'{found[0]}'", found[1]
    recorded = (sidecar or {}).get("precision")
    if recorded is not None:
        if recorded not in PRECISIONS:
            raise IncompatibleError(f"{where} records precision {recorded!r} for '{Path(model).name}'; "
                                    f"expected one of {', '.join(PRECISIONS)}")
        return recorded
    name = Path(model).name
    m = _ENGINE.search(name)
    if m:
        return m.group(1)
    if ".int8." in name:
        return "int8"
    if ".fp16." in name or (input_type and "float16" in input_type):
        return "fp16"
    return "fp32"


def resolve(path: str | Path, suffixes: tuple[str, ...] = (".onnx", *ENGINE_SUFFIXES)) -> Path:
    """The model file of ARTIFACT: the file itself (one of `suffixes`: the device runtimes' files), or inside a
    directory an engine (when TensorRT is here) or the ONNX. Raises IncompatibleError (exit 6) when there is none."""
    p = Path(path)
    if not p.exists():
        raise IncompatibleError(f"artifact '{p}' does not exist",
                                "give an .onnx file, an .engine, or an export / bundle / pack directory")
    if p.is_file():
        if p.suffix not in suffixes:
            raise IncompatibleError(f"'{p}' is no model a device runtime here opens ({', '.join(suffixes)})",
                                    "give an .onnx file, an .engine, or an export / bundle / pack directory")
        return p
    engines = sorted(q for q in p.iterdir() if q.suffix in ENGINE_SUFFIXES and q.is_file())
    if engines and optional("tensorrt") is not None:
        return engines[-1]
    names = [*_sidecar_onnx(p / "model.json"), "model.onnx", "model.fp16.onnx", "model.int8.onnx"]
    for n in names:
        if (p / n).is_file():
            return p / n
    raise IncompatibleError(f"no artifact in '{p}' (no .onnx or .engine)", "give the model file itself")


def _sidecar_onnx(side: Path) -> list[str]:
    """The ONNX files a directory's model.json names: a bundle's `onnx` (a file name), an export's `files`."""
    try:
        doc = json.loads(side.read_text()) if side.is_file() else {}
    except (OSError, ValueError):
        return []
    if not isinstance(doc, dict):
        return []
    names = [doc.get("onnx"), *(doc.get("files") if isinstance(doc.get("files"), list) else [])]
    return [n for n in names if isinstance(n, str) and n.endswith(".onnx") and "/" not in n]
