"""The `edgevp` command line: a thin layer over the Python API.

Exit codes: 0 ok · 1 unexpected error · 2 usage/config error · 3 verification failed · 4 missing dependency,
hardware or offline asset · 5 dataset missing/empty/unreadable · 6 incompatible run or checkpoint ·
7 training diverged · 130 interrupted (resumable).
"""
from __future__ import annotations

import functools
import hashlib
import sys
import traceback
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer

from .errors import EXIT_CODES, EXIT_FAILURE, EdgevpError

EPILOG = "Exit codes: " + " · ".join(f"{k} {v}" for k, v in EXIT_CODES.items())
app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_show_locals=False,
                  rich_markup_mode="markdown", epilog=EPILOG,
                  help="Visual prompts for frozen timm backbones: train, condense, export and profile for edge GPUs.")
_state = {"verbose": False, "quiet": False}


def _fail(msg: str, code: int) -> None:
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def handle_errors(fn: Callable) -> Callable:
    """One clear line and a documented exit code for every failure; the traceback only with -v."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except EdgevpError as e:
            if _state["verbose"]:
                traceback.print_exc()
            _fail(e.line(), e.exit_code)
        except KeyboardInterrupt:
            _fail("interrupted", 130)
        except Exception as e:  # an internal error: keep it to one line unless asked
            if _state["verbose"]:
                traceback.print_exc()
            _fail(f"{type(e).__name__}: {e} (rerun with -v for the traceback)", EXIT_FAILURE)

    return wrapper


def _version(value: bool) -> None:
    if value:
        from . import __version__

        typer.echo(f"edgevp {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    verbose: Annotated[bool, typer.Option("-v", "--verbose", help="show tracebacks and debug output")] = False,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="only errors and final results")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="print the version")]
    = False,
) -> None:
    _state.update(verbose=verbose, quiet=quiet)


Sets = Annotated[list[str], typer.Option("-s", "--set", metavar="KEY=VALUE",
                                         help="override a recipe key (repeatable), e.g. -s train.lr=0.01")]


@app.command(epilog="Examples: `edgevp train recipes/dinov2_fmnist/vpt_deep.yaml -s train.epochs=2` · "
                    "`edgevp train --resume runs/my-run` · `edgevp train recipes/tiny/lorvp.yaml --print-config`")
@handle_errors
def train(
    recipe: Annotated[Optional[Path], typer.Argument(help="YAML recipe (see recipes/)")] = None,
    sets: Sets = [],  # noqa: B006 (typer reads the default)
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="run directory (default: runs/<derived name>)")]
    = None,
    resume: Annotated[Optional[Path], typer.Option(help="continue an interrupted run directory")] = None,
    print_config: Annotated[bool, typer.Option("--print-config", help="print the resolved config and exit")] = False,
) -> None:
    """Train a prompt method (+ head) on a frozen backbone from a YAML recipe."""
    from .config import build_run_config, load_yaml, run_config_to_yaml
    from .console import Reporter
    from .train import fit

    if resume is None and recipe is None:
        _fail("give a RECIPE or --resume RUN_DIR", 2)
    if resume is not None and (recipe is not None or sets):
        _fail("--resume takes the run's own config; drop RECIPE and -s", 2)
    cfg, sha = None, None
    if recipe is not None:
        cfg = build_run_config(load_yaml(recipe), sets)
        sha = hashlib.sha256(recipe.read_bytes()).hexdigest()
        if print_config:
            typer.echo(run_config_to_yaml(cfg), nl=False)
            return
    result = fit(cfg, out=out, resume=resume, command=sys.argv, recipe_sha256=sha,
                 reporter=Reporter(quiet=_state["quiet"]))
    test = "n/a" if result.test_top1 is None else f"{result.test_top1:.2f}"
    typer.echo(f"done: best val top-1 {result.best_val_top1:.2f} (epoch {result.best_epoch + 1}), test top-1 {test}, "
               f"{result.train_seconds:.1f}s -> {result.run_dir}")


@app.command("list")
@handle_errors
def list_(
    what: Annotated[str, typer.Argument(help="methods | models | datasets | exit-codes")] = "methods",
    pattern: Annotated[str, typer.Option(help="wildcard filter for models")] = "vit_*",
) -> None:
    """List prompt methods, timm models, datasets or exit codes."""
    if what == "methods":
        from .registry import get_method, list_methods

        for name in list_methods():
            cls = get_method(name)
            doc = (cls.__doc__ or "").strip().splitlines()[0]
            typer.echo(f"{name:8s} {'ViT only' if cls.needs_vit else 'any model':9s}  {doc}")
    elif what == "models":
        import timm

        from .weights import OFFLINE

        for name in timm.list_models(pattern):
            typer.echo(name + ("  (offline weights)" if name in OFFLINE else ""))
    elif what == "datasets":
        from .data import BUILTIN

        for name in [*BUILTIN, "folder"]:
            typer.echo(name)
    elif what == "exit-codes":
        for code, text in EXIT_CODES.items():
            typer.echo(f"{code:4d}  {text}")
    else:
        _fail(f"cannot list '{what}'; choose methods, models, datasets or exit-codes", 2)


@app.command(epilog="Example: `edgevp demo --limit-train 600 --epochs 3`")
@handle_errors
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="directory for the demo's runs")] = Path("runs/demo"),
    methods: Annotated[str, typer.Option(help="comma-separated recipes from recipes/dinov2_fmnist/")]
    = "linear,lorvp,vpt_deep",
    sets: Sets = [],  # noqa: B006
) -> None:
    """The main job: train the linear probe, LoR-VP and VPT-deep on Fashion-MNIST (offline DINOv2) and compare."""
    from .demo import run_demo

    run_demo(out, [m.strip() for m in methods.split(",") if m.strip()], sets, quiet=_state["quiet"])


def main() -> None:
    app()
