"""Options of `edgevp eval` / `edgevp.evaluate` and `edgevp predict` / `edgevp.predict` (torch-free).

The CLI options have the same names; `size`, `mean` and `std` keep the CLI's text form (`224` or `224x320`,
`R,G,B`) and are parsed where the artifact is opened, for a foreign model without edgevp metadata."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import check_options


@dataclass
class EvalOptions:
    data: Path | None = None  # ROOT/<class>/<image> or a test.npz (default: the test.npz beside the artifact)
    task: int | None = None  # a multi-task pack's task id
    out: Path | None = None  # default: <artifact folder>/eval/<artifact>
    batch: int = 32
    limit: int | None = None
    strict: bool = False  # stop at the first unreadable image (exit 5) instead of skipping it
    size: str | None = None
    mean: str | None = None
    std: str | None = None
    labels: Path | None = None  # class names, one per line

    def __post_init__(self):
        check_options(self)


@dataclass
class PredictOptions:
    task: int | None = None
    top_k: int = 5
    batch: int = 32
    strict: bool = False
    size: str | None = None
    mean: str | None = None
    std: str | None = None
    labels: Path | None = None

    def __post_init__(self):
        check_options(self)
