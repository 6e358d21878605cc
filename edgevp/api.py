"""The front door: one function per CLI command, each taking the options dataclass the command fills.

    edgevp train    -> train(recipe, TrainOptions, sets=...)        edgevp eval    -> evaluate(artifact, EvalOptions)
    edgevp condense -> condense(run, out, PCOptions | E2VPTPruneOptions)
    edgevp export   -> export(run, ExportOptions)                   edgevp predict -> predict(artifact, images,
    edgevp pack     -> pack(runs, out, PackOptions)                                             PredictOptions)
    edgevp profile  -> profile(target, ProfileOptions)              edgevp report  -> report(runs, ReportOptions)
    edgevp sweep    -> sweep(recipe, SweepOptions, sets, out)       edgevp check   -> check(bundle, CheckOptions)
    edgevp demo     -> demo(DemoOptions, sets)

The CLI parses, builds the dataclass, calls the function and prints (the `*_line` helpers below say what);
`tests/e2e/test_api_cli.py` checks every CLI option's name and default against its dataclass field. Importing this module
imports no torch: every stage is imported when it runs.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from .config import check_options
from .errors import ChildProcessesFailed, ConfigError


@dataclass
class TrainOptions:
    """Options of `edgevp train` (same names): where the run goes, or which run to continue, and on how many local
    data-parallel processes (`nproc` > 1 starts torchrun; data.batch_size stays the global batch)."""

    out: Path | None = None  # run directory (default: runs/<derived name>)
    resume: Path | None = None  # continue this interrupted run directory (its own config)
    overwrite: bool = False  # start over in an existing run directory (its files are removed)
    nproc: int | None = None  # None or 1: this process

    def __post_init__(self):
        check_options(self)
        if self.overwrite and self.resume is not None:
            raise ConfigError("--overwrite starts a run over; it cannot be combined with --resume")
        if self.nproc is not None and self.nproc < 1:
            raise ConfigError(f"--nproc must be >= 1, got {self.nproc}")


@dataclass
class ReportOptions:
    """Options of `edgevp report`: the report directory, and profile.json files taken elsewhere (on the device),
    matched to runs by artifact sha256."""

    out: Path = Path("runs/report")
    profile: list[Path] = field(default_factory=list)

    def __post_init__(self):
        check_options(self)


@dataclass
class DemoOptions:
    """Options of `edgevp demo`: recipes from recipes/dinov2_fmnist/, and the optional condense and pack steps."""

    out: Path = Path("runs/demo")
    methods: list[str] = field(default_factory=lambda: ["linear", "lorvp", "vpt_deep"])
    condense: bool = True
    pack: bool = True

    def __post_init__(self):
        check_options(self)
        if not self.methods:
            raise ConfigError("--methods: give at least one recipe name, e.g. linear,vpt_deep")


@dataclass
class CheckOptions:
    """Options of `edgevp check`: the device's TensorRT version (None: every platform the bundle was made for)."""

    trt_version: str | None = None

    def __post_init__(self):
        check_options(self)


def resolve_recipe(recipe: str | Path | dict | Any, sets: Sequence[str] = ()) -> tuple[Any, str | None]:
    """(RunConfig, the recipe file's sha256 or None) from a YAML path, a recipe dict or a RunConfig; `sets` are
    `KEY=VALUE` overrides (as `-s`), checked by the recipe schema."""
    from .config import RunConfig, load_yaml
    from .recipe import build_run_config

    if isinstance(recipe, RunConfig):
        if sets:
            raise ConfigError("overrides (-s) apply to a recipe file or dict, not to a built RunConfig")
        return recipe, None
    if isinstance(recipe, dict):
        return build_run_config(recipe, list(sets)), None
    path = Path(recipe)
    cfg = build_run_config(load_yaml(path), list(sets))
    return cfg, hashlib.sha256(path.read_bytes()).hexdigest()


