"""`edgevp export`: load a run, fold its prompts, let a target write artifacts, gate them, and move them into place.

Artifacts are written into a hidden staging directory inside the output directory and moved into place only after
the target has finished. An artifact that failed its gate is moved in with a `.failed` suffix (its sidecar says
`"status": "failed"`) so nothing that failed ever sits under its deployable name; a previous artifact of the same
name is removed then.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from ..config import check_options
from ..errors import ConfigError, MissingError, VerificationError
from ..io import sha256_file as sha256
from ..records import ExportRecord
from ..runs import writer_lock
from ..runtime.sidecar import target_precision
from .targets import get_target


@dataclass
class ExportOptions:
    """Options of `edgevp export`; the CLI options have the same names (`gate_images` is `--gate-images`).

    Every field is checked on construction (choices, ranges), so a bad option fails before any work starts.
    """

    target: str = "onnx"  # an export target (`edgevp list targets`)
    # the TensorRT platforms the artifact must import on (edgevp.conformance.platforms): all (default: every
    # supported one), jp5.1 (TensorRT 8.5), jp6.0 (8.6), jp6.1 / jp6.2 (10.3), trt10 (desktop 10.x), or a version
    platform: str = "all"
    opset: int | None = None  # None: the newest opset the exporter writes and every platform imports (17 or 18)
    out: Path | None = None  # default: RUN/export
    dynamic_batch: bool = True
    include_preprocess: bool = True  # the artifact takes [0, 1] images (normalisation inside)
    exporter: Literal["dynamo", "legacy"] = "dynamo"
    simplify: Literal["auto", "onnxsim", "onnxslim", "none"] = "auto"  # auto: onnxsim, then onnxslim
    checkpoint: Literal["best", "last"] = "best"
    # images for the parity and precision gates: validation images (at most the split); the precision gate's
    # agreement tops them up with training images when validation has fewer (the demo's LoR-VP int8: -4.69 on 64
    # val images, -1.33 on 300, -0.8 on test: a few images are noise, hence the bounds below)
    gate_images: int = 256
    atol: float = 1e-4  # max abs logit difference, ORT fp32 vs the PyTorch prompted model
    min_top1_agreement: float = 1.0  # fp32 parity: top-1 agreement ORT vs PyTorch
    # fp16/int8/TensorRT precision gate (precision.py), failing only on evidence at `gate_confidence`: a val top-1
    # drop vs fp32 whose lower bound exceeds `max_drop` points, or an agreement whose upper bound is below
    # `min_agreement`
    max_drop: float = 2.0
    min_agreement: float = 0.9
    gate_confidence: float = 0.95
    int8_mode: Literal["static", "dynamic"] = "static"  # static: QDQ calibrated on training images
    calib_images: int = 64
    # static int8: activation ranges, and which ops get Q/DQ (matmul: MatMul/Gemm/Conv; all: ORT's default set).
    # Defaults from tools/bench_int8.py on the demo's five DINOv2 runs (500 test images): MinMax on MatMul/Gemm/Conv
    # lost at most 0.8 points; ORT's full op set lost up to 2.8 (LayerNorm/Softmax/Add inputs in int8), entropy up
    # to 26.6, percentile on MatMul up to 1.6
    calib_method: Literal["minmax", "percentile", "entropy"] = "minmax"
    int8_ops: Literal["all", "matmul"] = "matmul"  # matmul: the layers with a constant weight (ort.weight_gemms)
    trt_dynamic_batch: bool = False  # TensorRT: dynamic batch profile instead of a fixed-shape engine
    trt_max_batch: int = 8
    with_references: bool = False  # onnx: also export bare.onnx and unfolded.onnx, the references profiling uses
    test_images: int = 500  # test.npz: at most this many test images (uint8, resized) for `edgevp eval`; 0: none

    def __post_init__(self):
        check_options(self)
        if self.test_images < 0:
            raise ConfigError(f"test_images must be >= 0, got {self.test_images}")
        for name in ("gate_images", "calib_images", "trt_max_batch"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.atol < 0 or self.max_drop < 0 or not 0 <= self.min_top1_agreement <= 1:
            raise ConfigError("atol and max_drop must be >= 0 and min_top1_agreement in [0, 1]")
        check_gate(self)
        target = get_target(self.target)
        self.opset = platform_opset(self.platform, target.opsets, self.opset)


def check_gate(opts) -> None:
    """The precision gate's options (export and pack): a floor in [0, 1], a confidence in [0.5, 1)."""
    if not 0 <= opts.min_agreement <= 1:
        raise ConfigError(f"min_agreement must be in [0, 1], got {opts.min_agreement:g}")
    if not 0.5 <= opts.gate_confidence < 1:
        raise ConfigError(f"gate_confidence must be in [0.5, 1), got {opts.gate_confidence:g}")


