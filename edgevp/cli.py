"""The `edgevp` command line: a thin layer over the Python API.

Each command parses its arguments, builds the options dataclass of its API function (`edgevp/api.py`: `edgevp.train`,
`edgevp.condense`, ...), calls it and prints the result; `tests/e2e/test_api_cli.py` keeps the options and the dataclasses
equal. Exit codes are the named ones of `edgevp/errors.py` (`edgevp list exit-codes`), carried by its exception classes.
"""
from __future__ import annotations

import functools
import sys
import traceback
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer

from .config import DATASETS  # noqa: F401 (what `edgevp list datasets` prints; torch-free)
from .errors import (EXIT_CODES, EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_MISSING, EXIT_USAGE, ConfigError, EdgevpError,
                     VerificationError)
from .io import DISK_FULL, cannot_write

EPILOG = "Exit codes: " + " · ".join(f"{k} {v}" for k, v in EXIT_CODES.items())
app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_show_locals=False,
                  rich_markup_mode="rich", epilog=EPILOG,  # markdown would eat <placeholders>
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
            result = fn(*args, **kwargs)
            sys.stdout.flush()  # a full disk under a redirected stdout fails here, inside the handlers below
            return result
        except typer.Exit:
            raise
        except EdgevpError as e:
            if _state["verbose"]:
                traceback.print_exc()
            if getattr(e, "echoed_by_main", False):  # a torchrun rank > 0 whose error rank 0 prints
                raise typer.Exit(e.exit_code)
            _fail(e.line(), e.exit_code)
        except KeyboardInterrupt:
            _fail("interrupted", EXIT_INTERRUPTED)
        except ModuleNotFoundError as e:  # a missing optional dependency, named with the install that brings it
            from .optional import install_hint

            if _state["verbose"]:
                traceback.print_exc()
            _fail(f"this command needs '{e.name}', which is not installed ({install_hint(e.name or '?')})", EXIT_MISSING)
        except OSError as e:  # a full disk under a write no library code wraps (stdout): still one sentence
            if e.errno not in DISK_FULL:
                _internal(e)
            if _state["verbose"]:
                traceback.print_exc()
            _fail(cannot_write(e.filename, e).line() if e.filename else
                  f"cannot write the output: {e.strerror} (free space on that disk, or write elsewhere)", EXIT_USAGE)
        except Exception as e:  # an internal error: keep it to one line unless asked
            _internal(e)

    return wrapper


def _internal(e: Exception) -> None:
    """An unexpected error: one line, the traceback only with -v."""
    if _state["verbose"]:
        traceback.print_exc()
    _fail(f"{type(e).__name__}: {e} (rerun with -v for the traceback)", EXIT_FAILURE)


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
    overwrite: Annotated[bool, typer.Option(help="start over in an existing run directory (its files are removed); "
                                                 "a run that failed before its first checkpoint is started over "
                                                 "without it")] = False,
    nproc: Annotated[Optional[int], typer.Option(
        help="data-parallel processes on this machine (runs torchrun; data.batch_size stays the global batch); "
             "for several machines run `torchrun ... -m edgevp train` yourself (docs/scale-out.md)")] = None,
) -> None:
    """Train a prompt method (+ head) on a frozen backbone from a YAML recipe.

    Everything that needs no data (recipe keys and ranges, backbone, weights, method on that backbone, run directory)
    is checked before any image is read.

    Exit codes: 2 a bad recipe or value (train.epochs=0 included), a run directory that cannot be written (a full
    disk: every file stays whole, resume after freeing space) · 4 weights or a GPU missing · 5 dataset missing or
    unreadable, a class folder linked to another · 6 a run directory that exists, a resume on changed data ·
    7 diverged · 8 another process writes the run · 130 interrupted.
    """
    from .api import TrainOptions, resolve_recipe, train_line
    from .api import train as train_run
    from .console import Reporter

    if print_config:
        if recipe is None:
            raise ConfigError("--print-config prints a RECIPE's resolved config; give RECIPE")
        from .config import run_config_to_yaml

        typer.echo(run_config_to_yaml(resolve_recipe(recipe, sets)[0]), nl=False)
        return
    opts = TrainOptions(out=out, resume=resume, overwrite=overwrite, nproc=nproc)
    result = train_run(recipe, opts, sets=sets, reporter=Reporter(quiet=_state["quiet"]), command=sys.argv,
                       rank_flags=["-v"] * _state["verbose"] + ["-q"] * _state["quiet"])
    from . import distributed

    if result is not None and distributed.is_main():  # one "done" line, from rank 0 (torchrun ranks print their own)
        typer.echo(train_line(result))


