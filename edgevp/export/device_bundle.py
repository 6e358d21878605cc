"""The one TensorRT device-bundle writer, for a single export (`trt_bundle.py`) and a pack (`multitask/bundle.py`)
alike. A caller describes its bundle as a `BundleSpec` (the ONNX, its inputs' trtexec dims, reference feeds, labels,
Triton models, what model.json adds, the README); `write_device_bundle` writes what every bundle carries:

    build_engine.sh   trtexec per TensorRT version (bundle.SCRIPT) and the caller's tail (where the engine goes)
    verify.sh         the engine against reference/ (Polygraphy, else trtexec + numpy)
    reference/        reference I/O and per-precision tolerances (bundle.write_references)
    labels            one text file per entry of `spec.labels`
    triton/<model>/   config.pbtxt, labels.txt and, for ONNX Runtime models, 1/model.onnx
    model.json        the common record (file, sha256, precision, platforms, flags, references, Triton) + `spec.record`
    README.md         the caller's text, given model.json's record

Torch-free: nothing here runs a model except ONNX Runtime on the bundle's own ONNX for the references.
"""
from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..conformance.platforms import resolve
from ..io import sha256_file, write_json, write_text
from ..runtime import formats
from .bundle import (
    SCRIPT,
    SCRIPT_EXITS,
    bundle_versions,
    flags_by_version,
    shapes_arg,
    verify_script,
    version_cases,
    write_references,
)

SCRIPTS = ("build_engine.sh", "verify.sh")


@dataclass(frozen=True)
class TritonModel:
    """One model of the bundle's Triton repository. `onnx_file(dst)` writes `1/model.onnx` for an ONNX Runtime model
    (None: a TensorRT plan, which build_engine.sh puts in place)."""

    name: str
    platform: str  # "tensorrt_plan" | "onnxruntime_onnx"
    inputs: list[tuple[str, str, list[int]]]  # (name, dtype, dims without the batch)
    outputs: list[tuple[str, list[int]]]
    max_batch_size: int
    labels: list[str]
    onnx_file: Callable[[Path], None] | None = None


@dataclass
class BundleSpec:
    """What a bundle is; `write_device_bundle` turns it into files."""

    onnx: str  # the ONNX file's name inside the bundle
    precision: str  # fp32 | fp16 | int8
    platform: str  # the --platform value the bundle was made for
    dims: dict[str, dict[str, str]]  # per engine input: trtexec dims at "min", "opt", "max" ("1x3x224x224")
    feeds: list[dict[str, np.ndarray]]  # reference feeds, shaped like the profile's opt point
    tail: str  # build_engine.sh's last lines: where the engine goes, what to run next
    readme: Callable[[dict], str]  # README.md's text from model.json's record (sha256, tolerances)
    fp32_logits: np.ndarray | None = None  # widens a reduced precision's tolerances (bundle.tolerances)
    int32_inputs: tuple[str, ...] = ()  # INT64 inputs TensorRT 8.x binds as INT32
    labels: dict[str, list[str]] = field(default_factory=dict)  # file (relative to the bundle) -> class names
    triton: list[TritonModel] = field(default_factory=list)
    record: dict = field(default_factory=dict)  # model.json's fields beyond the common ones

    @property
    def fixed(self) -> bool:
        """One shape per input (a fixed-shape engine): trtexec takes `--shapes` alone."""
        return all(d["min"] == d["max"] for d in self.dims.values())

    def build_shapes(self) -> str:
        if self.fixed:
            return f"--shapes={shapes_arg('opt', self.dims)}"
        return " ".join(f"--{which}Shapes={shapes_arg(which, self.dims)}" for which in ("min", "opt", "max"))

    def run_shapes(self) -> str:
        """What verify.sh's trtexec run needs: the opt shapes of a dynamic engine, nothing for a fixed one."""
        return "" if self.fixed else f"--shapes={shapes_arg('opt', self.dims)}"


def stage_bundle(work: Path, precision: str, files: list[str]) -> Path:
    """Create `work/trt-<precision>/` and move the target's gated files into it."""
    bundle = work / f"trt-{precision}"
    bundle.mkdir()
    for name in files:
        shutil.move(str(work / name), bundle / name)
    return bundle


def write_device_bundle(bundle: Path, spec: BundleSpec) -> dict:
    """Write every file of the bundle into `bundle` (holding the ONNX already); returns model.json's record."""
    platforms = resolve(spec.platform)
    ref = write_references(bundle, spec.onnx, spec.feeds, spec.precision, spec.fp32_logits,
                           int32_inputs=spec.int32_inputs)
    write_text(bundle / "build_engine.sh", SCRIPT.format(
        onnx=spec.onnx, shapes=spec.build_shapes(), precision=spec.precision, versions=bundle_versions(platforms),
        platform=spec.platform, cases=version_cases(platforms, spec.precision), **SCRIPT_EXITS) + spec.tail)
    write_text(bundle / "verify.sh", verify_script(f"model.trt*-{spec.precision}.engine", len(spec.feeds),
                                                   list(spec.dims), spec.run_shapes(), ref["tolerances"],
                                                   int32_inputs=spec.int32_inputs))
    for script in SCRIPTS:
        (bundle / script).chmod(0o755)
    for name, classes in spec.labels.items():
        (bundle / name).parent.mkdir(parents=True, exist_ok=True)
        write_text(bundle / name, formats.labels_txt(classes))
    for model in spec.triton:
        _write_triton_model(bundle / "triton" / model.name, model)
    record = {"onnx": spec.onnx, "onnx_sha256": sha256_file(bundle / spec.onnx), "precision": spec.precision,
              "platform": spec.platform, "platforms": [p.name for p in platforms],
              "trtexec_flags": flags_by_version(platforms, spec.precision), "reference": ref, **spec.record,
              "built_by": "build_engine.sh"}
    write_json(bundle / "model.json", record)
    write_text(bundle / "README.md", spec.readme(record))
    return record


def _write_triton_model(folder: Path, model: TritonModel) -> None:
    (folder / "1").mkdir(parents=True)
    write_text(folder / "labels.txt", formats.labels_txt(model.labels))
    write_text(folder / "config.pbtxt", formats.triton_config(
        name=model.name, platform=model.platform, inputs=model.inputs, outputs=model.outputs,
        max_batch_size=model.max_batch_size))
    if model.onnx_file is not None:
        model.onnx_file(folder / "1" / "model.onnx")
