"""A sweep's record: `SWEEPDIR/sweep.json` (options, every trial with its params, state, metric and run directory,
the best trial, the final run) and `summary.md`, both written atomically; and the grid heat map `edgevp report`
draws from sweep.json (no optuna needed to read a sweep)."""
from __future__ import annotations

import io
import csv
import json
from pathlib import Path

from ..io import atomic_path, write_json, write_text
from ..optional import pyplot
from ..runs import now
from ..tables import cell, markdown_table

KIND = "sweep"


def metric_of(records: list[dict], metric: str) -> float | None:
    """The run's value of `metric`: the best epoch's (max val_top1, min val_loss)."""
    values = [r[metric] for r in records if r.get(metric) is not None]
    if not values:
        return None
    return max(values) if metric == "val_top1" else min(values)


def _trial_row(t) -> dict:
    return {"number": t.number, "state": t.state.name, "params": dict(t.params), "value": t.value,
            "run_dir": t.user_attrs.get("run_dir"), "error": t.user_attrs.get("error"),
            "pruned_at_epoch": t.user_attrs.get("pruned_at_epoch"), "test_top1": t.user_attrs.get("test_top1"),
            "retry_of": t.system_attrs.get("failed_trial"), "retried_as": None}


def sweep_doc(study, info: dict, final: dict | None) -> dict:
    """sweep.json from the study's trials (queued ones included, as WAITING)."""
    trials = [_trial_row(t) for t in study.get_trials(deepcopy=False)]
    by_number = {t["number"]: t for t in trials}
    for t in trials:
        if t["retry_of"] is not None and t["retry_of"] in by_number:
            by_number[t["retry_of"]]["retried_as"] = t["number"]
    done = [t for t in trials if t["state"] == "COMPLETE" and t["value"] is not None]
    best = None
    if done:
        pick = max if info["direction"] == "maximize" else min
        best = pick(done, key=lambda t: t["value"])
    counts: dict[str, int] = {}
    for t in trials:
        counts[t["state"]] = counts.get(t["state"], 0) + 1
    return {"kind": KIND, "updated_at": now(), **info, "counts": counts, "trials": trials, "best": best,
            "final": final}


def _params_text(params: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items())


def done_line(doc: dict) -> str:
    """`done: N complete, ...; best: trial K (params) metric V[; final test top-1 T] -> SWEEPDIR` (what `edgevp sweep`
    prints)."""
    best, fin = doc["best"], doc["final"]
    line = (f"best: trial {best['number']} ({_params_text(best['params'])}) {doc['metric']} {best['value']:.4g}"
            if best else "best: no completed trial")
    if fin and fin.get("test_top1") is not None:
        line += f"; final (train+val) test top-1 {fin['test_top1']:.2f}"
    counts = ", ".join(f"{v} {k.lower()}" for k, v in doc["counts"].items())
    return f"done: {counts}; {line} -> {doc['sweep_dir']}"


def summary_md(doc: dict) -> str:
    keys = list(doc["grid"])
    head = ["trial", *keys, "state", doc["metric"], "test top-1", "run directory", "note"]
    rows = []
    for t in doc["trials"]:
        note = t["error"] or ""
        if t["pruned_at_epoch"] is not None:
            note = f"pruned at epoch {t['pruned_at_epoch'] + 1}"
        if t["retried_as"] is not None:
            note += f"; retried as trial {t['retried_as']}"
        if t["retry_of"] is not None:
            note += f"retry of trial {t['retry_of']}"
        rows.append([str(t["number"]), *(cell(t["params"].get(k)) for k in keys), t["state"],
                     cell(t["value"], "{:.4g}"), cell(t["test_top1"], "{:.2f}"), cell(t["run_dir"]), note])
    md = [f"# Sweep {doc['study']}", "",
          f"Recipe `{doc['recipe']}` · storage `{doc['storage']}` · sampler {doc['options']['sampler']} · metric "
          f"{doc['metric']} ({doc['direction']}) · pruner {doc['options']['pruner']} · trials: "
          + ", ".join(f"{v} {k.lower()}" for k, v in doc["counts"].items()), "", markdown_table(head, rows), ""]
    best = doc["best"]
    md.append(f"Best: trial {best['number']} ({_params_text(best['params'])}), {doc['metric']} {best['value']:.4g}"
              if best else "Best: no completed trial yet")
    final = doc.get("final")
    if final:
        md += ["", f"Final (trial {final['best_trial']}'s configuration retrained on train+val, "
                   f"`{final['run_dir']}/`): test top-1 {cell(final['test_top1'], '{:.2f}')}"]
    return "\n".join(md) + "\n"


def write_summary(out: Path, doc: dict) -> None:
    write_json(out / "sweep.json", doc)
    write_text(out / "summary.md", summary_md(doc))