@app.command(epilog="Examples: `edgevp sweep recipes/vtab1k/vpt_deep.yaml --grid train.lr=0.1,0.05,0.01 --grid "
                    "train.weight_decay=0,1e-4 -o runs/sweep-dtd --final` · the same command on several machines with "
                    "`--storage postgresql://user@host/edgevp` shares one study")
@handle_errors
def sweep(
    recipe: Annotated[Path, typer.Argument(help="YAML recipe (see recipes/)")],
    grid: Annotated[list[str], typer.Option(metavar="KEY=V1,V2", help="a recipe key and its values (repeatable), "
                                                                     "checked like -s, e.g. --grid train.lr=0.1,0.01")]
    = [],  # noqa: B006
    sampler: Annotated[str, typer.Option(help="grid (every point once) | tpe | random (over the grid's values)")]
    = "grid",
    trials: Annotated[Optional[int], typer.Option(help="trials in the study (default: the grid's size; grid: at "
                                                       "most that)")] = None,
    metric: Annotated[str, typer.Option(help="val_top1 (maximised) | val_loss (minimised), the best epoch's")]
    = "val_top1",
    pruner: Annotated[str, typer.Option(help="median (after --pruner-startup trials, not during lr warm-up) | "
                                             "hyperband | none")] = "median",
    pruner_startup: Annotated[int, typer.Option(help="finished trials before the median pruner prunes")] = 5,
    storage: Annotated[Optional[str], typer.Option(help="SQLAlchemy URL of the study (default: "
                                                        "sqlite:///SWEEPDIR/study.db); share one between machines")]
    = None,
    study: Annotated[Optional[str], typer.Option(help="study name (default: from the recipe path, e.g. "
                                                      "vtab1k-vpt_deep)")] = None,
    sets: Sets = [],  # noqa: B006
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="sweep directory (default: runs/sweep-STUDY)")]
    = None,
    final: Annotated[bool, typer.Option("--final", help="then retrain the best trial on train+val into SWEEPDIR/final "
                                                        "and report test top-1")] = False,
    nproc: Annotated[int, typer.Option(help="train each trial with `edgevp train --nproc N` (data-parallel)")] = 1,
    seed: Annotated[int, typer.Option(help="seed of the tpe/random sampler")] = 0,
    heartbeat: Annotated[int, typer.Option(help="seconds between a running trial's heartbeats")] = 30,
    grace: Annotated[Optional[int], typer.Option(help="seconds without a heartbeat before a trial counts as dead "
                                                      "(failed, then queued again); default 2 x --heartbeat")] = None,
) -> None:
    """Hyper-parameter sweep on Optuna: each trial an ordinary run directory under SWEEPDIR/trials, pruning from the
    per-epoch validation metric; several workers (processes or machines) may share one study.

    Exit codes: 2 a grid key or value the recipe schema refuses, a storage URL that cannot be opened, bad options ·
    4 optuna (or the database's driver) missing · 6 the study exists with another grid or recipe.
    """
    from .api import sweep as sweep_run
    from .console import Reporter
    from .sweep import SweepOptions
    from .sweep.summary import done_line

    opts = SweepOptions(grid=list(grid), sampler=sampler, trials=trials, metric=metric, pruner=pruner,
                        pruner_startup=pruner_startup, storage=storage, study=study, seed=seed, nproc=nproc,
                        final=final, heartbeat=heartbeat, grace=grace)
    typer.echo(done_line(sweep_run(recipe, opts, sets, out, Reporter(quiet=_state["quiet"]))))


@app.command(epilog="Examples: `edgevp condense runs/vpt --keep 0.3` · `edgevp condense runs/vpt --max-overhead 5%` · "
                    "`edgevp condense runs/e2vpt --method e2vpt --token-budgets 30,50 --segment-budgets 0,8`")
