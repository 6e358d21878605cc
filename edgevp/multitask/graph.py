"""Writing the multi-task graph: ONNX export with the `images` and `task` inputs (and the tables as inputs when asked),
metadata, and the TensorRT device bundle."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np


IMAGES, TASK, LOGITS = "images", "task", "logits"


def export_pack(model, tables, tasks, opts, fold: dict, path: Path) -> dict:
    """Export `model` (a PackedModel) to one ONNX file at `path`, checked, simplified and stamped."""
    import onnx
    import torch

    from ..conformance.graph import for_tensorrt
    from ..export.onnx import check, quiet_exporter, set_metadata, settle_opset, simplify

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
    with quiet_exporter(), torch.no_grad():
        torch.onnx.export(model, (images, task, *example_tables), str(path), dynamo=True, opset_version=opts.opset,
                          input_names=[IMAGES, TASK, *(names if opts.tables_as_inputs else [])],
                          output_names=[LOGITS], dynamic_shapes=dyn, external_data=False, verbose=False)
    settle_opset(path, opts.opset)
    check(path)
    simp = simplify(path, "auto")
    rewrites = for_tensorrt(path, platform=opts.platform)
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
    return {"opset": opts.opset, "platform": opts.platform, "tensorrt_rewrites": rewrites, "nodes": len(graph.node),
            "simplify": simp, "bytes": path.stat().st_size,
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
