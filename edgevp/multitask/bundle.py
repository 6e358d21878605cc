"""The TensorRT device bundle of a pack, as complete as a single export's: `trt-<precision>/` with the pack's ONNX
(inputs `images`, `task` and, with tables as inputs, the tables), `tasks.json`, labels per task, `build_engine.sh`
with a dynamic batch (and task-axis) profile and trtexec flags per TensorRT version, reference I/O with `verify.sh`,
and a Triton model repository whose `task` input rides with each request so that Triton's dynamic batcher mixes
tasks in one batch. No DeepStream config: nvinfer feeds a network its image tensor only and has no way to give each
frame a `task` id (a per-stream task would need a custom nvdspreprocess library), so a pack is served by Triton or
edgevp's own runtime; use a single export's bundle for DeepStream."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from .. import __version__
from ..conformance.platforms import resolve
from ..export.bundle import bundle_versions
from ..export.device_bundle import BundleSpec, TritonModel, stage_bundle, write_device_bundle
from ..runtime.sidecar import target_precision
from .graph import IMAGES, LOGITS, TASK, is_row_table
from .tables import PAD_LOGIT

REFERENCE_FEEDS = 8
# build_engine.sh's tail: the plan where Triton looks for it; TensorRT 8.x binds the INT64 `task` input as INT32
TRITON_TAIL = """mkdir -p triton/pack/1
cp -f "$ENGINE" triton/pack/1/model.plan
case "$TRT_VERSION" in 8.*) sed -i 's/TYPE_INT64/TYPE_INT32/' triton/pack/config.pbtxt ;; esac
"""
DEEPSTREAM_REASON = ("nvinfer feeds the network only its image tensor and cannot give each frame a `task` id; serve a "
                     "pack with Triton (triton/) or edgevp's runtime, or use a single export's bundle for DeepStream")

README = """# TensorRT device bundle of a {n}-task pack ({precision})

Built by edgevp {version} for TensorRT {versions} (`--platform {platform}`). Tasks: {tasks}.
On the device: `./build_engine.sh && ./verify.sh` (`edgevp check .` first, where edgevp is installed).

- `{onnx}`: inputs `images` (batch, 3, {h}, {w}) float32 in [0, 1] RGB{norm}, `task` (batch,) int64; output `logits`
  (batch, {c_max}). A task with fewer classes has {pad} in its unused columns; a task id out of range gives NaN
  logits for that sample. `tasks.json` maps task ids to runs and class names; `labels/<id>.txt` are each task's
  labels.
{tables}- `build_engine.sh`: trtexec with a dynamic batch profile 1..{max_batch}, flags per TensorRT version; refuses a
  version this bundle was not made for.
- `reference/` + `verify.sh`: {feeds} reference feeds (mixed task ids) and the ONNX Runtime outputs, as Polygraphy
  JSON and trtexec raw inputs (the `task` ids also as int32 for TensorRT 8.x); `./verify.sh [ENGINE]`.
- `triton/`: a Triton model repository (`tritonserver --model-repository=$PWD/triton`) with `images` and `task` per
  request and dynamic batching, so requests for different tasks share a batch: `pack` (the engine) and `pack_onnx`
  (ONNX Runtime); with tables as inputs only `pack_onnx`, the graph with these tables as constants.
- No DeepStream config: {deepstream}.
"""


def _dims(tables, c: int, h: int, w: int, opts):
    """Per input, its trtexec dims at min/opt/max; with tables as inputs the task and row axes are free, so tasks can
    be added: from 1 (min) over today's count (opt) to `max_tasks` (max)."""
    out = {IMAGES: {"min": f"1x{c}x{h}x{w}", "opt": f"1x{c}x{h}x{w}", "max": f"{opts.trt_max_batch}x{c}x{h}x{w}"},
           TASK: {"min": "1", "opt": "1", "max": str(opts.trt_max_batch)}}
    for k, v in tables.items():
        most = opts.max_tasks + (1 if is_row_table(k) else 0)  # key/value rows: one per task + the empty one
        rest = "".join(f"x{d}" for d in v.shape[1:])
        out[k] = {"min": f"1{rest}", "opt": f"{len(v)}{rest}", "max": f"{max(len(v), most)}{rest}"}
    return out


