"""Writing the multi-task graph: ONNX export with the `images` and `task` inputs (and the tables as inputs when asked),
metadata, and the TensorRT device bundle."""
from __future__ import annotations

import contextlib
import io
import json
import shutil
import warnings
from pathlib import Path

import numpy as np

from ..io import sha256_file, write_json

IMAGES, TASK, LOGITS = "images", "task", "logits"


def export_pack(model, tables, tasks, opts, fold: dict, path: Path) -> dict:
    """Export `model` (a PackedModel) to one ONNX file at `path`, checked, simplified and stamped."""
    import onnx
    import torch

    from ..export.onnx import check, set_metadata, simplify

    size = tuple(tasks[0].model.info.input_size)
    names = list(tables.flat())
    flat = tables.flat()
    example_tables = ()
    if opts.tables_as_inputs:  # at least 2 tasks in the example so the exporter keeps the task axis free
        reps = 2 if tables.num_tasks == 1 else 1
        example_tables = tuple(torch.cat([t] * reps) for t in flat.values())
    images = torch.rand(2, *size)
    task = torch.tensor([0, min(1, tables.num_tasks - 1)], dtype=torch.int64)
    batch = torch.export.Dim("batch", min=1, max=4096)
    ntask = torch.export.Dim("tasks", min=1, max=65536)
    dyn = ({0: batch}, {0: batch})
    if example_tables:  # task-axis tables share one free dim; each block's key/value rows have their own
        dyn += (tuple({0: torch.export.Dim(f"rows_{n.rsplit('_', 1)[1]}", min=1, max=65536)} if is_row_table(n)
                      else {0: ntask} for n in names),)  # *tables is one argument of the signature
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (images, task, *example_tables), str(path), dynamo=True, opset_version=opts.opset,
                          input_names=[IMAGES, TASK, *(names if opts.tables_as_inputs else [])],
                          output_names=[LOGITS], dynamic_shapes=dyn, external_data=False, verbose=False)
    check(path)
    simp = simplify(path, "auto")
    meta = {"edgevp_kind": "pack", "tasks": json.dumps([{"id": i, "run": t.run.name, "method": t.cfg.method,
                                                           "classes": t.classes} for i, t in enumerate(tasks)]),
            "backbone": tasks[0].cfg.backbone.name, "pad_logit": str(float(tables.head_bias.min())),
            "tables_as_inputs": json.dumps(opts.tables_as_inputs), "table_names": json.dumps(names),
            "data_config": json.dumps({"input_size": list(size), "mean": list(tasks[0].model.info.mean),
                                       "std": list(tasks[0].model.info.std),
                                       "include_preprocess": opts.include_preprocess}),
            "fold": json.dumps(fold, default=str)}
    set_metadata(path, meta)
    check(path)
    graph = onnx.load(str(path), load_external_data=False).graph
    return {"opset": opts.opset, "nodes": len(graph.node), "simplify": simp, "bytes": path.stat().st_size,
            "inputs": [i.name for i in graph.input], "output": LOGITS}


def is_row_table(name: str) -> bool:
    """Key/value tables are indexed by row (`kv_row_<block>`), not by task: their first axis is free on its own."""
    return name.startswith(("kv_key_", "kv_value_", "kv_mask_"))


def session(path: Path):
    from ..export.onnx import session as ort_session

    return ort_session(path)


def run_pack(sess, x: np.ndarray, task: np.ndarray, tables: dict[str, np.ndarray] | None = None,
             batch: int = 8) -> np.ndarray:
    """Logits of the pack session on images `x` with per-sample task ids, in batches (tables fed when inputs)."""
    feeds_tables = {k: v for k, v in (tables or {}).items() if k in {i.name for i in sess.get_inputs()}}
    out = []
    for i in range(0, len(x), batch):
        feed = {IMAGES: x[i:i + batch], TASK: task[i:i + batch].astype(np.int64), **feeds_tables}
        out.append(sess.run([LOGITS], feed)[0])
    return np.concatenate(out)