def train(recipe: str | Path | dict | Any = None, opts: TrainOptions | None = None, *, sets: Sequence[str] = (),
          reporter=None, command: list[str] | None = None, rank_flags: Sequence[str] = ()):
    """Train `recipe` (a YAML path, a recipe dict or a RunConfig) or continue `opts.resume`; returns the TrainResult.

    With `opts.nproc` > 1 the same training runs on that many torchrun processes (a recipe file or a resume only: the
    ranks read it), started with `rank_flags` (`-v`, `-q`) and this function returns None once they succeed; a failed
    rank raises ChildProcessesFailed with its exit code (the rank printed its own error).

    Example:
        >>> edgevp.train("recipes/tiny/vpt_deep.yaml", TrainOptions(out=Path("runs/vpt")), sets=["train.epochs=1"])
    """
    opts = opts or TrainOptions()
    if opts.resume is None and recipe is None:
        raise ConfigError("give a RECIPE or --resume RUN_DIR")
    if opts.resume is not None and (recipe is not None or sets):
        raise ConfigError("--resume takes the run's own config; drop RECIPE and -s")
    if opts.nproc is not None and opts.nproc > 1:
        return _launch_train(recipe, opts, sets, rank_flags)
    from .train import fit

    cfg, sha = resolve_recipe(recipe, sets) if recipe is not None else (None, None)
    return fit(cfg, out=opts.out, resume=opts.resume, command=command, recipe_sha256=sha, reporter=reporter,
               overwrite=opts.overwrite)


def train_rank_args(recipe: str | Path | None, opts: TrainOptions, sets: Sequence[str]) -> list[str]:
    """The `edgevp train` arguments every torchrun rank runs (without --nproc: a rank trains in its process)."""
    args = ["train", str(recipe)] if recipe is not None else ["train", "--resume", str(opts.resume)]
    for item in sets:
        args += ["-s", item]
    args += ["-o", str(opts.out)] if opts.out is not None else []
    return args + (["--overwrite"] if opts.overwrite else [])


def _launch_train(recipe, opts: TrainOptions, sets: Sequence[str], rank_flags: Sequence[str]) -> None:
    """`nproc` torchrun processes of `edgevp train`, after the checks every rank would make."""
    from . import distributed
    from .runs import RunDir

    if distributed.active():
        raise ConfigError("--nproc starts torchrun itself; under torchrun, leave it out")
    if recipe is not None and not isinstance(recipe, (str, Path)):
        raise ConfigError("data-parallel training (nproc > 1) takes a recipe file or a resume: each rank reads it")
    cfg = resolve_recipe(recipe, sets)[0] if recipe is not None else RunDir(opts.resume).config()
    distributed.check_batch(cfg.data.batch_size, opts.nproc)  # the check every rank makes, before any process starts
    code = distributed.launch(opts.nproc, [*rank_flags, *train_rank_args(recipe, opts, sets)])
    if code:
        raise ChildProcessesFailed(code)


def export(run: str | Path, opts=None) -> dict:
    """Fold, export and gate `run` (ExportOptions; default: ONNX fp32 into RUN/export); returns the export's
    sidecar (model.json)."""
    from .export.pipeline import ExportOptions, export_run

    return export_run(Path(run), opts if opts is not None else ExportOptions())


def profile(target: str | Path, opts=None) -> tuple[dict, list[Path]]:
    """Latency, MACs, parameters and size of `target` (an artifact or a run directory) and `opts.against`;
    returns (the result, the files written: profile.json/csv/md)."""
    from .profile.options import ProfileOptions
    from .profile.run import profile_targets

    o = opts if opts is not None else ProfileOptions()
    return profile_targets(Path(target), list(o.against), o.timed_backend, o.device, list(o.batch), o.warmup,
                           o.iters, o.rounds, o.threads, o.out, o.task)


def evaluate(artifact: str | Path, opts=None, warn: Callable[[str], None] = print) -> tuple[dict, Path]:
    """Accuracy of a deployed artifact (torch-free); returns (eval.json's document, the folder it was written to)."""
    from .device.commands import run_eval
    from .device.options import EvalOptions

    o = opts if opts is not None else EvalOptions()
    return run_eval(Path(artifact), o.data, o.task, o.out, o.batch, o.limit, o.strict, o.size, o.mean, o.std,
                    o.labels, warn=warn)


