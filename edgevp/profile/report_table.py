"""Plain tables (markdown) and files for profile results."""
from __future__ import annotations

import csv
import io
from pathlib import Path

from ..io import staged_dir, write_text
from ..records import ProfileRecord
from ..tables import cell, markdown_table

COLUMNS = [("variant", "variant", "{}"), ("batch", "batch", "{}"), ("p50_ms", "p50 ms", "{:.2f}"),
           ("p90_ms", "p90 ms", "{:.2f}"), ("p99_ms", "p99 ms", "{:.2f}"), ("mean_ms", "mean ms", "{:.2f}"),
           ("std_ms", "std ms", "{:.2f}"), ("throughput", "img/s", "{:.1f}"), ("ratio_p50", "p50 ratio", "{:.3f}"),
           ("ratio_p50_rounds", "ratio per round", "{:.3f}–{:.3f}"),
           ("macs", "GMACs", "{:.4f}"), ("ratio_macs", "MAC ratio", "{:.3f}"), ("params", "params", "{:,}"),
           ("bytes", "size MB", "{:.2f}"), ("peak_rss_mib", "peak RSS MiB", "{:.0f}")]


SCALE = {"macs": 1e9, "bytes": 2**20}  # shown as GMACs and MB


def _value(row: dict, key: str):
    v = row.get(key)
    if key == "ratio_p50_rounds":  # the spread of the per-round ratios
        return [min(v), max(v)] if v else None
    return v / SCALE[key] if key in SCALE and v is not None else v


def markdown(rows: list[dict]) -> str:
    return markdown_table([h for _, h, _ in COLUMNS], [[cell(_value(r, k), f) for k, _, f in COLUMNS] for r in rows],
                          "".join("l" if k == "variant" else "r" for k, _, _ in COLUMNS))


def write_results(out_dir: Path, result: dict, stem: str = "profile") -> list[Path]:
    """`stem`.json, .csv and .md in `out_dir`, all three or none (a full disk: one line, exit 2, nothing new)."""
    with staged_dir(out_dir) as stage:
        _write_files(stage, result, stem)
    return [out_dir / f"{stem}.{e}" for e in ("json", "csv", "md")]


def _write_files(out_dir: Path, result: dict, stem: str) -> None:
    ProfileRecord.from_json(result, f"{stem}.json").write(out_dir / f"{stem}.json")
    buf = io.StringIO()
    keys = [k for k, _, _ in COLUMNS]
    w = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore")
    w.writeheader()
    for r in result["rows"]:
        w.writerow({**r, "ratio_p50_rounds": " ".join(f"{x:.4f}" for x in r.get("ratio_p50_rounds") or [])})
    write_text(out_dir / f"{stem}.csv", buf.getvalue())
    write_text(out_dir / f"{stem}.md", markdown(result["rows"]) + "\n")