@handle_errors
def condense(
    run: Annotated[Path, typer.Argument(help="trained run directory (VPT for pc, E²VPT for e2vpt)")],
    method: Annotated[str, typer.Option(help="pc (Prompt Condensation) | e2vpt (token/segment pruning)")] = "pc",
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="new run directory (default: RUN-<method>-…)")]
    = None,
    keep: Annotated[Optional[str], typer.Option(help="pc: fraction of prompts to keep, e.g. 0.3")] = None,
    keep_count: Annotated[Optional[int], typer.Option(help="pc: exact number of prompts to keep")] = None,
    max_overhead: Annotated[Optional[str], typer.Option(
        help="pc: keep as many prompts as fit in this extra-MAC budget over the bare backbone, e.g. 5%")] = None,
    ranking: Annotated[str, typer.Option(help="pc: global | layer | random")] = "global",
    score: Annotated[str, typer.Option(help="abs_batch | abs_mean | signed_mean (e2vpt reference code)")]
    = "abs_batch",
    score_batches: Annotated[Optional[int], typer.Option(help="training batches used for scoring (default all)")]
    = None,
    finetune_epochs: Annotated[Optional[int], typer.Option(help="fine-tune/retrain epochs (default 30% of the "
                                                                "source run's, at least 1)")] = None,
    lr: Annotated[Optional[float], typer.Option(help="fine-tune lr (pc default: 0.1 x the source run's; e2vpt "
                                                      "retrains from init with the source lr)")] = None,
    token_budgets: Annotated[str, typer.Option(help="e2vpt: % of visual tokens to prune, comma-separated")]
    = "30,50,70",
    segment_budgets: Annotated[str, typer.Option(help="e2vpt: segments (of 16) to prune per kept token")] = "0,8",
    grid: Annotated[str, typer.Option(help="e2vpt: 'search' (the budgets above) or 'full' (the paper's 9x8 grid)")]
    = "search",
    rewind: Annotated[str, typer.Option(help="e2vpt: init (retrain from the original initial values, the paper) | "
                                             "random (fresh init, the reference code)")] = "init",
    seed: Annotated[int, typer.Option(help="seed of the random ranking / random rewind")] = 0,
) -> None:
    """Make trained prompts cheaper: keep the most important ones, remove the rest, fine-tune what is left."""
    from .condense.api import (METHODS, condense as condense_run, default_out, parse_fraction, parse_int_list,
                               summary_line)
    from .console import Reporter

    if method not in METHODS:
        raise ConfigError(f"unknown condense method '{method}'; choose pc or e2vpt")
    common = dict(score=score, score_batches=score_batches, finetune_epochs=finetune_epochs, lr=lr, seed=seed)
    if method == "pc":
        from .condense.pc import PCOptions

        opts = PCOptions(keep=parse_fraction(keep, "--keep"), keep_count=keep_count,
                         max_overhead=parse_fraction(max_overhead, "--max-overhead"), ranking=ranking, **common)
    else:
        from .condense.e2vpt_prune import E2VPTPruneOptions

        opts = E2VPTPruneOptions(token_budgets=parse_int_list(token_budgets, "--token-budgets"),
                                 segment_budgets=parse_int_list(segment_budgets, "--segment-budgets"), grid=grid,
                                 rewind=rewind, **common)
    out = out or default_out(run, method)
    report = condense_run(run, out, opts, Reporter(quiet=_state["quiet"]))
    from . import distributed

    if distributed.is_main():  # one "done" line, from rank 0
        typer.echo(summary_line(report, out))


@app.command(epilog="Examples: `edgevp profile runs/x/export/model.onnx --against bare.onnx` · "
                    "`edgevp profile model.engine --backend trt --batch 1 --batch 8` · `edgevp profile a.onnx --json`")
@handle_errors
def profile(
    target: Annotated[Path, typer.Argument(help="an artifact (.onnx, .engine) or a run directory with exports")],
    against: Annotated[list[Path], typer.Option(help="artifacts to compare with (repeatable; NAME=PATH labels one)")] = [],  # noqa: B006
    backend: Annotated[str, typer.Option(help="ort | trt (TensorRT runtime) | trtexec | torch (a run directory: "
                                              "the run vs its bare backbone and uncondensed source)")] = "ort",
    device: Annotated[str, typer.Option(help="ort execution provider: cpu | cuda | tensorrt; torch: cpu | cuda")]
    = "cpu",
    compile: Annotated[bool, typer.Option("--compile", help="--backend torch --device cuda: time torch.compile "
                                                            "instead of eager")] = False,
    batch: Annotated[list[int], typer.Option(help="batch size (repeatable)")] = [1],  # noqa: B006
    warmup: Annotated[int, typer.Option(help="untimed calls before timing")] = 10,
    iters: Annotated[int, typer.Option(help="timed calls per round")] = 100,
    rounds: Annotated[int, typer.Option(help="interleaved rounds, each variant in a fresh process")] = 3,
    threads: Annotated[Optional[int], typer.Option(help="CPU threads for ort (default: all cores)")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="where profile.{json,csv,md} go")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print the result as JSON on stdout")] = False,
    task: Annotated[Optional[str], typer.Option(
        help="a multi-task pack (edgevp pack): the task to time, or 'mixed' (the batch cycles over the tasks; the "
             "default)")] = None,
) -> None:
    """Latency (p50/p90/p99, throughput), MACs, parameters and size, as ratios to the first variant."""
    import json as _json

    from .api import profile as profile_run
    from .profile.options import ProfileOptions

    opts = ProfileOptions(against=list(against), backend=backend, device=device, compile=compile, batch=list(batch),
                          warmup=warmup, iters=iters, rounds=rounds, threads=threads, out=out, task=task)
    result, files = profile_run(target, opts)
    if json_out:
        typer.echo(_json.dumps(result, default=str))
        return
    from .profile.report_table import markdown

    typer.echo(markdown(result["rows"]))
    typer.echo(f"reference: {result['reference']}; {result['method']}; files: {files[0].parent}")


