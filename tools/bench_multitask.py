"""Many tasks, one graph (issues 10 and 21's evidence): T-task `edgevp pack`s (T up to 64) vs the widest task's own
folded export and vs the bare backbone, on ONNX Runtime CPU — latency on a mixed-task batch, artifact size, per-task
bytes, peak memory, time to add and to remove a task, parity — as ratios measured in one run (no thresholds: the
targets are printed next to the numbers, never asserted).

Per backbone (the DINOv2 ViT-S/14 @ 112 demo backbone and a random-init ViT-B/16 @ 224), up to 64 tasks on the same
frozen backbone (same `train.seed`): task i is VPT-deep 10, LoR-VP r4, E²VPT 10+5, VPT-deep-50 condensed to 30 % of
its prompts (random scores, non-uniform per layer) or a linear probe for i mod 5 = 0..4, each with its own random
prompts and head (normal, std 0.5 for prompts: a pack that dropped or mixed up a task's tables would show in the
parity columns). Every task is written as a run directory (config.yaml, manifest.json, checkpoints/*.safetensors;
untrained). The tasks share one in-memory model per method, their own trainable state loaded when the pack code reads
it (64 ViT-B models would not fit in memory). Then:

- own exports, as `edgevp export` writes them (`to_deploy` + `edgevp.export.onnx.export_onnx`: dynamo, opset 18,
  dynamic batch, onnxsim), of a sample: one task per method (dinov2) or VPT-deep 10, the widest task and the linear
  probe (vitb). The widest task (most key/value columns summed over blocks) is the latency/size/memory reference; the
  linear probe's export is the bare backbone (no prompts, a 10-class head);
- the T-task packs (the first T tasks; T = 1, 8, 16, 32, 64 for dinov2, 1, 16, 64 for vitb) go through what
  `edgevp pack` runs between loading the runs and its gate: the compatibility check (`_check_compatible`, frozen
  tensors' sha256 included), `build_packed` and `export_pack` (tables as constants, default `PackOptions`); the
  benchmark's parity check stands in for the gate: on a mixed batch, every task vs its PyTorch model and the sampled
  tasks vs their own exports (max abs logit, top-1);
- add/remove: the largest pack again with tables as inputs (`pipeline._pack_into`, its gate replaced by a stand-in:
  it would export all 64 tasks), then `edgevp.pack([run], PACK, PackOptions(add=True))` of a new VPT-deep-10 run
  (its gate on 8 of its images, `gate_images`) and `PackOptions(remove=True)` of it — wall time, the gate's seconds
  (stated, excluded from the target), tables and commit seconds, and the time `load_tasks` takes to load the run.

Measurements (ONNX Runtime CPU, fixed intra-op threads, inter-op 1, spinning off, graph optimisation all — the
options of `edgevp.profile.backends.prepare_ort`), every variant in its own process (numpy + onnxruntime only),
interleaved over rounds with the order flipped each round, median of round medians (`edgevp.profile.latency`):

1. latency on a mixed batch (batch 8: task ids cycle over the T tasks within the batch; batch 1: the task id cycles
   from call to call) vs the widest task's export (target at T = 64, batch 8: <= 1.03x) and vs the bare backbone
   (<= 1.06x). Next to it the process CPU time per call and its ratios: on a shared machine wall time also measures
   waiting for the cores, CPU time mostly the work;
2. artifact size vs the widest task's export (target at T = 64: <= 1.20x), per-task table bytes, marginal bytes;
3. peak RSS (VmHWM, `edgevp.profile.worker.peak_rss_mib`) of a process that creates its session and serves two
   mixed batches of 8: one pack session vs one session of the widest export (target <= 1.20x), the bare backbone's,
   and the sampled tasks' exports as separate sessions;
4. where the time goes: kernel time per op type from ORT's profiler, the largest pack vs the widest export, batch 8.

The attention of a pack pays, in every block, for the widest task's key/value columns (padded and masked for the
others): the "KV prefix columns" column shows that sum.

    python tools/bench_multitask.py --out runs/bench_multitask    # both backbones: about 21 min on 2 shared cores
    python tools/bench_multitask.py --quick                       # smoke run (~3 min): dinov2, one 5-task pack
    python tools/bench_multitask.py --backbones dinov2 --tasks 1,8,64 --rounds 3 --no-edit
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BACKBONES = {"dinov2": {"name": "vit_small_patch14_dinov2", "weights": "offline", "img_size": 112},
             "vitb": {"name": "vit_base_patch16_224", "weights": "none", "img_size": 224}}
# (label, method, prompt config); task i is PLAN[i % len(PLAN)] with its own random prompts and head
PLAN = [("VPT-deep 10", "vpt", {"num_tokens": 10, "deep": True}),
        ("LoR-VP r4", "lorvp", {"rank": 4}),
        ("E2VPT 10+5", "e2vpt", {"num_tokens": 10, "num_kv": 5}),
        ("VPT-deep 50 PC 30 %", "pc", {"num_tokens": 50, "deep": True}),
        ("linear probe", "linear", {})]
DATA = {"name": "digits", "limit_train": 16, "limit_val": 16, "limit_test": 16}  # the gates read val images
NUM_CLASSES = 10  # digits
SEED = 0  # train.seed of every task: the random-init backbone is the same tensors in every run
TARGETS = {"latency": 1.03, "latency_bare": 1.06, "size": 1.20, "rss": 1.20, "edit_s": 2.0}  # at T = 64, batch 8
# calls per backbone (a ViT-B/16 call at batch 8 takes seconds on 2 cores): rounds, timed calls at batch 1 and 8,
# warm-up calls, memory rounds, profiled calls; --quick and the command line override them
SETTINGS = {"dinov2": {"rounds": 5, "iters": 30, "iters8": 8, "warmup": 3, "mem_rounds": 2, "profile_iters": 5},
            "vitb": {"rounds": 3, "iters": 8, "iters8": 3, "warmup": 1, "mem_rounds": 1, "profile_iters": 2}}
TASKS = {"dinov2": [1, 8, 16, 32, 64], "vitb": [1, 16, 64]}  # pack sizes per backbone
MEM_BATCHES = 2  # mixed batches of 8 the memory processes serve after creating their sessions
GATE_IMAGES = 8  # the add's gate: images of the new task vs its own export (the default 32 costs minutes on ViT-B)
QUICK = {"rounds": 2, "iters": 10, "iters8": 2, "warmup": 2, "mem_rounds": 1, "profile_iters": 2}


# ---------------------------------------------------------------------------------------------------------------
# setup: run directories, single exports and packs through the shipped code paths (needs torch)
# ---------------------------------------------------------------------------------------------------------------

def _randomise(model, seed: int) -> None:
    """Prompts N(0, 0.5²) (LoR-VP's factors too: B·A is then a pixel prompt of ~0.5), head N(0, 0.05²) + N(0, 0.1²)
    bias; masks and label maps are left alone."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.method.named_parameters():
            if p.is_floating_point() and p.numel() and "mask" not in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
        for name, p in (model.head.named_parameters() if model.method.new_head else ()):
            p.copy_(torch.randn(p.shape, generator=gen) * (0.05 if name == "weight" else 0.1))


def _task_model(backbone: dict, method: str, prompt: dict, seed: int):
    """(RunConfig, PromptedModel) of one task with random prompts; `pc` is VPT-deep-50 condensed to 30 %."""
    import torch

    from edgevp.condense.pc import condensed_state, finetune_config
    from edgevp.condense.select import keep_masks
    from edgevp.model import build_model
    from edgevp.recipe import build_run_config

    base = {"method": "vpt" if method == "pc" else method, "prompt": prompt, "backbone": backbone, "data": DATA,
            "train": {"seed": SEED, "epochs": 0}}
    cfg = build_run_config(base)
    model = build_model(cfg, NUM_CLASSES).eval()
    _randomise(model, seed)
    if method != "pc":
        return cfg, model
    units = model.method.prompt_units()
    scores = [torch.rand(n, generator=torch.Generator().manual_seed(seed * 100 + i)) for i, n in enumerate(units)]
    masks = keep_masks(scores, round(0.3 * sum(units)))  # global top-k of random scores: non-uniform per layer
    prompt_cfg, method_state = model.method.keep_units(masks)
    new_cfg = finetune_config(cfg, prompt_cfg, 0, None, 0.0)
    pc = build_model(new_cfg, NUM_CLASSES).eval()
    pc.load_trainable_state(condensed_state(model, method_state))
    return new_cfg, pc


def _write_run(path: Path, cfg, model, label: str):
    """A run directory as `edgevp train` writes one (config.yaml, manifest.json, checkpoints/best.safetensors)."""
    from edgevp.checkpoints import save_checkpoint
    from edgevp.runs import RunDir

    run = RunDir.create(path, cfg, ["tools/bench_multitask.py"],
                        {"backbone": cfg.backbone.name, "weights": cfg.backbone.weights,
                         "weights_sha256": model.info.weights_sha256, "note": f"{label}: random prompts, untrained"})
    for which in ("best", "last"):
        save_checkpoint(run.checkpoint(which), model.trainable_state(), cfg, num_classes=NUM_CLASSES, epoch=-1)
    return run


def _ort_logits(path: Path, x: np.ndarray, task: np.ndarray | None = None, batch: int = 8) -> np.ndarray:
    from edgevp.export.onnx import run_ort, session
    from edgevp.multitask.graph import run_pack

    sess = session(path)
    return run_ort(sess, x, batch) if task is None else run_pack(sess, x, task, batch=batch)


def _single_export(model, path: Path) -> dict:
    """The run's folded single-task export, as `edgevp export` writes it (dynamo, opset 18, dynamic batch, onnxsim)."""
    import torch

    from edgevp.export.fold import to_deploy
    from edgevp.export.onnx import check, export_onnx, simplify

    deploy = to_deploy(model)
    export_onnx(deploy, path, tuple(model.info.input_size))
    check(path)
    simp = simplify(path)
    x = torch.rand(2, *model.info.input_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(x).numpy()
    return {"fold": deploy.report.to_dict(), "nodes": simp.get("nodes"),
            "vs_torch_max_abs": float(np.abs(_ort_logits(path, x.numpy()) - ref).max()),
            "kv_columns_total": _kv_columns(model)}


def _kv_columns(model) -> int:
    """Constant key/value columns the folded export puts in front of the image tokens, summed over blocks."""
    import copy

    work = copy.deepcopy(model).eval()
    backbone = work.detach_method()
    kv = work.method.fold(backbone).kv or []
    return sum(int(e[0].shape[1]) for e in kv if e is not None)


class _Task:
    """A task for `build_packed` / `export_pack` / `_pack_into` (duck-typed `pipeline.Task`) whose model is the shared
    model of its method with this task's trainable state loaded when asked for: 64 ViT-B models would not fit in
    memory, and `build_packed` deep-copies `model` as soon as it reads it."""

    def __init__(self, run, cfg, base, state, header, classes, fingerprint):
        self.run, self.cfg, self._base, self._state = run, cfg, base, state
        self.header, self.classes, self.fingerprint = header, classes, fingerprint

    @property
    def model(self):
        self._base.load_trainable_state(self._state)
        return self._base


def _sample_ids(key: str, facts: list[dict], t_max: int) -> list[int]:
    """Tasks checked against their own export: one per method of PLAN for dinov2; for ViT-B (an export takes about
    a minute on 2 shared cores) the widest task, the linear probe (the bare backbone + a head) and VPT-deep 10."""
    first = list(range(min(len(PLAN), t_max)))
    if key != "vitb":
        return first
    widest = max(first, key=lambda i: facts[i]["kv_columns_total"])
    return sorted({0, widest, *[i for i in first if facts[i]["method"] == "linear"]})


def build_artifacts(key: str, work: Path, num_tasks: list[int], edit: bool) -> dict:
    """Write the tasks' run directories, the own exports of a sample (one task per method: the widest and the
    linear probe, i.e. the bare backbone + a head, among them), the packs (first T tasks); check parity.

    The packs go through `build_packed` + `export_pack` (what `edgevp pack` runs between loading the runs and its
    gate) on task objects of the in-memory models, after the same compatibility check `load_tasks` makes; the
    benchmark's own parity check (every task of a mixed batch vs its PyTorch model, and for the sample vs its own
    export) stands in for the gate."""
    import torch

    from edgevp.data import load_splits
    from edgevp.multitask.graph import export_pack
    from edgevp.multitask.tasks import PackOptions, _check_compatible, backbone_fingerprint, build_packed
    from edgevp.checkpoints import read_checkpoint

    backbone = BACKBONES[key]
    size = backbone["img_size"]
    t_max = max(num_tasks)
    tasks, facts, classes, bases = [], [], None, {}
    t_setup = time.time()
    for i in range(t_max):
        label, method, prompt = PLAN[i % len(PLAN)]
        if i < len(PLAN):
            cfg, model = _task_model(backbone, method, prompt, seed=1000 + i)
            bases[i] = (cfg, model, model.trainable_state())
            fingerprint = backbone_fingerprint(model)
        else:  # the same method again with its own random prompts and head (the method's masks are kept)
            cfg, model, state0 = bases[i % len(PLAN)]
            model.load_trainable_state(state0)
            _randomise(model, seed=1000 + i)
        state = model.trainable_state()
        classes = classes or list(load_splits(cfg.data).classes)
        run = _write_run(work / "runs" / f"task{i}-{method}", cfg, model, label)
        _, header = read_checkpoint(run.checkpoint("best"), cfg)
        tasks.append(_Task(run.path, cfg, model, state, header, classes, fingerprint))
        kv = getattr(cfg.prompt, "tokens_per_layer", None)
        facts.append({"id": i, "label": label, "method": method, "run": str(run.path),
                      "kv_columns_total": _kv_columns(tasks[-1].model),
                      **({"tokens_per_layer": list(kv)} if kv else {})})
    print(f"  {t_max} tasks built and written as runs in {time.time() - t_setup:.0f} s", flush=True)
    _check_compatible(tasks)  # same backbone name, input, preprocessing and frozen tensors (sha256)
    sample = _sample_ids(key, facts, t_max)
    widest = max(sample, key=lambda i: facts[i]["kv_columns_total"])
    bare = next(i for i in sample if facts[i]["method"] == "linear")
    for i in sample:
        t = time.time()
        onnx_path = work / f"single{i}.onnx"
        facts[i].update(onnx=str(onnx_path), **_single_export(tasks[i].model, onnx_path))
        facts[i].update(bytes=onnx_path.stat().st_size, export_s=round(time.time() - t, 1))
        print(f"  own export of task {i} ({facts[i]['label']}): {facts[i]['export_s']} s, "
              f"{facts[i]['bytes'] / 2**20:.1f} MiB, ORT vs PyTorch max abs {facts[i]['vs_torch_max_abs']:.1e}",
              flush=True)
    rng = np.random.default_rng(0)
    n_img = max(t_max, 8)
    x = rng.random((n_img, 3, size, size), dtype=np.float32)
    cache_torch: dict[tuple[int, int], np.ndarray] = {}
    cache_own: dict[tuple[int, int], np.ndarray] = {}

    def ref_torch(k: int, js: list[int]) -> np.ndarray:
        need = [j for j in js if (k, j) not in cache_torch]
        if need:
            with torch.no_grad():
                out = tasks[k].model(torch.from_numpy(x[need])).numpy()
            cache_torch.update({(k, j): o for j, o in zip(need, out)})
        return np.stack([cache_torch[k, j] for j in js])

    def ref_own(k: int, js: list[int]) -> np.ndarray:
        need = [j for j in js if (k, j) not in cache_own]
        if need:
            cache_own.update({(k, j): o for j, o in zip(need, _ort_logits(Path(facts[k]["onnx"]), x[need]))})
        return np.stack([cache_own[k, j] for j in js])

    opts = PackOptions()
    packs = {}
    for n in num_tasks:
        t = time.time()
        path = work / f"pack{n}.onnx"
        model, tables, fold = build_packed(tasks[:n], opts)
        meta = export_pack(model, tables, tasks[:n], opts, fold, path)
        table_bytes = sum(v.numel() * v.element_size() for v in tables.flat().values())
        del model, tables
        export_s = time.time() - t
        m = max(n, 8)
        ids = np.arange(m) % n  # a mixed batch: image j belongs to task j % n
        got = _ort_logits(path, x[:m], ids)
        vs_torch, vs_own, top1_own = [], {}, {}
        for k in range(n):
            js = [int(j) for j in np.flatnonzero(ids == k)]
            vs_torch.append(float(np.abs(got[js] - ref_torch(k, js)).max()))
            if k in sample:
                own = ref_own(k, js)
                vs_own[k] = float(np.abs(got[js] - own).max())
                top1_own[k] = bool((got[js].argmax(1) == own.argmax(1)).all())
        packs[n] = {"onnx": str(path), "bytes": path.stat().st_size, "export_s": round(export_s, 1),
                    "nodes": meta["nodes"], "simplify": meta["simplify"].get("tool"), "table_bytes": table_bytes,
                    "parity_vs_torch_per_task": vs_torch, "parity_vs_torch_max_abs": max(vs_torch),
                    "parity_vs_own_export": {str(k): v for k, v in vs_own.items()},
                    "parity_vs_own_max_abs": max(vs_own.values()), "top1_equal_own": all(top1_own.values()),
                    "top1_equal_own_tasks": sorted(top1_own),
                    # attention prefix columns every sample pays for: per block the widest task's (padded)
                    "kv_columns_total": sum(max(c) for c in fold["kv_columns"].values()), "fold": fold}
        print(f"  pack T={n}: exported in {packs[n]['export_s']} s, {packs[n]['bytes'] / 2**20:.1f} MiB, "
              f"{meta['nodes']} nodes; mixed batch vs own exports (tasks {sorted(vs_own)}) max abs "
              f"{packs[n]['parity_vs_own_max_abs']:.1e}, vs PyTorch (all {n}) "
              f"{packs[n]['parity_vs_torch_max_abs']:.1e}",
              flush=True)
    out = {"tasks": facts, "packs": packs, "sample": sample, "widest": widest, "bare": bare}
    if edit:
        out["edit"] = measure_edit(key, work, tasks, bases, classes)
    return out


def vpt_size(key: str, work: Path, t_max: int) -> dict:
    """The artifact-size target's own setting: a pack of `t_max` VPT-deep-10, 10-class tasks (random prompts and heads)
    vs one of them exported alone (`--vpt-size-only`: no latency, memory or edits)."""
    from edgevp.checkpoints import read_checkpoint
    from edgevp.data import load_splits
    from edgevp.multitask.graph import export_pack
    from edgevp.multitask.tasks import PackOptions, _check_compatible, backbone_fingerprint, build_packed

    label, method, prompt = PLAN[0]
    cfg, model = _task_model(BACKBONES[key], method, prompt, seed=1000)
    fingerprint, classes, tasks = backbone_fingerprint(model), list(load_splits(cfg.data).classes), []
    for i in range(t_max):
        if i:
            _randomise(model, seed=1000 + i * len(PLAN))
        run = _write_run(work / "runs" / f"vpt{i}", cfg, model, label)
        _, header = read_checkpoint(run.checkpoint("best"), cfg)
        tasks.append(_Task(run.path, cfg, model, model.trainable_state(), header, classes, fingerprint))
    _check_compatible(tasks)
    single = work / "vpt_single0.onnx"
    facts = _single_export(tasks[0].model, single)
    t = time.time()
    packed, tables, fold = build_packed(tasks, PackOptions())
    meta = export_pack(packed, tables, tasks, PackOptions(), fold, work / "vpt_pack.onnx")
    table_bytes = sum(v.numel() * v.element_size() for v in tables.flat().values())
    out = {"tasks": t_max, "label": label, "single_bytes": single.stat().st_size,
           "pack_bytes": (work / "vpt_pack.onnx").stat().st_size, "table_bytes": table_bytes,
           "export_s": round(time.time() - t, 1), "nodes": meta["nodes"], "single_vs_torch": facts["vs_torch_max_abs"]}
    out["ratio"] = out["pack_bytes"] / out["single_bytes"]
    print(f"{key}: {t_max} x {label}: pack {out['pack_bytes'] / 2**20:.1f} MiB vs one export "
          f"{out['single_bytes'] / 2**20:.1f} MiB = {out['ratio']:.3f}x (target <= {TARGETS['size']}x: "
          f"{'met' if out['ratio'] <= TARGETS['size'] else 'MISSED'}); tables {table_bytes / t_max / 2**10:.0f} KiB a "
          "task", flush=True)
    return out


def _edit_pack(tasks, out: Path, opts) -> None:
    """A pack with tables as inputs, written by `pipeline._pack_into` with the gate replaced by a stand-in (the gate
    exports and compares every task: 64 own exports of ViT-B do not fit this budget; the constant-table packs above
    are checked by the benchmark instead)."""
    import edgevp.multitask.gate as gate_mod
    import edgevp.multitask.pipeline as pipe

    saved = pipe.own_export, gate_mod.gate_pack
    pipe.own_export = lambda task, o: None
    gate_mod.gate_pack = lambda work, t, refs, tables, o: {
        "status": "ok", "parity": {"per_task": [], "mixed_batch": {}, "atol": o.atol,
                                   "note": "benchmark stand-in: gate not run"}}
    try:
        out.mkdir(parents=True, exist_ok=True)
        side = pipe._pack_into(tasks, out, opts)
    finally:
        pipe.own_export, gate_mod.gate_pack = saved
    if side["status"] != "ok":
        raise RuntimeError(f"edit pack: {side.get('error')}")


def measure_edit(key: str, work: Path, tasks, bases, classes) -> dict:
    """`edgevp pack --add` of one new VPT-deep-10 run and `--remove` of it on a T-task pack with tables as inputs
    (through the API, `edgevp.pack` with `PackOptions(add=True)` / `remove=True`): wall time, the gate's share and
    the rest."""
    import edgevp
    from edgevp.multitask.tasks import PackOptions

    n = len(tasks)
    t = time.time()
    pack_dir = work / f"pack{n}-tables-as-inputs"
    opts = PackOptions(tables_as_inputs=True, max_tasks=n + 8)
    _edit_pack(tasks, pack_dir, opts)
    build_s = time.time() - t
    cfg, model, state0 = bases[0]  # a new VPT-deep 10 task with its own random prompts and head
    model.load_trainable_state(state0)
    _randomise(model, seed=1000 + n)
    run = _write_run(work / "runs" / f"task{n}-added", cfg, model, "added VPT-deep 10")
    graph_sha = _sha256(pack_dir / "model.onnx")
    from edgevp.multitask.tasks import load_tasks

    t = time.perf_counter()
    load_tasks([run.path], "best")  # what an add spends loading the run (model built, checkpoint read)
    load_s = time.perf_counter() - t
    t = time.perf_counter()
    side = edgevp.pack([run.path], pack_dir, PackOptions(add=True, gate_images=GATE_IMAGES))  # `pack --add`
    add_wall = time.perf_counter() - t
    add_sec = dict(side["edits"][-1]["seconds"])
    add_parity = [p for p in side["parity"]["per_task"] if p.get("task") in side["edits"][-1]["tasks"]]
    new_id = side["edits"][-1]["tasks"][0]
    t = time.perf_counter()
    side = edgevp.pack([str(new_id)], pack_dir, PackOptions(remove=True))  # `edgevp pack --remove ID PACK`
    rm_wall = time.perf_counter() - t
    rm_sec = dict(side["edits"][-1]["seconds"])
    res = {"tasks": n, "pack_build_s": round(build_s, 1), "load_run_s": load_s,
           "graph_unchanged": _sha256(pack_dir / "model.onnx") == graph_sha,
           "tables_bytes": (pack_dir / "tables.npz").stat().st_size, "new_task_id": new_id,
           "add": {"wall_s": add_wall, **add_sec, "wall_minus_gate_s": add_wall - add_sec["gate"],
                   "max_abs_vs_own_export": max((p["max_abs"] for p in add_parity), default=None)},
           "remove": {"wall_s": rm_wall, **rm_sec, "wall_minus_gate_s": rm_wall - rm_sec["gate"]}}
    print(f"  add one task to the {n}-task pack (tables as inputs): {add_wall:.2f} s wall, "
          f"gate {add_sec['gate']:.2f} s, "
          f"tables {add_sec['tables']:.2f} s + commit {add_sec['commit']:.2f} s; remove: {rm_wall:.2f} s wall, gate "
          f"{rm_sec['gate']:.2f} s; graph unchanged: {res['graph_unchanged']}", flush=True)
    return res


def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# measurement worker: one variant in its own process (numpy + onnxruntime only; torch never imported)
# ---------------------------------------------------------------------------------------------------------------

def _session(path: str, threads: int, profile_prefix: str | None = None):
    """The session options of `edgevp.profile.backends.prepare_ort` (CPU)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    if profile_prefix:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def _feeds(sess, batch: int, num_tasks: int, shape: list[int], calls: int) -> list[dict]:
    """The inputs of successive calls: the same images; for a pack, task ids cycling within the batch (batch > 1)
    or from call to call (batch 1)."""
    x = np.random.default_rng(0).random([batch, *shape], dtype=np.float32)
    names = [i.name for i in sess.get_inputs()]
    if "task" not in names:
        return [{names[0]: x}]
    if batch > 1:
        return [{"images": x, "task": (np.arange(batch) % num_tasks).astype(np.int64)}]
    return [{"images": x, "task": np.full(1, c % num_tasks, dtype=np.int64)} for c in range(min(calls, num_tasks))]


def worker(spec: dict) -> dict:
    import onnxruntime as ort

    from edgevp.profile.latency import measure
    from edgevp.profile.worker import peak_rss_mib

    threads, shape = spec["threads"], spec["shape"]
    kind = spec["kind"]
    if kind == "latency":
        sess = _session(spec["model"], threads)
        feeds = _feeds(sess, spec["batch"], spec["tasks"], shape, spec["warmup"] + spec["iters"])
        state = {"i": 0}

        def call():
            sess.run(None, feeds[state["i"] % len(feeds)])
            state["i"] += 1

        for _ in range(spec["warmup"]):
            call()
        cpu = time.process_time()  # CPU seconds of this process (all its threads): the work, not the waiting
        stats = measure(call, spec["batch"], 0, spec["iters"])
        cpu_ms = (time.process_time() - cpu) * 1e3 / spec["iters"]
        stats.warmup = spec["warmup"]
        return {"stats": stats.to_dict(), "cpu_ms_per_call": cpu_ms, "ort_version": ort.__version__,
                "peak_rss_mib": peak_rss_mib()}
    if kind == "memory":  # create the session(s), then serve a few mixed batches of 8; peak RSS of the process
        base = _rss_now()
        sessions = [_session(m, threads) for m in spec["models"]]
        n = spec["tasks"]
        x = np.random.default_rng(0).random([8, *shape], dtype=np.float32)
        ids = np.arange(8) % n
        for _ in range(spec["batches"]):
            if len(sessions) == 1 and "task" in [i.name for i in sessions[0].get_inputs()]:
                sessions[0].run(None, {"images": x, "task": ids.astype(np.int64)})
            else:  # separate sessions: each task's samples through its own session
                for k, s in enumerate(sessions):
                    s.run(None, {s.get_inputs()[0].name: x[ids == k]}) if (ids == k).any() else None
        return {"peak_rss_mib": peak_rss_mib(), "rss_mib": _rss_now(), "rss_before_sessions_mib": base}
    if kind == "optypes":  # ORT's own profile: kernel time per op type over the timed calls
        sess = _session(spec["model"], threads, spec["prefix"])
        feeds = _feeds(sess, spec["batch"], spec["tasks"], shape, spec["iters"])
        for i in range(spec["warmup"] + spec["iters"]):
            sess.run(None, feeds[i % len(feeds)])
        trace = json.loads(Path(sess.end_profiling()).read_text())
        runs = sorted(e["ts"] for e in trace if e.get("cat") == "Session" and e.get("name") == "model_run")
        start = runs[spec["warmup"]] - 1 if len(runs) > spec["warmup"] else 0  # skip the warm-up calls' kernels
        by_op: dict[str, float] = {}
        for e in trace:
            if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time") and e["ts"] >= start:
                op = e.get("args", {}).get("op_name", "?")
                by_op[op] = by_op.get(op, 0.0) + e["dur"] / 1e3 / spec["iters"]
        wall = [e["dur"] / 1e3 for e in trace if e.get("cat") == "Session" and e.get("name") == "model_run"
                and e["ts"] >= start]
        return {"ms_per_call_by_op": by_op, "model_run_ms": wall}
    raise ValueError(kind)


def _rss_now() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024.0, 1)
    return float("nan")


def _spawn(spec: dict) -> dict:
    p = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)],
                       capture_output=True, text=True)
    lines = [line for line in p.stdout.splitlines() if line.startswith("{")]
    if p.returncode or not lines:
        raise RuntimeError(f"worker {spec['kind']} failed: {(p.stderr.strip().splitlines() or ['no output'])[-1]}")
    return json.loads(lines[-1])


# ---------------------------------------------------------------------------------------------------------------
# the measurements, interleaved
# ---------------------------------------------------------------------------------------------------------------

def _interleave(variants: list[tuple[str, dict]], rounds: int, what: str) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {name: [] for name, _ in variants}
    for r in range(rounds):
        for name, spec in (variants if r % 2 == 0 else variants[::-1]):
            out[name].append(_spawn(spec))
        print(f"    {what}: round {r + 1}/{rounds} done", flush=True)
    return out


def measure_latency(art: dict, shape: list[int], batch: int, args) -> list[dict]:
    import statistics

    from edgevp.profile.latency import LatencyStats, median_of

    base = {"kind": "latency", "threads": args.threads, "shape": shape, "batch": batch, "warmup": args.warmup,
            "iters": args.iters if batch == 1 else args.iters8}
    w, bare = art["tasks"][art["widest"]], art["tasks"][art["bare"]]
    variants = [(f"widest task's own export (task {w['id']})", {**base, "model": w["onnx"], "tasks": 1}),
                (f"bare backbone (task {bare['id']}'s export: linear probe)",
                 {**base, "model": bare["onnx"], "tasks": 1})]
    variants += [(f"pack T={n}", {**base, "model": p["onnx"], "tasks": n}) for n, p in art["packs"].items()]
    samples = _interleave(variants, args.rounds, f"latency batch {batch}")
    ref = [LatencyStats(**s["stats"]) for s in samples[variants[0][0]]]
    ref_med = median_of(ref)
    rows = []
    for name, spec in variants:
        stats = [LatencyStats(**s["stats"]) for s in samples[name]]
        med = median_of(stats)
        cpu = [s["cpu_ms_per_call"] for s in samples[name]]
        cpu_ref = [s["cpu_ms_per_call"] for s in samples[variants[0][0]]]
        bare_stats = [LatencyStats(**s["stats"]) for s in samples[variants[1][0]]]
        cpu_bare = [s["cpu_ms_per_call"] for s in samples[variants[1][0]]]
        rows.append({"variant": name, "tasks": spec["tasks"], "batch": batch, "p50_ms": med.p50_ms,
                     "ratio_p50_bare": med.p50_ms / median_of(bare_stats).p50_ms,
                     "ratio_cpu_bare": statistics.median(cpu) / statistics.median(cpu_bare),
                     "ratio_p50_bare_rounds": [a.p50_ms / b.p50_ms for a, b in zip(stats, bare_stats)],
                     "cpu_ms": statistics.median(cpu), "ratio_cpu": statistics.median(cpu) / statistics.median(cpu_ref),
                     "ratio_cpu_rounds": [a / b for a, b in zip(cpu, cpu_ref)],
                     "p90_ms": med.p90_ms, "ratio_p50": med.p50_ms / ref_med.p50_ms,
                     "ratio_p50_rounds": [a.p50_ms / b.p50_ms for a, b in zip(stats, ref)],
                     "rounds_p50_ms": [s.p50_ms for s in stats], "iters": spec["iters"],
                     "ort_version": samples[name][0]["ort_version"]})
    return robust_ratios(rows)


def robust_ratios(rows: list[dict]) -> list[dict]:
    """Two more estimators next to the ratio of medians, for a machine whose load comes and goes within a round
    (another job slowing every call of some variants of a round but not others): the median of the per-round ratios,
    and the ratio of each variant's best (least disturbed) round. rows[0] is the widest export, rows[1] the bare
    backbone, at one batch size."""
    import statistics

    ref, bare = rows[0], rows[1]
    for r in rows:
        r["ratio_p50_round_median"] = statistics.median(r["ratio_p50_rounds"])
        r["ratio_p50_bare_round_median"] = statistics.median(r["ratio_p50_bare_rounds"])
        r["ratio_p50_best"] = min(r["rounds_p50_ms"]) / min(ref["rounds_p50_ms"])
        r["ratio_p50_bare_best"] = min(r["rounds_p50_ms"]) / min(bare["rounds_p50_ms"])
        r["ratio_cpu_round_median"] = statistics.median(r["ratio_cpu_rounds"])
    return rows


def measure_memory(art: dict, shape: list[int], args) -> list[dict]:
    import statistics

    base = {"kind": "memory", "threads": args.threads, "shape": shape, "batches": MEM_BATCHES}
    w, bare = art["tasks"][art["widest"]], art["tasks"][art["bare"]]
    variants = [(f"1 session: widest task's own export (task {w['id']})", {**base, "models": [w["onnx"]], "tasks": 1}),
                ("1 session: bare backbone (linear probe export)", {**base, "models": [bare["onnx"]], "tasks": 1})]
    for n, p in art["packs"].items():
        variants.append((f"pack T={n}: 1 session", {**base, "models": [p["onnx"]], "tasks": n}))
    sample = [art["tasks"][i]["onnx"] for i in art["sample"]]
    variants.append((f"{len(sample)} separate sessions (the sampled tasks' exports)",
                     {**base, "models": sample, "tasks": len(sample)}))
    samples = _interleave(variants, args.mem_rounds, "memory")
    ref = statistics.median(s["peak_rss_mib"] for s in samples[variants[0][0]])
    rows = []
    for name, spec in variants:
        peak = statistics.median(s["peak_rss_mib"] for s in samples[name])
        rows.append({"variant": name, "tasks": spec["tasks"], "sessions": len(spec["models"]),
                     "peak_rss_mib": peak, "ratio": peak / ref,
                     "rss_after_mib": statistics.median(s["rss_mib"] for s in samples[name]),
                     "rss_before_sessions_mib": statistics.median(s["rss_before_sessions_mib"]
                                                                  for s in samples[name]),
                     "rounds_peak_rss_mib": [s["peak_rss_mib"] for s in samples[name]]})
    return rows


def measure_optypes(art: dict, shape: list[int], work: Path, args) -> dict:
    """Per-op-type ms per call at batch 8, the largest pack's profile vs the single export's."""
    n = max(art["packs"])
    base = {"kind": "optypes", "threads": args.threads, "shape": shape, "batch": 8, "warmup": 1,
            "iters": args.profile_iters}
    single = _spawn({**base, "model": art["tasks"][art["widest"]]["onnx"], "tasks": 1,
                     "prefix": str(work / "prof_single")})
    packed = _spawn({**base, "model": art["packs"][n]["onnx"], "tasks": n, "prefix": str(work / "prof_pack")})
    ops = sorted(set(single["ms_per_call_by_op"]) | set(packed["ms_per_call_by_op"]))
    rows = [{"op": op, "single_ms": single["ms_per_call_by_op"].get(op, 0.0),
             "pack_ms": packed["ms_per_call_by_op"].get(op, 0.0)} for op in ops]
    for r in rows:
        r["extra_ms"] = r["pack_ms"] - r["single_ms"]
    rows.sort(key=lambda r: -abs(r["extra_ms"]))
    return {"tasks": n, "batch": 8, "iters": args.profile_iters, "rows": rows,
            "single_total_ms": sum(single["ms_per_call_by_op"].values()),
            "pack_total_ms": sum(packed["ms_per_call_by_op"].values()),
            "single_model_run_ms": float(np.median(single["model_run_ms"])),
            "pack_model_run_ms": float(np.median(packed["model_run_ms"]))}


# ---------------------------------------------------------------------------------------------------------------
# tables
# ---------------------------------------------------------------------------------------------------------------

def _spread(xs: list[float]) -> str:
    return f"{min(xs):.3f}–{max(xs):.3f}"


def markdown(key: str, art: dict, lat: list[dict], mem: list[dict], ops: dict | None, cond: str) -> str:
    b = BACKBONES[key]
    tasks, packs = art["tasks"], art["packs"]
    w = tasks[art["widest"]]
    one = w["bytes"]
    n_max = max(packs)
    lines = [f"### {b['name']} ({b['weights']} weights) @ {b['img_size']} px", "", cond, "",
             f"Tasks: task i is {' / '.join(p[0] for p in PLAN)} for i mod {len(PLAN)} = 0..{len(PLAN) - 1}, each "
             f"with its own random prompts and head. Widest task (most key/value columns, sum over blocks): task "
             f"{w['id']} ({w['label']}, {w['kv_columns_total']} columns). Own exports (the parity sample): "
             f"tasks {', '.join(str(i) for i in art['sample'])}; every task is also checked against its PyTorch model.",
             "", "| artifact | tasks | size MiB | size vs widest export | table bytes per task | nodes | "
             "KV prefix columns (sum over blocks) | max abs vs own exports (sample) | top-1 = own (sample) | "
             "max abs vs PyTorch (all tasks) |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for i in art["sample"]:
        t = tasks[i]
        lines.append(f"| own export of task {i} ({t['label']}) | 1 | {t['bytes'] / 2**20:.2f} | "
                     f"{t['bytes'] / one:.3f} | "
                     f" | {t['nodes']} | {t['kv_columns_total']} | | | {t['vs_torch_max_abs']:.1e} |")
    for n, p in packs.items():
        lines.append(f"| pack T={n} | {n} | {p['bytes'] / 2**20:.2f} | {p['bytes'] / one:.3f} | "
                     f"{p['table_bytes'] / n / 2**10:.0f} KiB | {p['nodes']} | {p['kv_columns_total']} | "
                     f"{p['parity_vs_own_max_abs']:.1e} | {'yes' if p['top1_equal_own'] else 'NO'} | "
                     f"{p['parity_vs_torch_max_abs']:.1e} |")
    if len(packs) > 1:
        lo = min(packs)
        per = (packs[n_max]["bytes"] - packs[lo]["bytes"]) / (n_max - lo)
        lines += ["", f"Marginal artifact bytes per task (pack T={n_max} − pack T={lo}) / {n_max - lo}: "
                  f"{per / 2**10:.0f} KiB; {n_max} separate exports would be about {n_max} × {one / 2**20:.0f} MiB "
                  f"= {n_max * one / 2**30:.2f} GiB."]
    lines += ["", "p50 ratios three ways: the ratio of the medians of round medians; the median of the per-round "
              "ratios [their range]; the ratio of each variant's best round (the least disturbed by other jobs).", "",
              ("| latency variant | batch | p50 ms | vs widest export | per-round median [range] | best rounds | "
               "vs bare backbone | per-round median [range] | best rounds | CPU ms/call | CPU vs widest, "
               "per-round median |"), "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in lat:
        lines.append(f"| {r['variant']} | {r['batch']} | {r['p50_ms']:.1f} | {r['ratio_p50']:.3f} | "
                     f"{r['ratio_p50_round_median']:.3f} [{_spread(r['ratio_p50_rounds'])}] | "
                     f"{r['ratio_p50_best']:.3f} | {r['ratio_p50_bare']:.3f} | "
                     f"{r['ratio_p50_bare_round_median']:.3f} [{_spread(r['ratio_p50_bare_rounds'])}] | "
                     f"{r['ratio_p50_bare_best']:.3f} | {r['cpu_ms']:.1f} | {r['ratio_cpu_round_median']:.3f} |")
    lines += ["", "| serving process | tasks | sessions | peak RSS MiB | vs widest export's session | "
              "RSS before sessions MiB | peak RSS per round |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in mem:
        rounds = ", ".join(f"{v:.0f}" for v in r["rounds_peak_rss_mib"])
        lines.append(f"| {r['variant']} | {r['tasks']} | {r['sessions']} | {r['peak_rss_mib']:.0f} | "
                     f"{r['ratio']:.3f} | {r['rss_before_sessions_mib']:.0f} | {rounds} |")
    e = art.get("edit")
    if e:
        a, rm = e["add"], e["remove"]
        parity = "" if a["max_abs_vs_own_export"] is None else f"max abs {a['max_abs_vs_own_export']:.1e}"
        lines += ["", f"Add / remove on a {e['tasks']}-task pack with tables as inputs (`edgevp.pack` with "
                  f"`PackOptions(add=True)` / `remove=True`, a new VPT-deep 10 run; tables.npz "
                  f"{e['tables_bytes'] / 2**20:.1f} MiB; graph "
                  f"bytes unchanged: {'yes' if e['graph_unchanged'] else 'NO'}):", "",
                  "| edit | wall s | gate s | wall − gate s | tables s | commit s | added task vs own export |",
                  "|---|---:|---:|---:|---:|---:|---:|",
                  f"| add 1 task | {a['wall_s']:.2f} | {a['gate']:.2f} | {a['wall_minus_gate_s']:.2f} | "
                  f"{a['tables']:.2f} | "
                  f"{a['commit']:.2f} | {parity} |",
                  f"| remove 1 task | {rm['wall_s']:.2f} | {rm['gate']:.2f} | {rm['wall_minus_gate_s']:.2f} | "
                  f"{rm['tables']:.2f} | {rm['commit']:.2f} | |",
                  "", "(wall − gate of an add includes loading the run — building its model from the run directory "
                  f"and reading its checkpoint: {e['load_run_s']:.2f} s measured on its own — and folding it.)"]
    if ops:
        lines += ["", f"ORT profile, batch {ops['batch']}, {ops['iters']} calls: kernel time per op type, pack "
                  f"T={ops['tasks']} vs the widest task's export (sum of kernels {ops['pack_total_ms']:.1f} vs "
                  f"{ops['single_total_ms']:.1f} ms per call; the largest differences first)", "",
                  "| op type | widest export ms/call | pack ms/call | pack − export ms |", "|---|---:|---:|---:|"]
        for r in ops["rows"][:10]:
            lines.append(f"| {r['op']} | {r['single_ms']:.2f} | {r['pack_ms']:.2f} | {r['extra_ms']:+.2f} |")
    return "\n".join(lines)


def verdicts(key: str, art: dict, lat: list[dict], mem: list[dict], ops: dict | None) -> list[str]:
    """The issue's targets (at the largest T, batch 8, mixed ids) next to the measured ratios (never asserted)."""
    def mark(v: float, target: float) -> str:
        return f"{v:.3f}x (target <= {target}x: {'met' if v <= target else 'MISSED'})"

    n = max(art["packs"])
    out = []
    r = next((r for r in lat if r["variant"] == f"pack T={n}" and r["batch"] == 8), None)
    where = ""
    if ops:
        top = [x for x in ops["rows"] if x["extra_ms"] > 0][:3]
        where = "; extra kernel time: " + ", ".join(f"{x['op']} {x['extra_ms']:+.1f} ms" for x in top)
    if r:
        kern = f", ORT kernel time {ops['pack_total_ms'] / ops['single_total_ms']:.3f}x" if ops else ""
        out.append(f"{key} T={n} b8: latency vs widest export {mark(r['ratio_p50'], TARGETS['latency'])}; per-round "
                   f"median {r['ratio_p50_round_median']:.3f}x, best rounds {r['ratio_p50_best']:.3f}x, CPU time "
                   f"{r['ratio_cpu_round_median']:.3f}x{kern}{where}")
        out.append(f"{key} T={n} b8: latency vs bare backbone {mark(r['ratio_p50_bare'], TARGETS['latency_bare'])}; "
                   f"per-round median {r['ratio_p50_bare_round_median']:.3f}x, best rounds "
                   f"{r['ratio_p50_bare_best']:.3f}x")
    p = art["packs"][n]
    size = p["bytes"] / art["tasks"][art["widest"]]["bytes"]
    out.append(f"{key} T={n}: artifact size vs widest export {mark(size, TARGETS['size'])}"
               f" ({p['table_bytes'] / 2**20:.1f} MiB of per-task tables, "
               f"{p['table_bytes'] / n / 2**10:.0f} KiB a task)")
    rss = next((m for m in mem if m["variant"] == f"pack T={n}: 1 session"), None)
    if rss:
        out.append(f"{key} T={n}: peak RSS vs widest export's session {mark(rss['ratio'], TARGETS['rss'])}")
    e = art.get("edit")
    if e:
        for op in ("add", "remove"):
            v = e[op]["wall_minus_gate_s"]
            out.append(f"{key} T={e['tasks']}: {op} one task {v:.2f} s gate excluded (target < {TARGETS['edit_s']} s: "
                       f"{'met' if v < TARGETS['edit_s'] else 'MISSED'}); gate {e[op]['gate']:.2f} s, wall "
                       f"{e[op]['wall_s']:.2f} s" + (f"; loading the run {e['load_run_s']:.2f} s of it, tables "
                                                     f"{e[op]['tables']:.2f} s, commit {e[op]['commit']:.2f} s"
                                                     if op == "add" else ""))
    out.append(f"{key} T={n}: parity vs own exports (tasks {art['sample']}) max abs {p['parity_vs_own_max_abs']:.1e} "
               f"(target <= 1e-4: {'met' if p['parity_vs_own_max_abs'] <= 1e-4 else 'MISSED'}), top-1 equal: "
               f"{p['top1_equal_own']}; vs PyTorch (all {n}) {p['parity_vs_torch_max_abs']:.1e}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbones", default=None, help="comma-separated: dinov2,vitb (default both; --quick: dinov2)")
    ap.add_argument("--tasks", default=None, help="pack sizes, comma-separated (default dinov2 1,8,16,32,64, vitb "
                    "1,16,64; --quick: 5)")
    ap.add_argument("--no-edit", action="store_true", help="skip the add/remove timing on the largest pack")
    ap.add_argument("--vpt-size-only", action="store_true", help="only the size target's setting: a pack of the "
                    "largest T VPT-deep-10 tasks vs one of them exported alone")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved latency rounds (per-backbone default)")
    ap.add_argument("--iters", type=int, default=None, help="timed calls per round at batch 1")
    ap.add_argument("--iters8", type=int, default=None, help="timed calls per round at batch 8")
    ap.add_argument("--warmup", type=int, default=None, help="untimed calls before the timed ones")
    ap.add_argument("--mem-rounds", type=int, default=None, help="interleaved memory rounds")
    ap.add_argument("--profile-iters", type=int, default=None, help="calls in the ORT op-type profile (0: skip)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="smoke run: dinov2 only, one 2-task pack, few calls")
    ap.add_argument("--out", type=Path, default=None, help="also write bench_multitask.{json,md} here")
    ap.add_argument("--keep", type=Path, default=None, help="keep the run directories and ONNX files under KEEP/<backbone>")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    q = args.quick
    keys = (args.backbones or ("dinov2" if q else "dinov2,vitb")).split(",")
    for k in keys:
        if k not in BACKBONES:
            ap.error(f"unknown backbone '{k}' (choose from {', '.join(BACKBONES)})")
    given_tasks = sorted({int(n) for n in args.tasks.split(",")}) if args.tasks else None
    if given_tasks and (given_tasks[0] < 1 or given_tasks[-1] < len(PLAN)):
        ap.error(f"--tasks: pack sizes must be >= 1, the largest >= {len(PLAN)} (one task per method; the linear "
                 "probe's export is the bare backbone)")

    import onnxruntime as ort

    from edgevp.io import write_json
    from edgevp.profile.device import cpu_name

    t_start = time.time()
    results, md, verdict_lines = {"backbones": {}, "command": " ".join(["python", *sys.argv])}, [], []

    def write(final: bool = False) -> None:  # after every backbone (and its setup): a late run keeps what it has
        results.update(ort_version=ort.__version__, threads=args.threads, cpu=cpu_name(),
                       python=platform.python_version(), total_s=round(time.time() - t_start, 1), complete=final)
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            write_json(args.out / "bench_multitask.json", results)
            tail = ["Targets (reported, not asserted):", ""] + [f"- {line}" for line in verdict_lines]
            (args.out / "bench_multitask.md").write_text("\n".join(md + tail) + "\n")

    if args.vpt_size_only:
        results["vpt_size"] = {}
        for key in keys:
            with tempfile.TemporaryDirectory(prefix="bench_multitask-") as d:
                results["vpt_size"][key] = vpt_size(key, Path(d), max(given_tasks or TASKS[key]))
        results.update(cpu=cpu_name(), total_s=round(time.time() - t_start, 1))
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            write_json(args.out / "vpt_size.json", results)
        return
    for key in keys:
        b = BACKBONES[key]
        given = {k: getattr(args, k) for k in QUICK if getattr(args, k) is not None}
        st = argparse.Namespace(**{**(QUICK if q else SETTINGS[key]), **given}, threads=args.threads)
        shape = [3, b["img_size"], b["img_size"]]
        num_tasks = given_tasks or ([5] if q else TASKS[key])
        print(f"{b['name']} @ {b['img_size']} px: building {max(num_tasks)} tasks, their exports and the packs",
              flush=True)
        entry = results["backbones"][key] = {"backbone": b, "settings": vars(st), "pack_sizes": num_tasks}
        try:
            with tempfile.TemporaryDirectory(prefix="bench_multitask-") as d:
                if args.keep:
                    d = args.keep / key
                    d.mkdir(parents=True, exist_ok=False)
                t0 = time.time()
                art = build_artifacts(key, Path(d), num_tasks, edit=not args.no_edit)
                build_s = time.time() - t0
                entry.update({k: art.get(k) for k in ("tasks", "packs", "sample", "widest", "bare", "edit")},
                             setup_s=round(build_s, 1))
                write()
                load_before = os.getloadavg()
                t0 = time.time()
                lat = measure_latency(art, shape, 1, st) + measure_latency(art, shape, 8, st)
                entry["latency"] = lat
                write()
                mem = measure_memory(art, shape, st)
                ops = measure_optypes(art, shape, Path(d), st) if st.profile_iters else None
                load_after = os.getloadavg()
                measure_s = time.time() - t0
        except Exception as e:  # noqa: BLE001 - keep the other backbone's numbers
            import traceback

            traceback.print_exc()
            entry["error"] = f"{type(e).__name__}: {e}"
            md += [f"### {b['name']}: FAILED ({entry['error']})", ""]
            write()
            continue
        cond = (f"ONNX Runtime {ort.__version__} CPUExecutionProvider, {st.threads} intra-op threads, inter-op 1, "
                f"spinning off, graph optimisation all; latency: {st.warmup} warm-up + {st.iters} (batch 1) / "
                f"{st.iters8} (batch 8) timed calls x {st.rounds} interleaved rounds, one process per variant "
                f"and round, median of round medians; memory: peak RSS (VmHWM) of a process that creates its "
                f"session(s) and runs {MEM_BATCHES} mixed batches of 8, median of {st.mem_rounds} interleaved "
                f"round(s); CPU {cpu_name()} ({os.cpu_count()} logical); load average before/after "
                f"{load_before[0]:.2f}/{load_after[0]:.2f}; setup {build_s:.0f} s, measurement {measure_s:.0f} s")
        md += [markdown(key, art, lat, mem, ops, cond), ""]
        v = verdicts(key, art, lat, mem, ops)
        verdict_lines += v
        print("\n" + md[-2] + "\n", flush=True)
        entry.update(memory=mem, optypes=ops, conditions=cond, verdicts=v, load_avg=[load_before, load_after],
                     measure_s=round(measure_s, 1))
        write()
    write(final=True)
    print("\n".join(["Targets (reported, not asserted):", ""] + [f"- {line}" for line in verdict_lines]))
    print(f"\ntotal {results['total_s']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
