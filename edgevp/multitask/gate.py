"""The pack's exactness gate: each task through the pack equals the run's own folded export on the task's gate
images, and a shuffled mixed-task batch equals the per-sample results. fp16 packs also go through the precision gate
against the fp32 pack, task by task (`export/precision.py`: agreement and val top-1 drop with exact bounds).

With tables stored in fp16 (`table_dtype: float16`) a task's prompts and head are rounded, so the pack cannot equal
its fp32 export to `atol`: each task then passes the precision gate against its own export instead (the mixed batch
must still equal the per-sample results exactly: the same tables serve both)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..export.onnx import compare, run_ort
from ..export.precision import precision_gate
from .graph import run_pack, session


def task_images(task, n: int) -> tuple[np.ndarray, np.ndarray]:
    """A task's `n` gate images (float32 in [0, 1]): its run's first validation images, topped up with training
    images when validation has fewer, and the labels of the validation ones (the first len(labels))."""
    from ..data import load_data
    from ..export.precision import images_of, top_up

    splits = load_data(task.cfg.data, task.model.info)
    x, y = images_of(splits.val, 0, n)
    extra = top_up(splits.train, len(x), n, 0)
    return (np.concatenate([x, extra]) if len(extra) else x), y


def _normalised(task, x: np.ndarray, include_preprocess: bool) -> np.ndarray:
    if include_preprocess:
        return x
    mean, std = task.model.mean.numpy(), task.model.std.numpy()
    return ((x - mean) / std).astype(np.float32)


def gate_pack(work: Path, tasks, references: list[Path], tables, opts) -> dict:
    """Run the gate on `work/model.onnx` (and convert to fp16 when the target asks); returns status and reports."""
    from ..export.onnx import session as ort_session

    flat = {k: v.numpy() for k, v in tables.flat().items()}
    sess = session(work / "model.onnx")
    per_task, batches, worst, pack_logits = [], [], 0.0, []
    for i, (task, ref_path) in enumerate(zip(tasks, references)):
        x, y = task_images(task, opts.gate_images)
        x = _normalised(task, x, opts.include_preprocess)
        ref = run_ort(ort_session(ref_path), x, 8)
        got = run_pack(sess, x, np.full(len(x), i), flat)
        rep = compare(ref, got[:, :ref.shape[1]])
        if _fp16_tables(opts):
            rep["fp16_tables"] = precision_gate(ref, got[:, :ref.shape[1]], y, opts.max_drop, opts.min_agreement,
                                                opts.gate_confidence)
        m = len(y)  # the labelled (validation) ones
        rep.update(task=i, run=task.run.name, labelled_images=m,
                   top1_pack=float((got[:m].argmax(1) == y).mean() * 100),
                   top1_own_export=float((ref[:m].argmax(1) == y).mean() * 100))
        per_task.append(rep)
        batches.append((x, np.full(len(x), i), y))
        pack_logits.append(got)
        worst = max(worst, rep["max_abs"])
    x_all = np.concatenate([b[0] for b in batches])
    t_all = np.concatenate([b[1] for b in batches])
    order = np.random.default_rng(0).permutation(len(x_all))
    mixed = run_pack(sess, x_all[order], t_all[order], flat, batch=8)
    single = np.concatenate(pack_logits)[order]
    mixed_rep = compare(single, mixed)
    mixed_ok = mixed_rep["max_abs"] <= opts.atol and mixed_rep["top1_agreement"] == 1.0
    failed = [f"task {r['task']} with fp16 tables vs its own export: {r['fp16_tables']['failed']}"
              for r in per_task if r.get("fp16_tables", {}).get("failed")]
    tasks_ok = not failed if _fp16_tables(opts) else (worst <= opts.atol and
                                                       all(r["top1_agreement"] == 1.0 for r in per_task))
    result = {"status": "ok" if tasks_ok and mixed_ok else "failed",
              "parity": {"per_task": per_task, "mixed_batch": mixed_rep, "atol": opts.atol}}
    if result["status"] == "failed":
        result["error"] = failed[0] if failed and mixed_ok else (
            f"pack vs own exports max abs {worst:.3g}, mixed batch vs per-sample max abs "
            f"{mixed_rep['max_abs']:.3g} (tolerance {opts.atol:g})")
        return result
    if opts.target in ("ort-fp16", "trt-fp16"):
        _fp16_gate(work, batches, pack_logits, flat, opts, result)
    return result


def _fp16_tables(opts) -> bool:
    return getattr(opts, "table_dtype", "float32") == "float16"


def _fp16_gate(work: Path, batches, fp32_logits, flat, opts, result: dict) -> None:
    """Convert to fp16 (LayerNorm/Softmax kept fp32) and gate every task against the fp32 pack."""
    from ..export.ort import to_fp16

    to_fp16(work / "model.onnx", work / "model.fp16.onnx")
    sess = session(work / "model.fp16.onnx")
    reports = []
    for i, ((x, t, y), ref) in enumerate(zip(batches, fp32_logits)):
        got = run_pack(sess, x, t, flat)
        reports.append({"task": i, **compare(ref, got), **precision_gate(ref, got, y, opts.max_drop,
                                                                          opts.min_agreement, opts.gate_confidence)})
    failed = [f"fp16 pack, task {r['task']}: {r['failed']}" for r in reports if r["failed"]]
    result["accuracy_vs_fp32"] = [{k: v for k, v in r.items() if k != "failed"} for r in reports]
    if failed:
        result.update(status="failed", error=failed[0])
    (work / "model.onnx").unlink()  # the fp16 target's artifact is model.fp16.onnx
