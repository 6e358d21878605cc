"""Markdown tables: the one renderer behind the profile, report and demo tables."""
from __future__ import annotations

import math
from typing import Any, Sequence

_RULES = {"l": "---", "r": "---:", "c": ":---:"}


def cell(value: Any, fmt: str = "{}") -> str:
    """`value` through `fmt` (a list or tuple fills several fields); "n/a" for None and NaN."""
    if value is None or isinstance(value, float) and math.isnan(value):
        return "n/a"
    return fmt.format(*value) if isinstance(value, (list, tuple)) else fmt.format(value)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]], align: str | None = None) -> str:
    """A markdown table; `align` has one letter per column: l (the default), r or c."""
    align = align or "l" * len(headers)
    if len(align) != len(headers):
        raise ValueError(f"{len(headers)} columns but alignment {align!r}")
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(_RULES[a] for a in align) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)