# -- `edgevp report SWEEPDIR` ----------------------------------------------------------------------------------------
def is_sweep(path: Path) -> bool:
    """A directory written by `edgevp sweep` (its sweep.json says kind "sweep")."""
    f = Path(path) / "sweep.json"
    try:
        return f.is_file() and json.loads(f.read_text()).get("kind") == KIND
    except (OSError, ValueError, AttributeError):
        return False


def heat_grid(doc: dict) -> tuple[str, str | None, list, list, list[list[float | None]]]:
    """(row key, column key or None, row values, column values, cells): the best completed metric per pair of the
    first two grid keys (the best over any further keys)."""
    keys = list(doc["grid"])
    rk, ck = keys[0], (keys[1] if len(keys) > 1 else None)
    rv, cv = doc["grid"][rk], (doc["grid"][ck] if ck else [None])
    pick = max if doc["direction"] == "maximize" else min
    cells: list[list[float | None]] = [[None] * len(cv) for _ in rv]
    for t in doc["trials"]:
        if t["state"] != "COMPLETE" or t["value"] is None:
            continue
        try:
            i, j = rv.index(t["params"].get(rk)), (cv.index(t["params"].get(ck)) if ck else 0)
        except ValueError:
            continue
        cells[i][j] = t["value"] if cells[i][j] is None else pick(cells[i][j], t["value"])
    return rk, ck, rv, cv, cells


def sweep_section(sweep_dir: Path, out: Path) -> list[str]:
    """Write `heatmap-<sweep>.{csv,png}` into `out` and return the report's markdown lines for the sweep."""
    doc = json.loads((Path(sweep_dir) / "sweep.json").read_text())
    rk, ck, rv, cv, cells = heat_grid(doc)
    name = Path(sweep_dir).name
    stem = f"sweep_heatmap-{name}"
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow([f"{rk} \\ {ck}" if ck else rk, *(cv if ck else [doc["metric"]])])
    for v, row in zip(rv, cells):
        w.writerow([v, *("" if c is None else c for c in row)])
    write_text(out / f"{stem}.csv", buf.getvalue())
    files = [f"{stem}.csv"]
    plt = pyplot()
    if plt is not None:
        import numpy as np

        values = np.array([[np.nan if c is None else c for c in row] for row in cells], dtype=float)
        fig, ax = plt.subplots(figsize=(1.6 + 1.1 * len(cv), 1.2 + 0.6 * len(rv)))
        im = ax.imshow(values, cmap="viridis" if doc["direction"] == "maximize" else "viridis_r", aspect="auto")
        ax.set_xticks(range(len(cv)), [str(c) for c in cv] if ck else [""])
        ax.set_yticks(range(len(rv)), [str(r) for r in rv])
        ax.set(xlabel=ck or "", ylabel=rk, title=f"{name}: best {doc['metric']}")
        mid = np.nanmean([np.nanmin(values), np.nanmax(values)]) if np.isfinite(values).any() else 0.0
        for i, row in enumerate(cells):
            for j, c in enumerate(row):  # dark text on the bright half of viridis
                bright = c is not None and (c > mid) == (doc["direction"] == "maximize")
                ax.text(j, i, "n/a" if c is None else f"{c:.3g}", ha="center", va="center", fontsize=8,
                        color="black" if bright else "white")
        fig.colorbar(im, ax=ax)
        fig.tight_layout()
        with atomic_path(out / f"{stem}.png") as tmp:
            fig.savefig(tmp, dpi=110, format="png")
        plt.close(fig)
        files.append(f"{stem}.png")
    head = [f"{rk} \\ {ck}" if ck else rk, *([str(c) for c in cv] if ck else [doc["metric"]])]
    rows = [[str(v), *(cell(c, "{:.4g}") for c in row)] for v, row in zip(rv, cells)]
    best = doc.get("best")
    final = doc.get("final")
    md = [f"## Sweep {doc['study']} ({name})", "",
          f"Best {doc['metric']} per grid cell (completed trials; n/a: pruned, failed or not run) — "
          + " · ".join(f"[{f}]({f})" for f in files), "", markdown_table(head, rows), ""]
    line = (f"Best trial: {best['number']} ({_params_text(best['params'])}), {doc['metric']} {best['value']:.4g}, "
            f"run `{best['run_dir']}`" if best else "Best trial: none completed")
    if final:
        line += f"; final run (its configuration on train+val) test top-1 {cell(final['test_top1'], '{:.2f}')}"
    md.append(line)
    md += ["", "Trials: " + ", ".join(f"{v} {k.lower()}" for k, v in doc["counts"].items()), ""]
    md += [f"![{f}]({f})" for f in files if f.endswith(".png")]
    return md
