"""Many tasks, one graph (issue 10's evidence): a T-task `edgevp pack` vs the single-task folded export of the same
run, on ONNX Runtime CPU — latency on a mixed-task batch, artifact size and peak memory serving T tasks, as ratios
measured in one run (no timing thresholds: the targets are printed next to the numbers, never asserted).

Per backbone, 8 tasks of mixed methods on the same frozen backbone (same `train.seed`, so a random-init backbone is
identical across tasks) cycle through VPT-deep 10, LoR-VP r4, E²VPT 10+5, VPT-deep-50 condensed to 30 % of its
prompts (random scores, non-uniform per layer) and a linear probe. Prompts and heads are random and far from zero
(normal, std 0.5 for prompts), so a pack that dropped or mixed up a task's tables would show in the parity column.
Each task is also written as a run directory (config.yaml, manifest.json, checkpoints/*.safetensors; untrained, so
`edgevp pack` could be run on them), then:

- the single-task reference is the task's own folded export as `edgevp export` writes it (`to_deploy` +
  `edgevp.export.onnx.export_onnx`: dynamo, opset 18, dynamic batch, then onnxsim);
- the T-task packs (T = 1, 2, 4, 8: the first T tasks) go through what `edgevp pack` runs between loading the runs
  and its gate: the compatibility check (`_check_compatible`, frozen tensors' sha256 included), `build_packed` and
  `export_pack` (tables as constants, default `PackOptions`), on Task objects of the in-memory models (re-loading
  every run would double the setup time of ViT-B); the benchmark's parity check stands in for the pack's gate.

Measurements (ONNX Runtime CPU, fixed intra-op threads, inter-op 1, spinning off, graph optimisation all — the
options of `edgevp.profile.backends.prepare_ort`), every variant in its own process (numpy + onnxruntime only),
interleaved over rounds with the order flipped each round, median of round medians (`edgevp.profile.latency`):

1. latency of the T-task pack on a mixed batch (batch 8: task ids cycle over the T tasks within the batch; batch 1:
   the task id cycles over the T tasks from call to call) vs the single export of task 0 -> ratio (target <= 1.03x).
   Next to it the process CPU time per call and its ratio: on a shared machine wall time also measures waiting for
   the cores, CPU time mostly the work;
2. artifact size of the T-task pack vs one single export -> ratio (target at T = 8: <= 1.05x), and T separate
   exports (T x) for comparison;
3. peak RSS (VmHWM, `edgevp.profile.worker.peak_rss_mib`) of a process that creates its session(s) and serves two
   mixed batches of 8: one pack session vs T separate sessions (one per task's export, each sample routed to its
   task's session), as a ratio to a process with one single-task session (target at T = 8 for the pack: <= 1.10x);
4. parity: the pack on a mixed batch of random images vs each task's own export (max abs logit difference, top-1
   agreement), and each export vs its PyTorch model;
5. where the time goes: kernel time per op type from ORT's profiler, the largest pack vs the single export, batch 8.

The attention of a pack pays, in every block, for the widest task's constant key/value columns (padded and masked
for the others): the "KV prefix columns" column shows that sum next to task 0's own.

    python tools/bench_multitask.py                               # dinov2 and vitb: 35 min on 2 shared cores
                                                                  # (load average 4-8), about half of it setup
    python tools/bench_multitask.py --quick                       # smoke run (~2 min): dinov2, a 2-task pack
    python tools/bench_multitask.py --backbones dinov2 --rounds 7 --out runs/bench_multitask
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
TARGETS = {"latency": 1.03, "size_T8": 1.05, "rss_T8": 1.10}
# calls per backbone (a ViT-B/16 call at batch 8 takes seconds on 2 cores): rounds, timed calls at batch 1 and 8,
# warm-up calls, memory rounds, profiled calls; --quick and the command line override them
SETTINGS = {"dinov2": {"rounds": 5, "iters": 30, "iters8": 8, "warmup": 3, "mem_rounds": 2, "profile_iters": 5},
            "vitb": {"rounds": 3, "iters": 8, "iters8": 3, "warmup": 1, "mem_rounds": 1, "profile_iters": 2}}
MEM_BATCHES = 2  # mixed batches of 8 the memory processes serve after creating their sessions
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
    from edgevp.runs import RunDir, save_checkpoint

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


def build_artifacts(key: str, work: Path, num_tasks: list[int]) -> dict:
    """Write the tasks' run directories, their own exports and the packs (first T tasks); check parity.

    The packs go through `build_packed` + `export_pack` (what `edgevp pack` runs between loading the runs and its
    gate) on Task objects of the in-memory models, after the same compatibility check `load_tasks` makes; the
    benchmark's own parity check (every task of a mixed batch vs that task's own export) stands in for the gate."""
    import copy

    from edgevp.data import load_splits
    from edgevp.multitask.graph import export_pack
    from edgevp.multitask.pipeline import PackOptions, Task, _check_compatible, backbone_fingerprint, build_packed
    from edgevp.runs import read_checkpoint

    backbone = BACKBONES[key]
    size = backbone["img_size"]
    t_max = max(num_tasks)
    tasks, facts, classes = [], [], None
    for i in range(t_max):
        label, method, prompt = PLAN[i % len(PLAN)]
        t = time.time()
        if i < len(PLAN):
            cfg, model = _task_model(backbone, method, prompt, seed=1000 + i)
        else:  # the same method again: a copy of that task's model with its own random prompts and head
            cfg, model = copy.deepcopy(tasks[i - len(PLAN)].cfg), copy.deepcopy(tasks[i - len(PLAN)].model)
            _randomise(model, seed=1000 + i)
        classes = classes or list(load_splits(cfg.data).classes)
        run = _write_run(work / "runs" / f"task{i}-{method}", cfg, model, label)
        _, header = read_checkpoint(run.checkpoint("best"), cfg)
        tasks.append(Task(run.path, cfg, model, header, classes, backbone_fingerprint(model)))
        onnx_path = work / f"single{i}.onnx"
        single = _single_export(model, onnx_path)
        kv = getattr(cfg.prompt, "tokens_per_layer", None)
        facts.append({"id": i, "label": label, "method": method, "run": str(run), "onnx": str(onnx_path),
                      "bytes": onnx_path.stat().st_size, "setup_s": round(time.time() - t, 1), **single,
                      **({"tokens_per_layer": list(kv)} if kv else {})})
        print(f"  task {i} ({label}): built and exported in {facts[-1]['setup_s']} s, "
              f"{facts[-1]['bytes'] / 2**20:.1f} MiB, ORT vs PyTorch max abs {single['vs_torch_max_abs']:.1e}",
              flush=True)
    _check_compatible(tasks)  # same backbone name, input, preprocessing and frozen tensors (sha256)
    rng = np.random.default_rng(0)
    x = rng.random((t_max, 3, size, size), dtype=np.float32)
    own = [_ort_logits(Path(f["onnx"]), x) for f in facts]  # every task's own export on the same images
    opts = PackOptions()
    packs = {}
    for n in num_tasks:
        t = time.time()
        path = work / f"pack{n}.onnx"
        model, tables, fold = build_packed(tasks[:n], opts)
        meta = export_pack(model, tables, tasks[:n], opts, fold, path)
        del model
        ids = np.arange(len(x)) % n  # a mixed batch: sample j belongs to task j % n
        got = _ort_logits(path, x, ids)
        ref = np.stack([own[k][j] for j, k in enumerate(ids)])
        per_task = [float(np.abs(got[ids == k] - own[k][ids == k]).max()) for k in range(n)]
        packs[n] = {"onnx": str(path), "bytes": path.stat().st_size, "export_s": round(time.time() - t, 1),
                    "nodes": meta["nodes"], "simplify": meta["simplify"].get("tool"),
                    "parity_max_abs_per_task": per_task, "parity_max_abs": max(per_task),
                    "top1_agreement": float((got.argmax(1) == ref.argmax(1)).mean()),
                    # attention prefix columns every sample pays for: per block the widest task's (padded)
                    "kv_columns_total": sum(max(c) for c in fold["kv_columns"].values()),
                    "fold": fold}
        print(f"  pack T={n}: exported in {packs[n]['export_s']} s, {packs[n]['bytes'] / 2**20:.1f} MiB, "
              f"{meta['nodes']} nodes; mixed batch vs own exports max abs {packs[n]['parity_max_abs']:.1e}",
              flush=True)
    return {"tasks": facts, "packs": packs}


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
    variants = [("single export (task 0)", {**base, "model": art["tasks"][0]["onnx"], "tasks": 1})]
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
        rows.append({"variant": name, "tasks": spec["tasks"], "batch": batch, "p50_ms": med.p50_ms,
                     "cpu_ms": statistics.median(cpu), "ratio_cpu": statistics.median(cpu) / statistics.median(cpu_ref),
                     "ratio_cpu_rounds": [a / b for a, b in zip(cpu, cpu_ref)],
                     "p90_ms": med.p90_ms, "ratio_p50": med.p50_ms / ref_med.p50_ms,
                     "ratio_p50_rounds": [a.p50_ms / b.p50_ms for a, b in zip(stats, ref)],
                     "rounds_p50_ms": [s.p50_ms for s in stats], "iters": spec["iters"],
                     "ort_version": samples[name][0]["ort_version"]})
    return rows


def measure_memory(art: dict, shape: list[int], args) -> list[dict]:
    import statistics

    base = {"kind": "memory", "threads": args.threads, "shape": shape, "batches": MEM_BATCHES}
    single = [t["onnx"] for t in art["tasks"]]
    variants = [("1 single-task session", {**base, "models": single[:1], "tasks": 1})]
    for n, p in art["packs"].items():
        variants.append((f"pack T={n}: 1 session", {**base, "models": [p["onnx"]], "tasks": n}))
        if n > 1:
            variants.append((f"{n} separate sessions", {**base, "models": single[:n], "tasks": n}))
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
    single = _spawn({**base, "model": art["tasks"][0]["onnx"], "tasks": 1, "prefix": str(work / "prof_single")})
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
    single_bytes = tasks[0]["bytes"]
    lines = [f"### {b['name']} ({b['weights']} weights) @ {b['img_size']} px", "", cond, "",
             "Tasks (in pack order): " + "; ".join(f"{t['id']}: {t['label']}" for t in tasks) + ".", "",
             "| artifact | tasks | size MiB | size ratio vs 1 export | T separate exports, ratio | nodes | "
             "KV prefix columns, sum over blocks | max abs logit diff | top-1 agreement |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
             f"| single export (task 0) | 1 | {single_bytes / 2**20:.2f} | 1.000 | 1.000 | {tasks[0]['nodes']} | "
             f"{tasks[0]['kv_columns_total']} | {tasks[0]['vs_torch_max_abs']:.1e} vs PyTorch | |"]
    for n, p in packs.items():
        sep = sum(t["bytes"] for t in tasks[:n]) / single_bytes
        lines.append(f"| pack T={n} | {n} | {p['bytes'] / 2**20:.2f} | {p['bytes'] / single_bytes:.3f} | {sep:.3f} | "
                     f"{p['nodes']} | {p['kv_columns_total']} | {p['parity_max_abs']:.1e} vs own exports (mixed batch) | "
                     f"{p['top1_agreement']:.3f} |")
    lines += ["", "| latency variant | batch | p50 ms | p90 ms | p50 ratio vs single export | ratio per round | "
              "CPU ms/call | CPU-time ratio | CPU ratio per round |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in lat:
        lines.append(f"| {r['variant']} | {r['batch']} | {r['p50_ms']:.2f} | {r['p90_ms']:.2f} | {r['ratio_p50']:.3f} | "
                     f"{_spread(r['ratio_p50_rounds'])} | {r['cpu_ms']:.1f} | {r['ratio_cpu']:.3f} | "
                     f"{_spread(r['ratio_cpu_rounds'])} |")
    lines += ["", "| serving process | tasks | sessions | peak RSS MiB | ratio vs 1 single-task session | "
              "RSS before sessions MiB | peak RSS per round |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in mem:
        lines.append(f"| {r['variant']} | {r['tasks']} | {r['sessions']} | {r['peak_rss_mib']:.0f} | {r['ratio']:.3f} | "
                     f"{r['rss_before_sessions_mib']:.0f} | {', '.join(f'{v:.0f}' for v in r['rounds_peak_rss_mib'])} |")
    if ops:
        lines += ["", f"ORT profile, batch {ops['batch']}, {ops['iters']} calls: kernel time per op type, pack "
                  f"T={ops['tasks']} vs single export (sum of kernels {ops['pack_total_ms']:.2f} vs "
                  f"{ops['single_total_ms']:.2f} ms per call; the largest differences first)", "",
                  "| op type | single ms/call | pack ms/call | pack − single ms |", "|---|---:|---:|---:|"]
        for r in ops["rows"][:10]:
            lines.append(f"| {r['op']} | {r['single_ms']:.3f} | {r['pack_ms']:.3f} | {r['extra_ms']:+.3f} |")
    return "\n".join(lines)


def verdicts(key: str, art: dict, lat: list[dict], mem: list[dict]) -> list[str]:
    """The issue's targets next to the measured ratios (reported, never asserted)."""
    out = []
    for r in lat:
        if r["variant"].startswith("pack"):
            ok = r["ratio_p50"] <= TARGETS["latency"]
            out.append(f"{key}: latency {r['variant']} batch {r['batch']}: {r['ratio_p50']:.3f}x (target <= "
                       f"{TARGETS['latency']}x: {'met' if ok else 'MISSED'})")
    n = max(art["packs"])
    size = art["packs"][n]["bytes"] / art["tasks"][0]["bytes"]
    out.append(f"{key}: size pack T={n}: {size:.3f}x (target at T=8 <= {TARGETS['size_T8']}x: "
               f"{'met' if size <= TARGETS['size_T8'] else 'MISSED'})")
    rss = next(r for r in mem if r["variant"] == f"pack T={n}: 1 session")["ratio"]
    out.append(f"{key}: peak RSS pack T={n}: {rss:.3f}x (target at T=8 <= {TARGETS['rss_T8']}x: "
               f"{'met' if rss <= TARGETS['rss_T8'] else 'MISSED'})")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbones", default=None, help="comma-separated: dinov2,vitb (default both; --quick: dinov2)")
    ap.add_argument("--tasks", default=None, help="pack sizes, comma-separated (default 1,2,4,8; --quick: 2)")
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
    num_tasks = sorted({int(n) for n in (args.tasks or ("2" if q else "1,2,4,8")).split(",")})
    if num_tasks[0] < 1:
        ap.error("--tasks: pack sizes must be >= 1")

    import onnxruntime as ort

    from edgevp.io import write_json
    from edgevp.profile.device import cpu_name

    t_start = time.time()
    results, md, verdict_lines = {"backbones": {}}, [], []
    for key in keys:
        b = BACKBONES[key]
        given = {k: getattr(args, k) for k in QUICK if getattr(args, k) is not None}
        st = argparse.Namespace(**{**(QUICK if q else SETTINGS[key]), **given}, threads=args.threads)
        shape = [3, b["img_size"], b["img_size"]]
        print(f"{b['name']} @ {b['img_size']} px: building {max(num_tasks)} tasks, their exports and the packs",
              flush=True)
        with tempfile.TemporaryDirectory(prefix="bench_multitask-") as d:
            if args.keep:
                d = args.keep / key
                d.mkdir(parents=True, exist_ok=False)
            t0 = time.time()
            art = build_artifacts(key, Path(d), num_tasks)
            build_s = time.time() - t0
            load_before = os.getloadavg()
            t0 = time.time()
            lat = measure_latency(art, shape, 1, st) + measure_latency(art, shape, 8, st)
            mem = measure_memory(art, shape, st)
            ops = measure_optypes(art, shape, Path(d), st) if st.profile_iters else None
            load_after = os.getloadavg()
            measure_s = time.time() - t0
        cond = (f"ONNX Runtime {ort.__version__} CPUExecutionProvider, {st.threads} intra-op threads, inter-op 1, "
                f"spinning off, graph optimisation all; latency: {st.warmup} warm-up + {st.iters} (batch 1) / "
                f"{st.iters8} (batch 8) timed calls x {st.rounds} interleaved rounds, one process per variant "
                f"and round, median of round medians; memory: peak RSS (VmHWM) of a process that creates its "
                f"session(s) and runs {MEM_BATCHES} mixed batches of 8, median of {st.mem_rounds} interleaved "
                f"round(s); CPU {cpu_name()} ({os.cpu_count()} logical); load average before/after "
                f"{load_before[0]:.2f}/{load_after[0]:.2f}; setup {build_s:.0f} s, measurement {measure_s:.0f} s")
        md += [markdown(key, art, lat, mem, ops, cond), ""]
        v = verdicts(key, art, lat, mem)
        verdict_lines += v
        print("\n" + md[-2] + "\n", flush=True)
        results["backbones"][key] = {"backbone": b, "settings": vars(st), "tasks": art["tasks"],
                                     "packs": art["packs"], "latency": lat, "memory": mem, "optypes": ops,
                                     "conditions": cond, "verdicts": v, "load_avg": [load_before, load_after],
                                     "setup_s": round(build_s, 1), "measure_s": round(measure_s, 1)}
    md += ["Targets (reported, not asserted):", ""] + [f"- {line}" for line in verdict_lines]
    print("\n".join(md[-len(verdict_lines) - 2:]))
    results.update(ort_version=ort.__version__, threads=args.threads, cpu=cpu_name(), python=platform.python_version(),
                   command=" ".join(["python", *sys.argv]), total_s=round(time.time() - t_start, 1))
    print(f"\ntotal {results['total_s']:.0f} s", flush=True)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        write_json(args.out / "bench_multitask.json", results)
        (args.out / "bench_multitask.md").write_text("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