@app.command(epilog="Example: `edgevp report runs/demo/*/* --out runs/report`")
@handle_errors
def report(
    runs: Annotated[list[Path], typer.Argument(help="run directories to compare, and `edgevp pack` directories")],
    out: Annotated[Path, typer.Option("--out", "-o", help="report directory")] = Path("runs/report"),
    profile: Annotated[list[Path], typer.Option(
        help="profile.json taken elsewhere (e.g. on the device), matched to runs by artifact sha256; its latency "
             "comes first (repeatable)")] = [],  # noqa: B006
) -> None:
    """A summary across runs: table, accuracy-vs-cost Pareto plot, keep heatmaps, training curves, markdown; a pack
    directory gets one row per task plus its shared cost.

    Exit codes: 2 an output directory that cannot be written (no permission, a full disk: no report file is left
    half-written) · 6 not a run, pack or sweep directory, an unreadable profile.json.
    """
    from .api import ReportOptions, report as report_run
    from .report import table

    md, rows = report_run(runs, ReportOptions(out=out, profile=list(profile)))
    if rows:
        typer.echo(table(rows))
    typer.echo(f"report: {md}")


@app.command("list")
@handle_errors
def list_(
    what: Annotated[str, typer.Argument(help="methods | targets | runtimes | models | datasets | exit-codes")]
    = "methods",
    pattern: Annotated[str, typer.Option(help="wildcard filter for models")] = "vit_*",
) -> None:
    """List prompt methods, export targets, device runtimes, timm models, datasets or exit codes."""
    if what == "methods":
        from .registry import method_specs

        for spec in method_specs():
            cfg = spec.config_cls
            kinds = "/".join(getattr(cfg, "backbones", ("vit",))).replace("vit", "ViT").replace("swin", "Swin")
            typer.echo(f"{spec.name:8s} {kinds + ' only' if cfg.needs_vit else 'any model':13s}  {spec.summary}")
    elif what == "targets":
        from .export.targets import get_target, list_targets

        for name in list_targets():
            t = get_target(name)
            typer.echo(f"{name:9s} opset {'/'.join(map(str, t.opsets)):6s} {t.help}")
    elif what == "runtimes":
        from .device.artifact import runtimes

        for r in runtimes():
            typer.echo(f"{r.name:12s} {' '.join(r.suffixes)}")
    elif what == "models":
        import timm

        from .weights import OFFLINE

        for name in timm.list_models(pattern):
            typer.echo(name + ("  (offline weights)" if name in OFFLINE else ""))
    elif what == "datasets":
        for name in DATASETS:
            typer.echo(name)
    elif what == "exit-codes":
        for code, text in EXIT_CODES.items():
            typer.echo(f"{code:4d}  {text}")
    else:
        raise ConfigError(f"cannot list '{what}'; choose methods, targets, runtimes, models, datasets or exit-codes")


@app.command(epilog="Example: `edgevp demo -s data.limit_train=600 -s train.epochs=3` (a shorter demo)")
@handle_errors
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="directory for the demo's runs")] = Path("runs/demo"),
    methods: Annotated[str, typer.Option(help="comma-separated recipes from recipes/dinov2_fmnist/")]
    = "linear,lorvp,vpt_deep",
    sets: Sets = [],  # noqa: B006
    condense: Annotated[bool, typer.Option(help="also condense VPT-deep with Prompt Condensation (keep 30%)")] = True,
    pack: Annotated[bool, typer.Option(help="also train a second task (Fashion-MNIST super-classes) and pack every run "
                                            "into one multi-task graph")] = True,
) -> None:
    """The main job: train the linear probe, LoR-VP and VPT-deep on Fashion-MNIST (offline DINOv2), condense
    VPT-deep, export every run (prompts folded, parity-gated), profile the deployed forms and write one report."""
    from .api import DemoOptions, demo as demo_run

    demo_run(DemoOptions(out=out, methods=[m.strip() for m in methods.split(",") if m.strip()], condense=condense,
                         pack=pack), sets, quiet=_state["quiet"])


PLATFORM_HELP = ("the TensorRT platforms the artifact must import on: all (every supported one) | jp5.1 (TensorRT 8.5) | "
                 "jp6.0 (8.6) | jp6.1, jp6.2 (10.3) | trt10 (desktop 10.x) | a TensorRT version")
OPSET_HELP = "ONNX opset, 17 or 18 (default: the newest every --platform imports: 17 for all, JetPack 5.1 and 6.0)"