BUNDLE_README = """# TensorRT device bundle of a {n}-task pack ({precision})

Built by edgevp {version}. Tasks: {tasks}.

- `{onnx}`: inputs `images` (batch, 3, {h}, {w}) float32 in [0, 1] RGB{norm}, `task` (batch,) int64; output `logits`
  (batch, {c_max}). A task with fewer classes has {pad} in its unused columns; a task id out of range gives NaN
  logits for that sample. `tasks.json` maps task ids to runs and class names.
{tables}- `build_engine.sh`: runs trtexec with a dynamic batch profile 1..{max_batch} (set `TRT_MAJOR`, `TRTEXEC`).
"""


def write_trt_bundle(work: Path, files: list[str], tasks, opts, gate: dict) -> str:
    """Move the pack's files into `trt-<precision>/` with `build_engine.sh` and a README; returns the folder name."""
    from .. import __version__
    from ..export.trt import SCRIPT
    from .tables import PAD_LOGIT

    precision = opts.target.split("-", 1)[1]
    bundle = work / f"trt-{precision}"
    bundle.mkdir()
    for name in files:
        shutil.move(str(work / name), bundle / name)
    onnx_name = next(f for f in files if f.endswith(".onnx"))
    c, h, w = tasks[0].model.info.input_size
    tables = np.load(bundle / "tables.npz") if opts.tables_as_inputs else {}

    def dims(batch: int, which: str) -> str:
        """trtexec shapes of every input; with tables as inputs the task and row axes are free, so tasks can be
        added: from 1 (min) over today's count (opt) to `max_tasks` (max)."""
        out = [f"{IMAGES}:{batch}x{c}x{h}x{w}", f"{TASK}:{batch}"]
        for k, v in tables.items():
            most = opts.max_tasks + (1 if is_row_table(k) else 0)  # key/value rows: one per task + the empty one
            first = {"min": 1, "opt": len(v), "max": max(len(v), most)}[which]
            out.append(f"{k}:{first}" + "".join(f"x{d}" for d in v.shape[1:]))
        return ",".join(out)

    spec = (f"--minShapes={dims(1, 'min')} --optShapes={dims(1, 'opt')} "
            f"--maxShapes={dims(opts.trt_max_batch, 'max')}")
    script = bundle / "build_engine.sh"
    script.write_text(SCRIPT.format(onnx=onnx_name, shapes=spec, precision=precision, model="pack")
                      + 'echo "engine: $(pwd)/$ENGINE (edgevp profile $ENGINE --backend trt --task mixed)"\n')
    script.chmod(0o755)
    write_json(bundle / "model.json", {"onnx": onnx_name, "onnx_sha256": sha256_file(bundle / onnx_name),
                                       "precision": precision, "inputs": [IMAGES, TASK], "kind": "pack",
                                       "built_by": "build_engine.sh"})
    (bundle / "README.md").write_text(BUNDLE_README.format(
        n=len(tasks), precision=precision, version=__version__, onnx=onnx_name, h=h, w=w, pad=PAD_LOGIT,
        norm="" if opts.include_preprocess else ", normalised", max_batch=opts.trt_max_batch,
        c_max=max(len(t.classes) for t in tasks), tasks=", ".join(f"{i}: {t.run.name}" for i, t in enumerate(tasks)),
        tables=f"- `tables.npz`: the task tables, engine inputs (task axis 1..{max(opts.max_tasks, len(tasks))}); "
               "`edgevp pack RUN... -o DIR --update-tables` writes a new one to add or update a task, no rebuild.\n"
               if opts.tables_as_inputs else ""))
    gate["trt"] = {"bundle": bundle.name, "engine": None,
                   "note": "build the engine on the device with build_engine.sh (no TensorRT here)"}
    return bundle.name