def predict(artifact: str | Path, images: Sequence[str | Path], opts=None,
            warn: Callable[[str], None] = print) -> dict:
    """Top-k labels per image (torch-free); returns the predictions and their summary."""
    from .device.commands import run_predict
    from .device.options import PredictOptions

    o = opts if opts is not None else PredictOptions()
    return run_predict(Path(artifact), [Path(i) for i in images], o.task, o.top_k, o.batch, o.strict, o.size,
                       o.mean, o.std, o.labels, warn=warn)


def report(runs: Sequence[str | Path], opts: ReportOptions | None = None) -> tuple[Path, list[dict]]:
    """A report across run, pack and sweep directories (other paths among them, such as a demo's summary files
    matched by a shell glob, are left out); returns (report.md, the table's rows)."""
    from .report import report_inputs, write_report

    o = opts if opts is not None else ReportOptions()
    return write_report(report_inputs([Path(r) for r in runs]), o.out, list(o.profile))


def sweep(recipe: str | Path, opts, sets: Sequence[str] = (), out: str | Path | None = None, reporter=None) -> dict:
    """An Optuna sweep of `recipe` (SweepOptions); returns the sweep.json document."""
    from .sweep import run_sweep

    return run_sweep(recipe, opts, list(sets), out, reporter)


def demo(opts: DemoOptions | None = None, sets: Sequence[str] = (), quiet: bool = False) -> list[dict]:
    """The demo: train, condense, export, profile, pack and report on Fashion-MNIST (offline DINOv2)."""
    from .demo import run_demo

    o = opts if opts is not None else DemoOptions()
    return run_demo(o.out, list(o.methods), list(sets), quiet=quiet, condense=o.condense, pack=o.pack)


def check(bundle: str | Path, opts: CheckOptions | None = None):
    """The device-tool rules a TensorRT bundle is checked against (torch-free); returns the BundleReport (`ok`)."""
    from .conformance.bundle import check_bundle

    return check_bundle(Path(bundle), (opts or CheckOptions()).trt_version)


# ---------------------------------------------------------------------------------------------------------------
# what the CLI prints about each result


def train_line(result) -> str:
    test = "n/a" if result.test_top1 is None else f"{result.test_top1:.2f}"
    return (f"done: best val top-1 {result.best_val_top1:.2f} (epoch {result.best_epoch + 1}), test top-1 {test}, "
            f"{result.train_seconds:.1f}s -> {result.run_dir}")


def export_line(sidecar: dict, run: str | Path, opts) -> str:
    p, acc, fold = sidecar["parity"], sidecar.get("accuracy_vs_fp32"), sidecar["fold"]
    extra = (f", top-1 {acc['top1']:.2f} vs fp32 {acc['top1_fp32']:.2f}, agreement {acc['top1_agreement']:.3f} on "
             f"{acc['images']} images" if acc else "")
    return (f"done: {opts.target} ({fold['kind']} fold), parity max abs {p['max_abs']:.2e}, top-1 agreement "
            f"{p['top1_agreement']:.3f}{extra} -> {', '.join(sidecar['files'])} in {opts.out or Path(run) / 'export'}")


def pack_lines(side: dict, out: str | Path, opts) -> list[str]:
    per_task = side["parity"]["per_task"]
    worst = max(r["max_abs"] for r in per_task)
    lines = [f"done: {len(side['tasks'])} tasks in one {opts.target} graph, max abs vs own exports {worst:.2e}, "
             f"mixed batch {side['parity']['mixed_batch']['max_abs']:.2e} -> {', '.join(side['files'])} in {out}"]
    return lines + [f"  task {r['task']} {r['run']}: val top-1 {r['top1_pack']:.2f} (own export "
                    f"{r['top1_own_export']:.2f}) on {r['images']} images" for r in per_task]