MAX_DROP_HELP = ("allowed val top-1 drop vs fp32 (points); fails only when the drop's lower bound at "
                 "--gate-confidence exceeds it")
MIN_AGREEMENT_HELP = ("top-1 agreement floor vs fp32 (0..1); fails only when the agreement's upper bound at "
                      "--gate-confidence is below it")
CONFIDENCE_HELP = "confidence of the precision gate's exact one-sided bounds (0.5..1)"


@app.command("export", epilog="Examples: `edgevp export runs/vpt` · `edgevp export runs/vpt --target ort-fp16` · "
                              "`edgevp export runs/lorvp --target trt-fp16 --opset 17` (without TensorRT: writes the "
                              "device bundle, exit 4)")
@handle_errors
def export_(
    run: Annotated[Path, typer.Argument(help="trained (or condensed) run directory")],
    target: Annotated[str, typer.Option(help="onnx | ort-fp16 | ort-int8 | trt-fp32 | trt-fp16 | trt-int8 "
                                             "(the export target registry)")] = "onnx",
    platform: Annotated[str, typer.Option(help=PLATFORM_HELP)] = "all",
    opset: Annotated[Optional[int], typer.Option(help=OPSET_HELP)] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="output directory (default: RUN/export)")]
    = None,
    dynamic_batch: Annotated[bool, typer.Option("--dynamic-batch/--static", help="free batch axis in the ONNX")]
    = True,
    include_preprocess: Annotated[bool, typer.Option(
        "--include-preprocess/--no-preprocess", help="the artifact takes [0,1] images (normalisation inside) "
                                                     "instead of normalised ones")] = True,
    exporter: Annotated[str, typer.Option(help="dynamo | legacy (TorchScript)")] = "dynamo",
    simplify: Annotated[str, typer.Option(help="auto | onnxsim | onnxslim | none")] = "auto",
    checkpoint: Annotated[str, typer.Option(help="best | last")] = "best",
    atol: Annotated[float, typer.Option(help="parity gate: max abs logit difference ORT vs PyTorch")] = 1e-4,
    max_drop: Annotated[float, typer.Option(help="fp16/int8/TensorRT gate: " + MAX_DROP_HELP)] = 2.0,
    min_agreement: Annotated[float, typer.Option(help="fp16/int8/TensorRT gate: " + MIN_AGREEMENT_HELP)] = 0.9,
    gate_confidence: Annotated[float, typer.Option(help=CONFIDENCE_HELP)] = 0.95,
    int8_mode: Annotated[str, typer.Option(help="ort-int8: static (QDQ, calibrated) | dynamic")] = "static",
    calib_method: Annotated[str, typer.Option(help="static int8 activation ranges: minmax | percentile | entropy")]
    = "minmax",
    int8_ops: Annotated[str, typer.Option(help="static int8: matmul (MatMul/Gemm/Conv with a constant weight: the "
                                               "linear layers, attention products stay float) | all (ONNX Runtime's "
                                               "op set: also norms, Softmax, Add; less accurate on ViTs)")] = "matmul",
    gate_images: Annotated[int, typer.Option(help="images for the parity and precision gates: validation images "
                                                  "(at most the split), topped up with training images for the "
                                                  "agreement")] = 256,
    trt_dynamic_batch: Annotated[bool, typer.Option(help="TensorRT: a dynamic batch profile (1..--trt-max-batch) "
                                                         "instead of a fixed batch-1 engine")] = False,
    trt_max_batch: Annotated[int, typer.Option(help="TensorRT: largest batch of the dynamic profile")] = 8,
    with_references: Annotated[bool, typer.Option(
        help="onnx: also export the bare backbone (bare.onnx) and the unfolded prompted model (unfolded.onnx), the "
             "references `edgevp profile RUN` compares with")] = False,
    test_images: Annotated[int, typer.Option(
        help="test.npz: at most this many test images (uint8, resized as the artifact takes them) for `edgevp eval` "
             "on the device; 0 writes none")] = 500,
) -> None:
    """Fold the prompts into constants and export deployable artifacts, gated on parity with the PyTorch model.

    Exit codes: 3 the artifact failed its parity/accuracy gate (kept with a `.failed` suffix) · 4 TensorRT or a
    GPU is missing (the device bundle is written) · 2 bad option or unwritable output · 6 incomplete run directory.
    """
    from .api import export as export_run, export_line
    from .export.pipeline import ExportOptions

    opts = ExportOptions(
        target=target, platform=platform, opset=opset, out=out, dynamic_batch=dynamic_batch,
        include_preprocess=include_preprocess, exporter=exporter, simplify=simplify, checkpoint=checkpoint, atol=atol,
        max_drop=max_drop, min_agreement=min_agreement, gate_confidence=gate_confidence, int8_mode=int8_mode,
        calib_method=calib_method, int8_ops=int8_ops, gate_images=gate_images, trt_dynamic_batch=trt_dynamic_batch,
        trt_max_batch=trt_max_batch, with_references=with_references, test_images=test_images)
    typer.echo(export_line(export_run(run, opts), run, opts))


