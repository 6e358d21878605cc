"""A broken device-tool rule, as the conformance checks report it (torch-free)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Finding:
    """One broken rule: its id, how bad, where (node, key or option), what to do, and where the tool enforces it."""

    rule: str
    severity: Literal["error", "warning"]
    where: str
    message: str
    source: str

    def __str__(self) -> str:
        return f"{self.severity}: [{self.rule}] {self.where}: {self.message} ({self.source})"


def errors(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.severity == "error"]
