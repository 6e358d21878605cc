"""Plain tables (markdown) and files for profile results."""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from ..io import write_json, write_text

COLUMNS = [("variant", "variant", "{}"), ("batch", "batch", "{}"), ("p50_ms", "p50 ms", "{:.2f}"),
           ("p90_ms", "p90 ms", "{:.2f}"), ("p99_ms", "p99 ms", "{:.2f}"), ("mean_ms", "mean ms", "{:.2f}"),
           ("std_ms", "std ms", "{:.2f}"), ("throughput", "img/s", "{:.1f}"), ("ratio_p50", "p50 ratio", "{:.3f}"),
           ("ratio_p50_rounds", "ratio per round", "{:.3f}–{:.3f}"),
           ("macs", "GMACs", "{:.4f}"), ("ratio_macs", "MAC ratio", "{:.3f}"), ("params", "params", "{:,}"),
           ("bytes", "size MB", "{:.2f}"), ("peak_rss_mib", "peak RSS MiB", "{:.0f}")]


def _cell(row: dict, key: str, fmt: str) -> str:
    v = row.get(key)
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if key == "macs":
        v = v / 1e9
    if key == "bytes":
        v = v / 2**20
    if key == "ratio_p50_rounds":
        return fmt.format(min(v), max(v)) if v else "n/a"
    return fmt.format(v)


def markdown(rows: list[dict]) -> str:
    head = "| " + " | ".join(h for _, h, _ in COLUMNS) + " |"
    sep = "|" + "|".join("---" if k == "variant" else "---:" for k, _, _ in COLUMNS) + "|"
    body = ["| " + " | ".join(_cell(r, k, f) for k, _, f in COLUMNS) + " |" for r in rows]
    return "\n".join([head, sep, *body])


def write_results(out_dir: Path, result: dict, stem: str = "profile") -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / f"{stem}.json", result)
    buf = io.StringIO()
    keys = [k for k, _, _ in COLUMNS]
    w = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore")
    w.writeheader()
    for r in result["rows"]:
        w.writerow({**r, "ratio_p50_rounds": " ".join(f"{x:.4f}" for x in r.get("ratio_p50_rounds") or [])})
    write_text(out_dir / f"{stem}.csv", buf.getvalue())
    write_text(out_dir / f"{stem}.md", markdown(result["rows"]) + "\n")
    return [out_dir / f"{stem}.{e}" for e in ("json", "csv", "md")]
