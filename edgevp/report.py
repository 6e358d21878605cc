"""`edgevp report RUN...`: one self-contained summary across runs — a comparison table, an accuracy-vs-cost Pareto
plot, condensed runs' keep heatmaps and training curves (PNG + CSV each), and a markdown file linking them. Pack
directories (`edgevp pack`) among the arguments get a "Multi-task packs" section (`packs.csv`): one row per task and
one row for the shared cost."""
from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path

from .errors import ConfigError, IncompatibleError
from .io import atomic_path, check_writable, staged_dir, write_json, write_text
from .optional import pyplot
from .records import EvalRecord, ExportRecord, ProfileRecord, TrainInfo, train_info_of
from .runs import RunDir
from .sweep.summary import is_sweep, sweep_section
from .tables import cell, markdown_table


def _profiles(runs: list[Path], extra: list[Path] = ()) -> list[dict]:
    """The profiles a report draws latency from: `extra` profile.json files first (e.g. measured on the device),
    then every RUN/profile/profile.json among `runs` (one profile may measure several runs' artifacts)."""
    out = []
    for f, run in [*((Path(p), None) for p in extra), *((r / "profile" / "profile.json", r) for r in runs)]:
        if not f.is_file():
            if run is not None:  # a run without a profile
                continue
            raise IncompatibleError(f"profile '{f}' does not exist", "give a profile.json written by `edgevp profile`")
        res = ProfileRecord.read(f).to_json()
        res["_run"] = run and run.resolve()
        out.append(res)
    return out


def _deployed_hashes(run: Path) -> set[str]:
    """sha256 of the run's deployable ONNX files (references and failed artifacts excluded)."""
    from .io import sha256_file

    export = run / "export"
    skip = {"bare.onnx", "unfolded.onnx"}
    return {sha256_file(p) for p in export.rglob("*.onnx") if p.is_file() and p.name not in skip} \
        if export.is_dir() else set()  # `edgevp eval` writes its results into folders named after the model


def _latency(run: Path, profiles: list[dict]) -> dict | None:
    """The run's deployed latency (smallest batch measured) and its ratio to that profile's reference. Rows that
    belong to the run: its own profile's "this run" row; a row whose artifact is the run's `export/model.onnx`; a row
    whose artifact (or, for an engine, the ONNX it was built from) has the sha256 of one of the run's exports."""
    run = run.resolve()
    deployed = run / "export" / "model.onnx"
    hashes = None
    given = [p for p in profiles if p["_run"] is None]
    own = [p for p in profiles if p["_run"] == run]
    others = [p for p in profiles if p["_run"] is not None and p["_run"] != run]
    for res in given + own + others:
        rows = [r for r in res["rows"] if r["batch"] == min(x["batch"] for x in res["rows"])]
        mine = None
        if res["_run"] == run:
            mine = next((r for r in rows if r.get("role") == "this run"), None) or \
                next((r for r in rows if r["variant"].startswith("model")), rows[-1])
        mine = mine or next((r for r in rows if r.get("artifact") and Path(r["artifact"]).resolve() == deployed), None)
        if mine is None and any(r.get("sha256") or r.get("onnx_sha256") for r in rows):
            hashes = _deployed_hashes(run) if hashes is None else hashes
            mine = next((r for r in rows if {r.get("sha256"), r.get("onnx_sha256")} & hashes), None)
        if mine is not None:
            cond = res.get("conditions", {}).get(mine["variant"], {})
            machine = res.get("machine", {})
            rounds = mine.get("ratio_p50_rounds") or []
            return {"p50_ms": mine["p50_ms"], "ratio": mine["ratio_p50"], "reference": res["reference"],
                    "ratio_range": [min(rounds), max(rounds)] if rounds else None,
                    "macs": mine.get("macs"), "backend": cond.get("backend"),
                    "where": f"{cond.get('backend', '?')}, {machine.get('gpu') or machine.get('cpu') or '?'}"}
    return None