@app.command(epilog="Examples: `edgevp pack runs/a runs/b -o runs/pack` · `edgevp pack runs/a runs/b -o runs/pack "
                    "--tables-as-inputs --max-tasks 64 --kv-capacity 10` · `edgevp pack --add runs/c runs/pack` · "
                    "`edgevp pack --remove 1 runs/pack` · `edgevp pack runs/a runs/b -o runs/pack --target trt-fp16`")
@handle_errors
def pack(
    runs: Annotated[Optional[list[Path]], typer.Argument(
        help="trained (or condensed) run directories on the same backbone; with --add: RUN... PACK, with --remove: "
             "TASK... PACK (task ids or run names)")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="output directory of the pack (required)")] = None,
    target: Annotated[str, typer.Option(help="onnx | ort-fp16 | trt-fp32 | trt-fp16 (a device bundle)")] = "onnx",
    tables_as_inputs: Annotated[bool, typer.Option(
        help="the task tables become graph inputs read from tables.npz: add or update a task without a rebuild")]
    = False,
    include_preprocess: Annotated[bool, typer.Option("--include-preprocess/--no-preprocess",
                                                     help="the graph takes [0,1] images (normalisation inside)")]
    = True,
    platform: Annotated[str, typer.Option(help=PLATFORM_HELP)] = "all",
    opset: Annotated[Optional[int], typer.Option(help=OPSET_HELP)] = None,
    checkpoint: Annotated[str, typer.Option(help="best | last")] = "best",
    gate_images: Annotated[int, typer.Option(help="images per task for the gates: validation images, topped up "
                                                  "with training images")] = 32,
    atol: Annotated[float, typer.Option(help="max abs logit difference, pack vs each run's own export")] = 1e-4,
    max_drop: Annotated[float, typer.Option(help="fp16, per task: " + MAX_DROP_HELP)] = 2.0,
    min_agreement: Annotated[float, typer.Option(help="fp16, per task: " + MIN_AGREEMENT_HELP)] = 0.9,
    gate_confidence: Annotated[float, typer.Option(help=CONFIDENCE_HELP)] = 0.95,
    trt_max_batch: Annotated[int, typer.Option(help="TensorRT: largest batch of the dynamic profile")] = 8,
    max_tasks: Annotated[int, typer.Option(help="with --tables-as-inputs: task ids the pack reserves for --add "
                                                "(retired ids count; TensorRT: the task axis of the profile)")] = 16,
    kv_capacity: Annotated[int, typer.Option(
        help="with --tables-as-inputs: key/value columns every block reserves, so prompt tasks (up to this many "
             "prompts per layer) can be added later")] = 0,
    table_dtype: Annotated[str, typer.Option(
        help="float32 | float16: store each task's prompts and head in fp16 (half the table bytes); each task is "
             "then gated against its own export with the precision gate (--min-agreement, --max-drop)")] = "float32",
    max_classes: Annotated[int, typer.Option(
        help="with --tables-as-inputs: head columns reserved for tasks added later (0: the widest task's)")] = 0,
    update_tables: Annotated[bool, typer.Option(
        help="keep the graph already in --out (made with --tables-as-inputs) and write new tables for RUNS: add or "
             "update tasks without a rebuild")] = False,
    add: Annotated[bool, typer.Option(help="add RUN... as new tasks of the pack PACK (the last argument, or --out) "
                                           "made with --tables-as-inputs: same graph, each gated, new ids")] = False,
    remove: Annotated[bool, typer.Option(help="remove tasks TASK... (ids or run names) from the pack PACK (the last "
                                              "argument, or --out): their ids are retired, never reused")] = False,
) -> None:
    """One graph for many tasks: pack runs that share a backbone; every sample picks its task (`task` input).

    Exit codes: 2 no runs, a run twice, runs on different backbones/inputs, a method with no task form; --add: a
    foreign run, a run already in the pack, beyond the pack's reserve (the line names the rebuild); --remove: an
    unknown or retired task · 3 the pack differs from a run's own export (kept as `.failed`), or an edit would change
    another task · 6 not a run directory, not a pack with tables as inputs · 8 another edgevp process writes the pack.
    """
    from .api import pack_lines
    from .multitask.edit import edit_line
    from .multitask.pipeline import PackOptions, pack as pack_runs

    if (add or remove) and out is None and len(runs or []) >= 2:  # `pack --add RUN... PACK`: the last is the pack
        runs, out = runs[:-1], runs[-1]
    if out is None:
        raise ConfigError("give the pack's output directory: --out DIR")

    opts = PackOptions(target=target, tables_as_inputs=tables_as_inputs, include_preprocess=include_preprocess,
                       platform=platform, opset=opset, checkpoint=checkpoint, gate_images=gate_images, atol=atol, max_drop=max_drop,
                       min_agreement=min_agreement, gate_confidence=gate_confidence,
                       trt_max_batch=trt_max_batch, max_tasks=max_tasks, kv_capacity=kv_capacity,
                       table_dtype=table_dtype,
                       max_classes=max_classes, update_tables=update_tables, add=add, remove=remove)
    side = pack_runs(runs or [], out, opts)
    for line in [edit_line(side, out)] if add or remove else pack_lines(side, out, opts):
        typer.echo(line)