def _reference_feeds(tasks, tables: dict, opts) -> list[dict[str, np.ndarray]]:
    """Batch-1 feeds of validation images, cycling over the tasks (what the engine's opt profile takes)."""
    from .gate import _normalised, task_images

    per_task = [_normalised(t, task_images(t, REFERENCE_FEEDS)[0], opts.include_preprocess) for t in tasks]
    feeds = []
    for k in range(REFERENCE_FEEDS):
        t = k % len(tasks)
        x = per_task[t][(k // len(tasks)) % len(per_task[t])]
        feeds.append({IMAGES: x[None].astype(np.float32), TASK: np.asarray([t], np.int64), **tables})
    return feeds


def write_trt_bundle(work: Path, files: list[str], tasks, opts, gate: dict) -> str:
    """Move the pack's files into `trt-<precision>/` and complete the bundle; returns the folder name."""
    precision = target_precision(opts.target)
    bundle = stage_bundle(work, precision, files)
    onnx_name = next(f for f in files if f.endswith(".onnx"))
    c, h, w = tasks[0].model.info.input_size
    tables = dict(np.load(bundle / "tables.npz")) if opts.tables_as_inputs else {}
    dims = _dims(tables, c, h, w, opts)
    c_max = max(len(t.classes) for t in tasks)
    feeds = _reference_feeds(tasks, tables, opts)
    spec = BundleSpec(
        onnx=onnx_name, precision=precision, platform=opts.platform, dims=dims,
        feeds=feeds, int32_inputs=(TASK,),
        tail=(TRITON_TAIL if not tables else "") + 'echo "engine: $(pwd)/$ENGINE; check it: ./verify.sh $ENGINE '
                                                   '(edgevp profile $ENGINE --task mixed)"\n',
        labels={f"labels/{i}.txt": t.classes for i, t in enumerate(tasks)},
        triton=_triton_models(bundle / onnx_name, [c, h, w], tables, c_max, opts),
        record={"kind": "pack", "inputs": list(dims), "input": IMAGES, "output": LOGITS, "outputs": [LOGITS],
                "num_tasks": len(tasks), "tasks": "tasks.json",
                "labels": {str(i): f"labels/{i}.txt" for i in range(len(tasks))}, "shapes": dims,
                "triton": _triton_record(tables), "deepstream": {"config": None, "reason": DEEPSTREAM_REASON}},
        readme=lambda record: README.format(
            n=len(tasks), precision=precision, version=__version__, onnx=onnx_name, h=h, w=w, pad=PAD_LOGIT,
            norm="" if opts.include_preprocess else ", normalised", max_batch=opts.trt_max_batch, c_max=c_max,
            tasks=", ".join(f"{i}: {t.run.name}" for i, t in enumerate(tasks)),
            versions=bundle_versions(resolve(opts.platform)), platform=opts.platform,
            feeds=len(feeds),
            deepstream=DEEPSTREAM_REASON,
            tables=f"- `tables.npz`: the task tables, engine inputs (task axis 1..{max(opts.max_tasks, len(tasks))}); "
                   "`edgevp pack RUN... -o DIR --update-tables` writes a new one to add or update a task, no "
                   "rebuild.\n" if opts.tables_as_inputs else ""))
    write_device_bundle(bundle, spec)
    gate["trt"] = {"bundle": bundle.name, "engine": None,
                   "note": "build the engine on the device with build_engine.sh (no TensorRT here)"}
    return bundle.name


def _triton_models(onnx: Path, chw: list[int], tables: dict, classes: int, opts) -> list[TritonModel]:
    """triton/pack (TensorRT plan, placed by build_engine.sh) and triton/pack_onnx (ONNX Runtime): `images` and
    `task` per request, batched by Triton's dynamic batcher, so requests for different tasks share a batch. Triton
    gives every input of a batching model a batch axis, which tables do not have: with tables as inputs the
    repository serves a copy of the graph with the bundle's tables frozen in as constants (`freeze_tables`), through
    ONNX Runtime only (the engine build_engine.sh makes takes the tables as inputs, for edgevp's runtime)."""
    inputs, outputs = [(IMAGES, "float32", chw), (TASK, "int64", [])], [(LOGITS, [classes])]
    labels = [str(i) for i in range(classes)]
    onnx_file = (lambda dst: freeze_tables(onnx, tables, dst)) if tables else (lambda dst: shutil.copyfile(onnx, dst))
    onnx_model = TritonModel("pack_onnx", "onnxruntime_onnx", inputs, outputs, opts.trt_max_batch, labels, onnx_file)
    if tables:
        return [onnx_model]
    return [TritonModel("pack", "tensorrt_plan", inputs, outputs, opts.trt_max_batch, labels), onnx_model]


def _triton_record(tables: dict) -> dict:
    if tables:
        return {"repository": "triton", "tensorrt": None, "onnxruntime": "pack_onnx", "tables": "frozen",
                "reason": "Triton batches every input and the tables have no batch axis: triton/pack_onnx serves the "
                          "graph with these tables as constants; the engine takes them as inputs (edgevp's runtime)"}
    return {"repository": "triton", "tensorrt": "pack", "onnxruntime": "pack_onnx"}


def freeze_tables(src: Path, tables: dict[str, np.ndarray], dst: Path) -> None:
    """A copy of the pack graph `src` whose table inputs are constants (initializers) holding `tables`, each in its
    input's element type: what is left to feed is `images` and `task`, both per sample."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    types = {i.name: helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type) for i in model.graph.input}
    keep = [i for i in model.graph.input if i.name not in tables]
    del model.graph.input[:]
    model.graph.input.extend(keep)
    model.graph.initializer.extend(numpy_helper.from_array(np.ascontiguousarray(v.astype(types[k])), name=k)
                                   for k, v in tables.items() if k in types)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