def _deployed_top1(run: Path) -> dict:
    """Top-1 of the run's deployed artifacts measured by `edgevp eval` (eval.json files under RUN/export), one per
    form (fp32 / fp16 / int8 / engine-<precision>); evaluations on the exported test split come first."""
    found: dict[str, tuple] = {}
    export = run / "export"
    for f in sorted(export.rglob("eval.json")) if export.is_dir() else []:
        try:
            doc = EvalRecord.read(f)
        except IncompatibleError:
            continue
        label, value = doc.form, float(doc.top1)
        key = (doc.data.get("kind") == "test.npz", str(doc.created_at))
        if label not in found or key > found[label][0]:
            found[label] = (key, value)
    order = {"fp32": 0, "fp16": 1, "int8": 2}
    values = {k: found[k][1] for k in sorted(found, key=lambda k: (order.get(k, 3), k))}
    if not values:
        return {}
    return {"deployed_top1": " · ".join(f"{k} {v:.2f}" for k, v in values.items()), "deployed_top1_values": values}


def summarize(run: Path, profiles: list[dict] | None = None) -> dict:
    rd = RunDir(run)
    m = rd.manifest()
    cfg = rd.config()
    info = train_info_of(m, f"'{rd.manifest_path}' train_info") or TrainInfo()
    cond = m.get("condense")
    name = cfg.method + (f"-{cond['method']}" if cond else "")
    row = {"run": run.name, "method": name, "prompts_kept": f"{cond['kept']}/{cond['total']}" if cond else "all",
           "trainable_params": info.trainable_params, "prompt_params": info.prompt_params,
           "gmacs": info.macs and info.macs / 1e9,
           "mac_ratio": info.macs and info.bare_macs and info.macs / info.bare_macs,
           "test_top1": info.test_top1, "val_top1": info.best_val_top1, "train_seconds": info.train_seconds}
    row.update(_deployed_top1(run))
    lat = _latency(run, _profiles([run]) if profiles is None else profiles)
    if lat:
        row.update(latency_p50_ms=lat["p50_ms"], latency_ratio=lat["ratio"], latency_backend=lat["backend"],
                   deployed_gmacs=lat["macs"] and lat["macs"] / 1e9, latency_on=lat["where"],
                   latency_ratio_range=lat["ratio_range"])
    return row


COLS = [("method", "method", "{}"), ("prompts_kept", "prompts kept", "{}"), ("trainable_params", "params", "{:,}"),
        ("gmacs", "GMACs (trained form)", "{:.3f}"), ("mac_ratio", "MACs vs bare", "{:.3f}"),
        ("deployed_gmacs", "GMACs deployed", "{:.3f}"),
        ("latency_p50_ms", "p50 ms", "{:.2f}"), ("latency_ratio", "p50 vs bare", "{:.3f}"),
        ("latency_ratio_range", "per round", "{:.3f}–{:.3f}"),
        ("latency_on", "measured on", "{}"), ("test_top1", "top-1", "{:.2f}"),
        ("deployed_top1", "deployed top-1 (edgevp eval)", "{}"), ("run", "run", "{}")]


def table(rows: list[dict]) -> str:
    return markdown_table([h for _, h, _ in COLS], [[cell(r.get(k), f) for k, _, f in COLS] for r in rows])