_FOREIGN = "a model without edgevp metadata (a foreign ONNX): "
DeviceTask = Annotated[Optional[int], typer.Option(help="a multi-task pack (edgevp pack): the task id (see tasks.json)")]
DeviceSize = Annotated[Optional[str], typer.Option(help=_FOREIGN + "input size S or HxW")]
DeviceMean = Annotated[Optional[str], typer.Option(help=_FOREIGN + "normalisation mean R,G,B")]
DeviceStd = Annotated[Optional[str], typer.Option(help=_FOREIGN + "normalisation std R,G,B")]
DeviceLabels = Annotated[Optional[Path], typer.Option(help="class names, one per line (for a model without them)")]


@app.command("eval", epilog="Examples: `edgevp eval runs/vpt/export/model.onnx` (the export's test.npz) · "
                            "`edgevp eval trt-fp16/model.trt10.3-sm87-fp16.engine --data photos/` · "
                            "`edgevp eval runs/pack/model.onnx --task 1 --data fmnist-groups/` · "
                            "`edgevp eval other.onnx --data photos/ --size 224 --mean 0.485,0.456,0.406 "
                            "--std 0.229,0.224,0.225 --labels labels.txt`")
@handle_errors
def eval_(
    artifact: Annotated[Path, typer.Argument(help="an .onnx (fp32/fp16/int8, a pack), a TensorRT .engine, or an "
                                                  "export / bundle directory")],
    data: Annotated[Optional[Path], typer.Option(help="image folder ROOT/<class>/<image>, or a test.npz (default: "
                                                      "the test.npz exported beside the artifact)")] = None,
    task: DeviceTask = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="where eval.json/eval.csv/confusion.* go "
                                                                    "(default: <artifact folder>/eval/<artifact>)")]
    = None,
    batch: Annotated[int, typer.Option(help="images per inference call (an engine's own batch caps it)")] = 32,
    limit: Annotated[Optional[int], typer.Option(help="evaluate only the first N images")] = None,
    strict: Annotated[bool, typer.Option("--strict", help="stop at the first unreadable image (exit 5) instead of "
                                                          "skipping it with a warning")] = False,
    size: DeviceSize = None,
    mean: DeviceMean = None,
    std: DeviceStd = None,
    labels: DeviceLabels = None,
    json_out: Annotated[bool, typer.Option("--json", help="print eval.json on stdout")] = False,
) -> None:
    """Accuracy of a deployed artifact on the device (no PyTorch): top-1/top-5, per-class accuracy and a confusion
    matrix, compared with the run's PyTorch test top-1 when the run is found (ARTIFACT under RUN/export).

    Preprocessing comes from the artifact's own metadata (input size, resize policy, normalisation inside or not).
    The dataset's classes must be classes of the artifact (matched by name). An image that cannot be decoded, or
    has more than 178,956,970 pixels (Pillow's decompression-bomb limit), is skipped with a warning.

    Exit codes: 2 a foreign model without --size/--mean/--std, --task out of range or on a single-task model, an
    output that cannot be written (no permission, a full disk: nothing is left half-written) · 4 ONNX Runtime /
    TensorRT missing · 5 dataset missing or unreadable, classes that do not match, an unreadable image with
    --strict · 6 artifact missing or unreadable (a truncated test.npz), an engine built for another TensorRT / GPU
    (rebuild it with the bundle's build_engine.sh).
    """
    import json as _json

    from .api import evaluate
    from .device.evaluate import summary_line
    from .device.options import EvalOptions

    opts = EvalOptions(data=data, task=task, out=out, batch=batch, limit=limit, strict=strict, size=size, mean=mean,
                       std=std, labels=labels)
    doc, where = evaluate(artifact, opts, warn=lambda m: typer.echo(m, err=True))
    typer.echo(_json.dumps(doc, indent=1) if json_out else summary_line(doc, where))


