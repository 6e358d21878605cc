"""The fp32 ONNX target: export the deploy form, check, simplify, stamp metadata, and gate on ORT parity.

One self-contained `.onnx` file (weights inside, never external data: models here are far below 2 GB), input
`input` [batch, 3, H, W] float32, output `logits` [batch, classes]. The dynamo exporter is the default (with opset
17 it exports 18 and down-converts, see `quiet_exporter`); `legacy` selects the TorchScript exporter. What the
export writes and how it is gated: docs/exporting.md.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from pathlib import Path

import numpy as np

from ..conformance.graph import for_tensorrt
from .targets import register_target

INPUT, OUTPUT = "input", "logits"


@contextlib.contextmanager
def quiet_exporter():
    """Silence the exporter's warnings, prints and log lines (at opset 17 torch logs that it exports 18 and
    converts, and onnxscript that its converter falls back to onnx's): the gate checks what was written."""
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(logging.NOTSET)


def export_onnx(module, path: Path, input_shape: tuple[int, ...], opset: int = 18, dynamic_batch: bool = True,
                exporter: str = "dynamo") -> dict:
    """Write `module` (eval) to one ONNX file; returns {exporter, opset} as actually produced."""
    import onnx
    import torch

    x = torch.rand(2 if dynamic_batch else 1, *input_shape)
    with quiet_exporter(), torch.no_grad():
        if exporter == "dynamo":
            dyn = {"x": {0: torch.export.Dim("batch", min=1, max=4096)}} if dynamic_batch else None
            torch.onnx.export(module, (x,), str(path), dynamo=True, opset_version=opset, input_names=[INPUT],
                              output_names=[OUTPUT], dynamic_shapes=dyn, external_data=False, verbose=False)
        else:
            axes = {INPUT: {0: "batch"}, OUTPUT: {0: "batch"}} if dynamic_batch else None
            torch.onnx.export(module, (x,), str(path), dynamo=False, opset_version=opset, input_names=[INPUT],
                              output_names=[OUTPUT], dynamic_axes=axes)
    got = settle_opset(path, opset)
    model = onnx.load(str(path), load_external_data=False)
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        raise RuntimeError("the exporter wrote external data; expected one self-contained file")
    return {"exporter": exporter, "opset": int(got), "nodes_raw": len(model.graph.node)}