def _savefig(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points not dominated (lower cost and higher accuracy is better)."""
    front = []
    for i, (c, a) in enumerate(points):
        if not any((c2 <= c and a2 >= a) and (c2 < c or a2 > a) for j, (c2, a2) in enumerate(points) if j != i):
            front.append(i)
    return front


def is_pack(path: Path) -> bool:
    """A directory written by `edgevp pack` (its `pack.json` says kind "pack")."""
    side = Path(path) / "pack.json"
    if not side.is_file():
        return False
    try:
        return ExportRecord.read(side).kind == "pack"
    except IncompatibleError:
        return False


def report_inputs(paths: list[Path]) -> list[Path]:
    """The arguments a report reads: run directories (with manifest.json), pack and sweep directories; when there is
    neither, every argument (so that a wrong one fails as "not an edgevp run directory")."""
    keep = [Path(p) for p in paths if (Path(p) / "manifest.json").is_file() or is_pack(p) or is_sweep(p)]
    return keep or [Path(p) for p in paths]


def _pack_files(pack: Path, meta: dict) -> tuple[list[Path], list[Path]]:
    """(artifact files, ONNX graphs) of a pack: its model file(s) (`model.onnx` / `model.fp16.onnx`, engines of a
    TensorRT bundle, the bundle's ONNX when no engine was built) and `tables.npz` when present. A failed pack's
    files carry a `.failed` suffix and are counted the same way."""
    names = meta.get("files")
    if not isinstance(names, list) or not names:
        names = [p.name for p in sorted(pack.iterdir()) if p.name != "profile"]
    files, graphs = [], []
    for name in names:
        p = pack / str(name)
        if p.is_dir():  # trt-<precision>/ bundle
            inside = sorted(q for q in p.iterdir() if q.is_file())
            engines = [q for q in inside if q.suffix in (".engine", ".plan")]
            onnx = [q for q in inside if q.suffix == ".onnx"]
            files += (engines or onnx) + [q for q in inside if q.name == "tables.npz"]
            graphs += onnx
        elif p.is_file():
            base = p.name.removesuffix(".failed")
            if base.endswith(".onnx"):
                files.append(p)
                graphs.append(p)
            elif base.endswith(".engine") or base.endswith(".plan") or base == "tables.npz":
                files.append(p)
    return files, graphs


def _graph_macs(graph: Path | None) -> int | None:
    """MACs (batch 1) of the pack graph by edgevp.profile.onnx_macs, None where it cannot tell."""
    if graph is None:
        return None
    try:
        from .profile.onnx_macs import graph_cost

        cost = graph_cost(graph)
    except Exception:  # noqa: BLE001 - an exotic graph (or no onnx here): n/a, not a failed report
        return None
    return None if cost.unknown else cost.macs


def _pack_latency(pack: Path, files: list[Path], profiles: list[dict]) -> dict | None:
    """The pack's p50 at the smallest batch measured, from a given profile whose row is the pack's artifact (by
    path or sha256), else from PACK/profile/profile.json; with the task setting it was timed on."""
    from .io import sha256_file

    pack = pack.resolve()
    own = _profiles([pack])
    hashes = None
    for res in profiles + own:
        mine = []
        for r in res["rows"]:
            art = r.get("artifact") or ""
            if art and (Path(art).resolve().parent == pack or Path(art).resolve().parent.parent == pack):
                mine.append(r)
            elif r.get("sha256") or r.get("onnx_sha256"):
                hashes = {sha256_file(f) for f in files} if hashes is None else hashes
                if {r.get("sha256"), r.get("onnx_sha256")} & hashes:
                    mine.append(r)
        if not mine and res["_run"] == pack and res["rows"]:  # the pack's own profile, paths from elsewhere
            mine = [r for r in res["rows"] if r["variant"] == res["rows"][0]["variant"]]
        if mine:
            row = min(mine, key=lambda r: r["batch"])
            art = row.get("artifact") or ""
            task = row.get("task") or ("mixed" if art.endswith(".onnx") else None)
            cond = res.get("conditions", {}).get(row["variant"], {})
            machine = res.get("machine", {})
            return {"p50_ms": row["p50_ms"], "batch": row["batch"], "task": task,
                    "where": f"{cond.get('backend', '?')}, {machine.get('gpu') or machine.get('cpu') or '?'}"}
    return None


def _run_index(runs: list[Path]) -> dict:
    """Resolved path and run_id -> (run directory, manifest) of the report's runs."""
    from .runs import RunDir

    index = {}
    for r in runs:
        m = RunDir(r).manifest()
        index[str(Path(r).resolve())] = (Path(r), m)
        if m.get("run_id"):
            index.setdefault(f"id:{m['run_id']}", (Path(r), m))
    return index


def _run_test_top1(manifest: dict) -> float | None:
    info = train_info_of(manifest, f"run '{manifest.get('run_id')}' train_info")
    return info and info.test_top1


def summarize_pack(pack: Path, runs: list[Path] = (), profiles: list[dict] = ()) -> dict:
    """One pack: {"pack", "status", "target", "tasks": [row per task], "shared": {cost row}}."""
    pack = Path(pack)
    record = ExportRecord.read(pack / "pack.json")
    meta, status = record.to_json(), record.status
    index = _run_index(list(runs))
    parity = {p.get("task"): p for p in (meta.get("parity") or {}).get("per_task", []) if isinstance(p, dict)}
    tasks, separate, found = [], 0, 0
    for t in meta.get("tasks", []):
        par = parity.get(t.get("id"), {})
        hit = index.get(str(Path(t.get("run_path", "")).resolve())) if t.get("run_path") else None
        hit = hit or index.get(f"id:{t.get('run_id')}")
        run_dir = hit[0] if hit else Path(t["run_path"]) if t.get("run_path") else None
        classes = t.get("classes")
        tasks.append({"pack": pack.name, "task": t.get("id"), "run": t.get("run"), "method": t.get("method"),
                      "classes": t.get("num_classes", len(classes) if isinstance(classes, list) else None),
                      "top1_pack": par.get("top1_pack"), "top1_own_export": par.get("top1_own_export"),
                      "gate_images": par.get("images"), "max_abs": par.get("max_abs"),
                      "test_top1": _run_test_top1(hit[1]) if hit else None})
        own = run_dir / "export" / "model.onnx" if run_dir else None
        if own is not None and own.is_file():
            separate += own.stat().st_size
            found += 1
    files, graphs = _pack_files(pack, meta)
    size = sum(f.stat().st_size for f in files) if files else None
    n = len(tasks)
    separate = separate if n and found == n else None
    macs = _graph_macs(graphs[0] if graphs else None)
    lat = _pack_latency(pack, files, list(profiles))
    shared = {"pack": pack.name, "status": status, "target": meta.get("target"), "tasks": n,
              "artifact_bytes": size, "artifact_files": [str(f.relative_to(pack)) for f in files],
              "gmacs": macs and macs / 1e9, "separate_bytes": separate, "separate_found": f"{found}/{n}",
              "size_ratio": size / separate if size and separate else None,
              "latency_p50_ms": lat and lat["p50_ms"], "latency_batch": lat and lat["batch"],
              "latency_task": lat and lat["task"], "latency_on": lat and lat["where"]}
    return {"pack": pack.name, "path": str(pack), "status": status, "target": meta.get("target"), "tasks": tasks,
            "shared": shared}


PACK_COLS = ["pack", "row", "task", "run", "method", "classes", "top1_pack", "top1_own_export", "gate_images",
             "max_abs", "test_top1", "status", "target", "artifact_bytes", "gmacs", "latency_p50_ms", "latency_batch",
             "latency_task", "latency_on", "separate_bytes", "separate_found", "size_ratio"]


def pack_rows(packs: list[dict]) -> list[dict]:
    """The rows of packs.csv: each task's row, then the pack's "shared" row."""
    rows = []
    for p in packs:
        rows += [{"row": "task", "status": p["status"], **t} for t in p["tasks"]]
        rows.append({"row": "shared", **{k: v for k, v in p["shared"].items() if k != "artifact_files"}})
    return rows


def _mb(n: int | None) -> str:
    return cell(n, "{:,}") + ("" if n is None else f" ({n / 2 ** 20:.2f} MiB)")


def pack_table(p: dict) -> str:
    """A pack's markdown table: one row per task, then the shared-cost row."""
    head = ["task", "run", "method", "classes", "gate images", "val top-1 pack", "val top-1 own export",
            "max abs vs own", "test top-1 (run)", "size, bytes", "GMACs", "p50 ms", "size vs separate exports"]
    rows = []
    for t in p["tasks"]:
        rows.append([cell(t["task"]), cell(t["run"]), cell(t["method"]), cell(t["classes"]), cell(t["gate_images"]),
                     cell(t["top1_pack"], "{:.2f}"), cell(t["top1_own_export"], "{:.2f}"),
                     cell(t["max_abs"], "{:.2e}"), cell(t["test_top1"], "{:.2f}"), "", "", "", ""])
    s = p["shared"]
    lat = "n/a" if s["latency_p50_ms"] is None else \
        f"{s['latency_p50_ms']:.2f} (batch {s['latency_batch']}, task {cell(s['latency_task'])}, {s['latency_on']})"
    vs = "n/a" if s["size_ratio"] is None else \
        f"{s['size_ratio']:.3f}× ({s['tasks']} separate exports: {s['separate_bytes']:,} bytes)"
    if s["size_ratio"] is None and s["separate_found"] != f"{s['tasks']}/{s['tasks']}":
        vs = f"n/a ({s['separate_found']} separate exports found)"
    rows.append(["shared", f"{s['tasks']} tasks", f"status {s['status']}", "", "", "", "", "", "",
                 _mb(s["artifact_bytes"]), cell(s["gmacs"], "{:.4f}"), lat, vs])
    return markdown_table(head, rows)


def _pack_section(packs: list[dict]) -> list[str]:
    md = ["## Multi-task packs", "",
          "Per task: top-1 on the gate's validation images through the pack vs the run's own export, and the max "
          "abs logit difference between them; test top-1 from the task's run when it is among the report's runs. "
          "Shared: the pack's artifact (model file(s) + tables.npz), its graph MACs (batch 1), its latency from "
          "PACK/profile/profile.json, and its size vs the tasks' separate exports. Rows: [packs.csv](packs.csv)", ""]
    for p in packs:
        md += [f"### {p['pack']} ({p['target']}, status {p['status']})", "", pack_table(p), ""]
    return md


def write_report(runs: list[Path], out: Path, profiles: list[Path] = ()) -> tuple[Path, list[dict]]:
    """Report `runs`; pack directories among them (see `is_pack`) get the multi-task packs section, sweep directories
    (`edgevp sweep`) a grid heat map and their best trial."""
    runs = [Path(r) for r in runs]
    packs = [r for r in runs if is_pack(r)]
    sweeps = [r for r in runs if is_sweep(r)]
    runs = [r for r in runs if r not in packs and r not in sweeps]
    if not runs and not packs and not sweeps:
        raise ConfigError("give at least one run directory")
    check_writable(out)  # unwritable: exit 2 before any run is read (created only when written)
    found = _profiles(runs, profiles)
    rows = [summarize(r, found) for r in runs]
    with staged_dir(out) as stage:  # a failed report (a full disk) leaves none of its files in `out`
        _write_files(runs, packs, sweeps, found, rows, stage)
    return out / "report.md", rows


def _write_files(runs: list[Path], packs: list[Path], sweeps: list[Path], found: list[dict], rows: list[dict],
                 out: Path) -> None:
    """Every file of the report into `out`."""
    sweep_md = [line for s in sweeps for line in ["", *sweep_section(s, out)]]
    pack_summaries = [summarize_pack(p, runs, [f for f in found if f["_run"] is None]) for p in packs]
    if pack_summaries:
        write_text(out / "packs.csv", _csv(pack_rows(pack_summaries), PACK_COLS))
        write_json(out / "packs.json", pack_summaries)
    run_md = _write_run_files(runs, rows, out) if runs else []
    md = ["# edgevp report", *run_md, *(["", *_pack_section(pack_summaries)] if pack_summaries else []), *sweep_md]
    write_text(out / "report.md", "\n".join(md) + "\n")


def _csv(rows: list[dict], columns: list[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def _write_run_files(runs: list[Path], rows: list[dict], out: Path) -> list[str]:
    """The runs' summary (json, csv), Pareto plot, training curves and keep heatmaps; the report's lines on them."""
    write_json(out / "summary.json", rows)
    write_text(out / "summary.csv", _csv(rows, sorted({k for r in rows for k in r})))
    plt = pyplot()
    use_lat, files = _write_pareto(rows, out, plt)
    files += _write_curves(runs, rows, out, plt)
    heatmaps = _copy_heatmaps(runs, out)
    md = ["", table(rows), "",
          f"Pareto plot ({'latency' if use_lat else 'analytic MACs'} on x): "
          + (" · ".join(f"[{f}]({f})" for f in files if f.startswith("pareto"))), "",
          "Training curves: " + " · ".join(f"[{f}]({f})" for f in files if f.startswith("curves")), ""]
    if heatmaps:
        md += ["Keep heatmaps of condensed runs: " + " · ".join(f"[{f}]({f})" for f in heatmaps), ""]
    return md + [f"![{f}]({f})" for f in files + heatmaps if f.endswith(".png")]


def _write_pareto(rows: list[dict], out: Path, plt) -> tuple[bool, list[str]]:
    """pareto.csv (+ .png with matplotlib): accuracy vs latency when every run was profiled, else vs analytic MACs.
    Returns whether latency was used and the files written."""
    use_lat = all(r.get("latency_p50_ms") for r in rows)
    xkey, xlabel = ("latency_p50_ms", "p50 latency (ms), batch 1") if use_lat else ("gmacs", "GMACs per image")
    named = [r for r in rows if r.get(xkey) is not None and r.get("test_top1") is not None]
    pts = [(r[xkey], r["test_top1"]) for r in named]
    front = pareto_front(pts)
    write_text(out / "pareto.csv", "method,run,x,top1,on_front\n" + "".join(
        f"{r['method']},{r['run']},{x},{a},{int(i in front)}\n" for i, (r, (x, a)) in enumerate(zip(named, pts))))
    if not (plt and pts):
        return use_lat, ["pareto.csv"]
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for i, (r, (x, a)) in enumerate(zip(named, pts)):
        ax.scatter([x], [a], marker="o", facecolors="C0" if i in front else "none", edgecolors="C0")
        ax.annotate(r["method"], (x, a), textcoords="offset points", xytext=(4, 4), fontsize=8)
    fp = sorted(pts[i] for i in front)
    ax.plot([p[0] for p in fp], [p[1] for p in fp], "--", color="C1", lw=1, label="Pareto front")
    ax.set(xlabel=xlabel, ylabel="test top-1 (%)", title="accuracy vs cost (hollow: dominated)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    _savefig(fig, out / "pareto.png")
    plt.close(fig)
    return use_lat, ["pareto.csv", "pareto.png"]


def _write_curves(runs: list[Path], rows: list[dict], out: Path, plt) -> list[str]:
    """curves.csv (+ .png with matplotlib): each run's train loss and val top-1 per epoch; the files written."""
    epochs = [RunDir(r).epochs() for r in runs]
    lines = [f"{r.name},{e.epoch},{_blank(e.train_loss)},{_blank(e.val_top1)}" for r, es in zip(runs, epochs) for e in es]
    write_text(out / "curves.csv", "\n".join(["run,epoch,train_loss,val_top1", *lines]) + "\n")
    if not plt:
        return ["curves.csv"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for es, row in zip(epochs, rows):
        trained = [e for e in es if e.train_loss is not None]
        evaluated = [e for e in es if e.val_top1 is not None]
        a1.plot([e.epoch + 1 for e in trained], [e.train_loss for e in trained], marker=".", label=row["method"])
        a2.plot([e.epoch + 1 for e in evaluated], [e.val_top1 for e in evaluated], marker=".", label=row["method"])
    a1.set(xlabel="epoch", ylabel="train loss")
    a2.set(xlabel="epoch", ylabel="val top-1 (%)")
    a2.legend(fontsize=8)
    fig.tight_layout()
    _savefig(fig, out / "curves.png")
    plt.close(fig)
    return ["curves.csv", "curves.png"]


def _blank(value) -> object:
    return "" if value is None else value


def _copy_heatmaps(runs: list[Path], out: Path) -> list[str]:
    """Condensed runs' keep heatmaps (png, csv) copied into the report; their names."""
    heatmaps = []
    for r in runs:
        for ext in ("png", "csv"):
            src = r / "condense" / f"keep_heatmap.{ext}"
            if src.is_file():
                dst = out / f"keep_heatmap-{r.name}.{ext}"
                shutil.copyfile(src, dst)
                heatmaps.append(dst.name)
    return heatmaps