def platform_opset(platform: str, opsets: tuple[int, ...], opset: int | None) -> int:
    """The opset to export for `platform` (`opset` checked against it; None: the newest both allow)."""
    from ..conformance.platforms import graph_form, resolve

    platforms = resolve(platform)
    most = graph_form(platforms)["opset_max"]
    if opset is None:
        return max(o for o in opsets if o <= most)
    if opset not in opsets:
        raise ConfigError(f"the exporter cannot write opset {opset}", f"choose one of {', '.join(map(str, opsets))}")
    if opset > most:
        oldest = min(platforms, key=lambda p: p.opset_max)
        raise ConfigError(f"{oldest.describe()} imports ONNX opsets up to {most}, not {opset}",
                          f"use --opset {most}, or a --platform that takes opset {opset}")
    return opset


@dataclass
class ExportContext:
    """Everything a target's build function needs."""

    run: Any  # RunDir
    cfg: Any  # RunConfig
    model: Any  # PromptedModel (eval)
    deploy: Any  # folded nn.Module
    fold: Any  # FoldReport
    header: dict
    opts: ExportOptions
    out: Path  # final output directory
    work: Path  # staging directory (inside `out`)
    checkpoint_sha256: str = ""
    _splits: Any = None
    # what the fp32 ONNX gate (onnx.py) leaves for the gates and bundles after it
    val: tuple[Any, Any] | None = None  # the gate's validation images ([0, 1], N×3×H×W) and labels
    fp32_logits: Any = None  # the fp32 ONNX's logits on `val`
    agreement: tuple[Any, Any] | None = None  # training images topping `val` up, and the fp32 logits on them
    test_split: dict | None = None  # test.npz's record (write_test_split), None without one

    def splits(self):
        if self._splits is None:
            from ..data import load_data

            self._splits = load_data(self.cfg.data, self.model.info)
        return self._splits

    def images(self, split: str, n: int):
        """The first `n` images of a split as (float32 N×3×H×W in [0, 1], int64 labels) numpy arrays."""
        from .precision import images_of

        ds = getattr(self.splits(), split)
        if ds is None or len(ds) == 0:
            from ..errors import DataError

            raise DataError(f"the run's {split} split is empty; cannot verify the export")
        return images_of(ds, 0, n)

    @property
    def batch(self) -> int:
        """The batch the ONNX Runtime gates run with (1 for a fixed-batch graph)."""
        return 8 if self.opts.dynamic_batch else 1

    def classes(self) -> list[str]:
        return list(self.splits().classes)

    def deploy_input(self, x):
        """Images in [0, 1] as the artifact takes them (normalised unless the preprocessing is in the graph)."""
        if self.opts.include_preprocess:
            return x
        mean = self.model.mean.numpy()
        std = self.model.std.numpy()
        return ((x - mean) / std).astype(x.dtype)


