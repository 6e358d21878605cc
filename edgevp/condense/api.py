"""`edgevp.condense(run, out, opts)`: the algorithm follows the options' type (PCOptions: Prompt Condensation,
E2VPTPruneOptions: E²VPT pruning); the output directory defaults to RUN-<method> beside the run. Also the CLI's text
forms (`5%`, `30,50`) and the one-line summary of a condensation report. Importing it imports no torch."""
from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError

METHODS = ("pc", "e2vpt")


def parse_fraction(text: str | None, name: str) -> float | None:
    """'0.3' -> 0.3, '5%' -> 0.05, None -> None; anything else is a ConfigError naming the option."""
    if text is None:
        return None
    try:
        return float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise ConfigError(f"{name} takes a number or a percentage like 5%, got '{text}'") from None


def parse_int_list(text: str, name: str) -> list[int]:
    """'30,50,70' -> [30, 50, 70]."""
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{name} takes comma-separated integers, got '{text}'") from None


def method_of(opts) -> str:
    """'pc' or 'e2vpt', from the options' type."""
    from .e2vpt_prune import E2VPTPruneOptions
    from .pc import PCOptions

    if isinstance(opts, PCOptions):
        return "pc"
    if isinstance(opts, E2VPTPruneOptions):
        return "e2vpt"
    raise ConfigError(f"condense takes PCOptions or E2VPTPruneOptions, got {type(opts).__name__}")


def default_out(run: str | Path, method: str) -> Path:
    """RUN-<method>, beside the source run."""
    run = Path(run)
    return run.parent / f"{run.name}-{method}"


def condense(run: str | Path, out: str | Path | None = None, opts=None, reporter=None) -> dict:
    """Condense the trained run `run` into the new run directory `out` (default RUN-pc / RUN-e2vpt); `opts` is a
    PCOptions (default: keep 30 %) or an E2VPTPruneOptions. Returns the condensation report (condense.json).

    Example:
        >>> condense("runs/vpt", None, PCOptions(keep=0.3))  # -> runs/vpt-pc
    """
    if opts is None:
        from .pc import PCOptions

        opts = PCOptions()
    method = method_of(opts)
    out = Path(out) if out is not None else default_out(run, method)
    if method == "pc":
        from .pc import condense_pc

        return condense_pc(run, out, opts, reporter)
    from .e2vpt_prune import condense_e2vpt

    return condense_e2vpt(run, out, opts, reporter)


def summary_line(report: dict, out: str | Path) -> str:
    """`done: kept K/N prompts, MACs ... -> OUT`: what `edgevp condense` prints."""
    macs, before, after = report["macs"], report["top1_before"]["test"], report["top1_after_finetune"]["test"]
    test_before = float("nan") if before is None else before
    test_after = "n/a" if after is None else f"{after:.2f}"
    return (f"done: kept {report['kept']}/{report['total']} prompts, MACs {macs['before'] / 1e9:.3f}G -> "
            f"{macs['after'] / 1e9:.3f}G (bare {macs['bare'] / 1e9:.3f}G), test top-1 {test_before:.2f} -> "
            f"{test_after} -> {out}")