def settle_opset(path: Path, opset: int) -> int:
    """The default-domain opset of the exported file at `path`, brought down to `opset` 17 where torch's conversion
    left it at 18 (onnx's version converter has no Pad adapter: Swin graphs); returns the opset written."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    got = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if got == 18 and opset == 17:
        from ..conformance.graph import to_opset_17

        to_opset_17(model)
        onnx.save(model, str(path))
        got = 17
    return got


def check(path: Path) -> None:
    import onnx

    onnx.checker.check_model(str(path), full_check=True)


def simplify(path: Path, how: str = "auto") -> dict:
    """Simplify `path` in place with onnxsim (or onnxslim); on failure keep the unsimplified file and say why."""
    import onnx

    tried = ["onnxsim", "onnxslim"] if how == "auto" else [how] if how != "none" else []
    errors = []
    for tool in tried:
        try:
            model = onnx.load(str(path))
            if tool == "onnxsim":
                import onnxsim

                new, ok = onnxsim.simplify(model)
                if not ok:
                    raise RuntimeError("onnxsim could not validate the simplified model")
            else:
                import onnxslim

                new = onnxslim.slim(model)
            onnx.checker.check_model(new, full_check=True)
            onnx.save(new, str(path))
            return {"tool": tool, "nodes": len(new.graph.node)}
        except Exception as e:  # noqa: BLE001 (each tool raises its own types; the raw file stays valid)
            errors.append(f"{tool}: {type(e).__name__}: {str(e)[:200]}")
    return {"tool": None, "kept_unsimplified": bool(tried), "errors": errors}


def set_metadata(path: Path, props: dict[str, str]) -> None:
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    for k, v in props.items():
        model.metadata_props.add(key=k, value=v)
    model.producer_name = "edgevp"
    onnx.save(model, str(path))


def session(path: Path, threads: int | None = None):
    from ..runtime.sessions import open_session

    return open_session(path, threads=threads, purpose="checking an ONNX export", hint="pip install 'edgevp[onnx]'")


def run_ort(sess, x: np.ndarray, batch: int) -> np.ndarray:
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i:i + batch]})[0] for i in range(0, len(x), batch)])


def compare(ref: np.ndarray, got: np.ndarray) -> dict:
    """Max/mean abs difference and top-1 agreement between two logit arrays."""
    diff = np.abs(ref.astype(np.float64) - got.astype(np.float64))
    return {"images": int(len(ref)), "max_abs": float(diff.max()), "mean_abs": float(diff.mean()),
            "top1_agreement": float((ref.argmax(1) == got.argmax(1)).mean())}


def torch_logits(model, x: np.ndarray, batch: int = 32) -> np.ndarray:
    import torch

    with torch.no_grad():
        return torch.cat([model(torch.from_numpy(x[i:i + batch])) for i in range(0, len(x), batch)]).numpy()


def metadata(ctx, produced: dict) -> dict[str, str]:
    from .. import __version__
    from ..runs import package_versions

    info = ctx.model.info
    data = {"input_size": list(info.input_size), "mean": list(info.mean), "std": list(info.std),
            "include_preprocess": ctx.opts.include_preprocess, "input_range": "[0, 1]" if
            ctx.opts.include_preprocess else "normalised with mean/std", "timm_data_config": info.data_config,
            # how the run resized its images: what `edgevp eval` / `predict` redo in numpy/Pillow on the device
            "resize": ctx.cfg.data.resize, "interpolation": info.interpolation,
            "crop_pct": ctx.cfg.data.crop_pct or info.crop_pct}  # as data.backbone_transform resized
    versions = package_versions(("torch", "timm", "onnx", "onnxruntime", "onnxsim"))
    return {"edgevp_version": __version__, "versions": json.dumps(versions), "method": ctx.cfg.method,
            "backbone": ctx.cfg.backbone.name, "class_names": json.dumps(ctx.classes()),
            "data_config": json.dumps(data, default=str), "source_run": ctx.run.path.name,
            "source_checkpoint_sha256": ctx.checkpoint_sha256,
            "fold": json.dumps(ctx.fold.to_dict()), "exporter": produced["exporter"], "opset": str(produced["opset"]),
            "platform": ctx.opts.platform}


def build_fp32(ctx, name: str = "model.onnx", probabilities: bool = False) -> dict:
    """Export, check, simplify, stamp and parity-check the fp32 ONNX at `ctx.work / name` (with a `probs` Softmax
    output after the logits when `probabilities`)."""
    path = ctx.work / name
    opts = ctx.opts
    produced = export_onnx(ctx.deploy, path, tuple(ctx.model.info.input_size), opts.opset, opts.dynamic_batch,
                           opts.exporter)
    check(path)
    simp = simplify(path, opts.simplify)
    produced["tensorrt_rewrites"] = for_tensorrt(path, probabilities, opts.platform)
    set_metadata(path, metadata(ctx, produced))
    check(path)
    x, y = ctx.images("val", opts.gate_images)
    ref = torch_logits(ctx.model, x)
    sess = session(path)
    got = run_ort(sess, ctx.deploy_input(x), ctx.batch)
    parity = compare(ref, got)
    if opts.dynamic_batch:  # the batch axis must really be free: batch 1 must agree too
        parity["max_abs_batch1"] = float(np.abs(run_ort(sess, ctx.deploy_input(x[:2]), 1) - got[:2]).max())
    parity["top1_torch"] = float((ref.argmax(1) == y).mean() * 100)
    parity["top1_onnx"] = float((got.argmax(1) == y).mean() * 100)
    ok = parity["max_abs"] <= opts.atol and parity["top1_agreement"] >= opts.min_top1_agreement
    ctx.val, ctx.fp32_logits = (x, y), got
    error = None if ok else (f"ORT vs PyTorch max abs {parity['max_abs']:.3g} (tolerance {opts.atol:g}), top-1 "
                             f"agreement {parity['top1_agreement']:.3f} (min {opts.min_top1_agreement:g})")
    return {"status": "ok" if ok else "failed", "error": error, "files": [name], "onnx": {
        **produced, "nodes": simp.get("nodes", produced["nodes_raw"]), "simplify": simp, "bytes": path.stat().st_size,
        "input": {"name": INPUT, "shape": ["batch" if opts.dynamic_batch else 1, *ctx.model.info.input_size],
                  "dtype": "float32"}, "output": {"name": OUTPUT, "dtype": "float32"}}, "parity": parity}


def _reference(ctx, module, name: str) -> str:
    """Export a cost reference for `edgevp profile RUN` (no parity gate: it is not a deployable artifact)."""
    path = ctx.work / name
    export_onnx(module, path, tuple(ctx.model.info.input_size), ctx.opts.opset, ctx.opts.dynamic_batch,
                ctx.opts.exporter)
    check(path)
    simplify(path, ctx.opts.simplify)
    for_tensorrt(path, platform=ctx.opts.platform)
    return name


@register_target("onnx", help="fp32 ONNX (one file) with metadata, gated on ORT vs PyTorch parity")
def build_onnx(ctx) -> dict:
    """fp32 ONNX with metadata, gated on ORT vs PyTorch parity."""
    from .fold import bare_deploy
    from ..io import sha256_file as sha256

    result = build_fp32(ctx)
    if ctx.opts.with_references and result["status"] == "ok":  # what `edgevp profile RUN` compares with
        refs = {"bare.onnx": "the backbone alone (with the run's head), same preprocessing"}
        result["files"].append(_reference(ctx, bare_deploy(ctx.model, ctx.opts.include_preprocess), "bare.onnx"))
        if ctx.fold.folds_nothing:
            pass  # nothing folded: model.onnx is already the plain backbone
        elif not ctx.opts.include_preprocess:
            refs["unfolded.onnx"] = "skipped: the unfolded model takes [0, 1] images (use --include-preprocess)"
        else:
            result["files"].append(_reference(ctx, ctx.model, "unfolded.onnx"))
            refs["unfolded.onnx"] = "the PromptedModel as trained (prompts computed at run time, not folded)"
        result["references"] = refs
    result["sha256"] = {n: sha256(ctx.work / n) for n in result["files"]}
    return result