def writable_dir(out: Path) -> None:
    """Create `out` and prove a file can be written in it (ConfigError, exit 2, when not)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".probe-"):
            pass
    except OSError as e:
        raise ConfigError(f"cannot write to output directory '{out}': {e.strerror or e}") from None


def final_name(name: str, failed: bool) -> str:
    """The name a staged file is installed under: failed ones get a `.failed` suffix."""
    return f"{name}.failed" if failed else name


def install_staged(work: Path, out: Path, files: list[str], failed: bool) -> list[str]:
    """Move staged files (and directories) into `out`; failed ones get a `.failed` suffix. Returns final names."""
    final = []
    for name in files:
        src, dst = work / name, out / name
        if failed:
            if dst.is_dir():
                shutil.rmtree(dst)
            elif dst.exists():
                dst.unlink()
            dst = out / final_name(name, failed)
        if dst.is_dir():
            shutil.rmtree(dst)
        readable(src)
        os.replace(src, dst)
        final.append(dst.name)
    return final


def readable(path: Path) -> None:
    """Give `path` (and everything under it) the modes the umask allows (0644 / 0755 for scripts and folders): some
    writers make 0600 files (mkstemp, ONNX Runtime's calibration cache), and a bundle copied into a container that
    runs as another user must stay readable."""
    from ..io import umask

    mask = umask()
    for p in [path, *(path.rglob("*") if path.is_dir() else [])]:
        if p.is_symlink():
            continue
        executable = p.is_dir() or os.stat(p).st_mode & 0o100
        os.chmod(p, (0o777 if executable else 0o666) & ~mask)


def _build_and_install(run, cfg, model, deploy, header, opts: ExportOptions, out: Path, target) -> tuple[dict, str, str]:
    """Build the target's artifacts in a staging directory inside `out`, gate them, and move them into place."""
    from ..runs import now

    fold = deploy.report
    work = Path(tempfile.mkdtemp(prefix=".export-", dir=out))
    try:
        ctx = ExportContext(run, cfg, model, deploy, fold, header, opts, out, work, sha256(run.checkpoint(opts.checkpoint)))
        test_split = write_test_split(ctx, work / TEST_FILE)  # before build: a TensorRT bundle copies it
        result = target.build(ctx)
        status = result.get("status", "ok")
        if test_split is not None and status != "failed" and TEST_FILE not in result["files"]:
            result = {**result, "files": [*result["files"], TEST_FILE], "test_split": test_split}
        details = {"source_checkpoint": opts.checkpoint, "source_checkpoint_sha256": ctx.checkpoint_sha256,
                   "method": cfg.method, "backbone": cfg.backbone.name, "options": _jsonable(asdict(opts)),
                   "fold": fold.to_dict(),
                   **{k: v for k, v in result.items() if k not in ("files", "status", "error")}}
        files = install_staged(work, out, result["files"], failed=status == "failed")
        record = ExportRecord(status=status, target=target.name, precision=target_precision(target.name),
                              created_at=now(), files=files, source_run=run.path.name, error=result.get("error"),
                              details=details)
        sidecar_name = result.get("sidecar", "model.json")
        record.write(out / sidecar_name)
        sidecar = record.to_json()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return sidecar, sidecar_name, status


def export_run(run_path: str | Path, opts: ExportOptions) -> dict:
    """Export run directory `run_path` to `opts.target`; returns the sidecar dict (also written as JSON).

    Raises:
        ConfigError (2): unknown target, an opset the target cannot take, unwritable output.
        IncompatibleError (6): not a complete run directory.
        VerificationError (3): the artifact failed its parity/accuracy gate (written with a `.failed` suffix).
        MissingError (4): the target needs something absent here (TensorRT, a GPU); what could be written was.
    """
    from ..model import load_run
    from ..runs import RunDir, now
    from .fold import to_deploy

    target = get_target(opts.target)
    run = RunDir(run_path)
    run.manifest()
    cfg, model, header = load_run(run.path, opts.checkpoint)
    out = Path(opts.out) if opts.out is not None else run.path / "export"
    deploy = to_deploy(model, include_preprocess=opts.include_preprocess)  # no deploy form: refused, nothing made
    writable_dir(out)
    with writer_lock(out, staging=".export-"):  # one export into a directory at a time (a second one exits 8)
        sidecar, sidecar_name, status = _build_and_install(run, cfg, model, deploy, header, opts, out, target)
    try:
        run.set_stage(f"export:{target.name}", status=status, finished_at=now(), out=str(out),
                      sidecar=sidecar_name, files=sidecar["files"], error=sidecar.get("error"))
    except OSError:  # a read-only run directory with --out elsewhere: the sidecar is the record
        sidecar["manifest_not_updated"] = True
    if status == "failed":
        raise VerificationError(f"export to {target.name} failed verification: {sidecar.get('error')}",
                                f"artifact kept as {sidecar['files'][0]} with {out / sidecar_name}")
    if status == "missing":
        raise MissingError(sidecar.get("error", "a dependency is missing"))
    return sidecar


TEST_FILE = "test.npz"


def write_test_split(ctx, path: Path) -> dict | None:
    """The run's test split as `edgevp eval` takes it on the device: `images` uint8 N×3×H×W, resized as the artifact
    expects ([0, 1] scaled by 255; normalisation is never applied here), `labels` int64, `class_names`, and
    `torch_top1`: the PyTorch model's top-1 on exactly these (uint8) images, what a fp32 artifact must reproduce.
    At most `opts.test_images` images (the first ones); None (nothing written) without a test split or with 0."""
    import json

    import numpy as np

    from .onnx import torch_logits

    n = ctx.opts.test_images
    ds = getattr(ctx.splits(), "test", None)
    if n == 0 or ds is None or len(ds) == 0:
        return None
    import torch

    n = min(n, len(ds))
    chunks, ys, hits = [], [], 0
    for i in range(0, n, 64):  # in chunks: 500 float images at 224x224 would be 300 MB at once
        xs, yy = zip(*(ds[j] for j in range(i, min(i + 64, n))))
        u8 = np.clip(np.rint(torch.stack(xs).numpy() * 255.0), 0, 255).astype(np.uint8)
        yy = np.asarray(yy, dtype=np.int64)
        hits += int((torch_logits(ctx.model, u8.astype(np.float32) / 255.0).argmax(1) == yy).sum())
        chunks.append(u8)
        ys.append(yy)
    images, y = np.concatenate(chunks), np.concatenate(ys)
    top1 = float(hits / len(y) * 100)
    info = {"file": TEST_FILE, "images": int(len(y)), "cap": ctx.opts.test_images, "split_size": int(len(ds)),
            "dtype": "uint8", "torch_top1": top1, "source_run": ctx.run.path.name,
            "source_checkpoint_sha256": ctx.checkpoint_sha256}
    np.savez_compressed(path, images=images, labels=y.astype(np.int64), class_names=np.asarray(ctx.classes()),
                        torch_top1=np.float64(top1), info=np.asarray(json.dumps(info)))
    ctx.test_split = info
    return info


def _jsonable(d: dict) -> dict:
    return {k: str(v) if isinstance(v, Path) else v for k, v in d.items()}
