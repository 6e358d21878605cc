"""`edgevp report RUN...`: one self-contained summary across runs — a comparison table, an accuracy-vs-cost Pareto
plot, condensed runs' keep heatmaps and training curves (PNG + CSV each), and a markdown file linking them."""
from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

from .errors import ConfigError, IncompatibleError
from .io import atomic_path, write_json, write_text
from .optional import pyplot
from .runs import RunDir
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
        try:
            res = json.loads(Path(f).read_text())
        except (OSError, ValueError):
            res = None
        if not isinstance(res, dict) or not isinstance(res.get("rows"), list) or "reference" not in res:
            raise IncompatibleError(f"'{f}' is not a readable edgevp profile.json",
                                    "give the profile.json written by `edgevp profile`")
        res["_run"] = run and run.resolve()
        out.append(res)
    return out


def _deployed_hashes(run: Path) -> set[str]:
    """sha256 of the run's deployable ONNX files (references and failed artifacts excluded)."""
    from .io import sha256_file

    export = run / "export"
    skip = {"bare.onnx", "unfolded.onnx"}
    return {sha256_file(p) for p in export.rglob("*.onnx") if p.name not in skip} if export.is_dir() else set()


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


def summarize(run: Path, profiles: list[dict] | None = None) -> dict:
    rd = RunDir(run)
    m = rd.manifest()
    cfg = rd.config()
    info = m.get("train_info") or {}
    cond = m.get("condense")
    name = cfg.method + (f"-{cond['method']}" if cond else "")
    row = {"run": run.name, "method": name, "prompts_kept": f"{cond['kept']}/{cond['total']}" if cond else "all",
           "trainable_params": info.get("trainable_params"), "prompt_params": info.get("prompt_params"),
           "gmacs": info.get("macs") and info["macs"] / 1e9,
           "mac_ratio": info.get("macs") and info.get("bare_macs") and info["macs"] / info["bare_macs"],
           "test_top1": info.get("test_top1"), "val_top1": info.get("best_val_top1"),
           "train_seconds": info.get("train_seconds")}
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
        ("latency_on", "measured on", "{}"), ("test_top1", "top-1", "{:.2f}"), ("run", "run", "{}")]


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


def write_report(runs: list[Path], out: Path, profiles: list[Path] = ()) -> tuple[Path, list[dict]]:
    if not runs:
        raise ConfigError("give at least one run directory")
    found = _profiles(runs, profiles)
    rows = [summarize(r, found) for r in runs]
    out.mkdir(parents=True, exist_ok=True)
    files = []
    write_json(out / "summary.json", rows)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=sorted({k for r in rows for k in r}))
    w.writeheader()
    w.writerows(rows)
    write_text(out / "summary.csv", buf.getvalue())
    plt = pyplot()
    # Pareto: accuracy vs latency when every run was profiled, else vs analytic MACs
    use_lat = all(r.get("latency_p50_ms") for r in rows)
    xkey, xlabel = ("latency_p50_ms", "p50 latency (ms), batch 1") if use_lat else ("gmacs", "GMACs per image")
    pts = [(r[xkey], r["test_top1"]) for r in rows if r.get(xkey) is not None and r.get("test_top1") is not None]
    named = [r for r in rows if r.get(xkey) is not None and r.get("test_top1") is not None]
    front = pareto_front(pts)
    write_text(out / "pareto.csv", "method,run,x,top1,on_front\n" + "".join(
        f"{r['method']},{r['run']},{x},{a},{int(i in front)}\n" for i, (r, (x, a)) in enumerate(zip(named, pts))))
    files.append("pareto.csv")
    if plt and pts:
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
        files.append("pareto.png")
    # training curves
    curve_rows = ["run,epoch,train_loss,val_top1"]
    for r in runs:
        for m in RunDir(r).metrics():
            curve_rows.append(f"{r.name},{m['epoch']},{m.get('train_loss', '')},{m.get('val_top1', '')}")
    write_text(out / "curves.csv", "\n".join(curve_rows) + "\n")
    files.append("curves.csv")
    if plt:
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
        for r, row in zip(runs, rows):
            ms = RunDir(r).metrics()
            a1.plot([m["epoch"] + 1 for m in ms if "train_loss" in m], [m["train_loss"] for m in ms
                                                                         if "train_loss" in m], marker=".",
                    label=row["method"])
            a2.plot([m["epoch"] + 1 for m in ms if "val_top1" in m], [m["val_top1"] for m in ms if "val_top1" in m],
                    marker=".", label=row["method"])
        a1.set(xlabel="epoch", ylabel="train loss")
        a2.set(xlabel="epoch", ylabel="val top-1 (%)")
        a2.legend(fontsize=8)
        fig.tight_layout()
        _savefig(fig, out / "curves.png")
        plt.close(fig)
        files.append("curves.png")
    heatmaps = []
    for r in runs:
        for ext in ("png", "csv"):
            src = r / "condense" / f"keep_heatmap.{ext}"
            if src.is_file():
                dst = out / f"keep_heatmap-{r.name}.{ext}"
                shutil.copyfile(src, dst)
                heatmaps.append(dst.name)
    md = ["# edgevp report", "", table(rows), "",
          f"Pareto plot ({'latency' if use_lat else 'analytic MACs'} on x): "
          + (" · ".join(f"[{f}]({f})" for f in files if f.startswith("pareto"))), "",
          "Training curves: " + " · ".join(f"[{f}]({f})" for f in files if f.startswith("curves")), ""]
    if heatmaps:
        md += ["Keep heatmaps of condensed runs: " + " · ".join(f"[{f}]({f})" for f in heatmaps), ""]
    for f in files + heatmaps:
        if f.endswith(".png"):
            md.append(f"![{f}]({f})")
    write_text(out / "report.md", "\n".join(md) + "\n")
    return out / "report.md", rows