@app.command(epilog="Examples: `edgevp predict runs/vpt/export/model.onnx photo.jpg` · `edgevp predict "
                    "trt-fp16/ photos/ --batch 8 --csv > predictions.csv` · `edgevp predict model.onnx photos/ --json`")
@handle_errors
def predict(
    artifact: Annotated[Path, typer.Argument(help="an .onnx (fp32/fp16/int8, a pack), a TensorRT .engine, or an "
                                                  "export / bundle directory")],
    images: Annotated[list[Path], typer.Argument(help="image files and/or folders (searched recursively)")],
    top_k: Annotated[int, typer.Option("--top-k", "-k", help="labels per image")] = 5,
    batch: Annotated[int, typer.Option(help="images per inference call (an engine's own batch caps it)")] = 32,
    task: DeviceTask = None,
    json_out: Annotated[bool, typer.Option("--json", help="print JSON (predictions + summary)")] = False,
    csv_out: Annotated[bool, typer.Option("--csv", help="print CSV: image,rank,label,index,probability")] = False,
    strict: Annotated[bool, typer.Option("--strict", help="stop at the first image that cannot be decoded (exit 5)")]
    = False,
    size: DeviceSize = None,
    mean: DeviceMean = None,
    std: DeviceStd = None,
    labels: DeviceLabels = None,
) -> None:
    """Top-k labels with softmax probabilities per image, on the device (no PyTorch).

    An image that cannot be decoded, or has more than 178,956,970 pixels (Pillow's decompression-bomb limit), is
    skipped: one warning line on stderr, counted in the summary (exit 0); with --strict the first one stops the
    command with exit 5.

    Exit codes: 2 bad option, --task out of range, a foreign model without --size/--mean/--std, an output that
    cannot be written (a full disk) · 4 ONNX Runtime / TensorRT missing · 5 an image path that does not exist, no
    images, an undecodable image with --strict · 6 artifact missing or unreadable, an engine built for another
    TensorRT / GPU.
    """
    from .api import predict as predict_run
    from .device import predict as P
    from .device.options import PredictOptions

    if json_out and csv_out:
        raise ConfigError("--json and --csv exclude each other")
    opts = PredictOptions(task=task, top_k=top_k, batch=batch, strict=strict, size=size, mean=mean, std=std,
                          labels=labels)
    res = predict_run(artifact, list(images), opts, warn=lambda m: typer.echo(m, err=True))
    if json_out:
        typer.echo(P.as_json(res))
    elif csv_out:
        typer.echo(P.as_csv(res), nl=False)
        typer.echo(P.summary(res), err=True)
    else:
        typer.echo(P.as_table(res))
        typer.echo(P.summary(res))


@app.command(epilog="Examples: `edgevp check runs/vpt/export/trt-fp16` (every platform the bundle is for) · "
                    "`edgevp check trt-int8 --trt-version 8.6` (on a JetPack 6.0 device, before build_engine.sh)")
@handle_errors
def check(
    bundle: Annotated[Path, typer.Argument(help="a TensorRT device bundle folder (trt-<precision>/ of an export or "
                                                "a pack), or a file in it")],
    trt_version: Annotated[Optional[str], typer.Option(
        help="the device's TensorRT version (8.5, 8.6.2, 10.3, ...): check only its rules and refuse a bundle not "
             "made for it; default: every platform the bundle was made for")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
) -> None:
    """Check a device bundle against the documented rules of TensorRT's ONNX importer and trtexec (per version),
    DeepStream's nvinfer config parser and Triton's model config: torch-free, so it runs on the device.

    Exit codes: 3 a rule is broken (each printed with its fix and the tool's source line) · 6 not a bundle, or made
    for another TensorRT than --trt-version · 4 the onnx package is missing.
    """
    import json

    from .api import CheckOptions, check as check_run

    report = check_run(bundle, CheckOptions(trt_version=trt_version))
    if json_out:
        typer.echo(json.dumps(report.to_dict(), indent=1))
    else:
        for f in report.findings:
            typer.echo(str(f))
    if not report.ok:
        raise VerificationError(f"{bundle}: {len(report.to_dict()['errors'])} device-tool rule(s) broken for "
                                f"{', '.join(report.platforms)}", "fix them or export the bundle again")
    if not json_out:
        typer.echo(f"ok: {bundle} conforms for {', '.join(report.platforms)} "
                   f"({len(report.findings)} warning(s))")


def main() -> None:
    try:
        app()
    finally:
        if "edgevp.distributed" in sys.modules:  # a torchrun rank leaves its process group (NCCL warns otherwise)
            sys.modules["edgevp.distributed"].shutdown()
