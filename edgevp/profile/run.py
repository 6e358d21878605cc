"""`edgevp profile`: resolve what to compare, measure it, write the results beside the target."""
from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError, IncompatibleError
from ..io import check_writable
from .compare import Variant, compare
from .report_table import write_results

ARTIFACT_SUFFIXES = (".onnx", ".engine", ".plan")


def _variant(path: Path, backend: str, device: str, name: str | None = None) -> Variant:
    if not path.exists():
        raise IncompatibleError(f"artifact '{path}' does not exist")
    if path.suffix not in ARTIFACT_SUFFIXES:
        raise ConfigError(f"'{path}' is not an artifact ({', '.join(ARTIFACT_SUFFIXES)}) or a run directory")
    if path.suffix in (".engine", ".plan") and backend == "ort":
        backend = "trt"
    return Variant(name or path.stem, str(path), backend, device)


RUN_LABELS = {"bare": "bare backbone", "unfolded": "unfolded prompts", "model": "folded (this run)"}


def run_variants(run: Path, backend: str, device: str) -> list[Variant]:
    """The exported artifacts of a run directory, the uncompressed references first: `bare.onnx`, `unfolded.onnx`
    (from `edgevp export RUN --with-references`), then the uncondensed source run's `model.onnx` when this run was
    condensed and its source was exported, then this run's own artifacts."""
    export = run / "export"
    found = sorted(export.glob("*.onnx")) if export.is_dir() else []
    if not found:
        raise IncompatibleError(f"run '{run}' has no exported ONNX files in {export}",
                                f"run: edgevp export {run} --with-references")
    order = {"bare": 0, "unfolded": 1}
    found.sort(key=lambda p: (order.get(p.stem, 3), p.name))
    variants = [_variant(p, backend, device, RUN_LABELS.get(p.stem)) for p in found]
    for v, p in zip(variants, found):
        if p.stem == "model":
            v.info["role"] = "this run"
    source = _condensed_from(run)
    if source is not None and (source / "export" / "model.onnx").is_file():
        at = sum(p.stem in order for p in found)
        variants.insert(at, _variant(source / "export" / "model.onnx", backend, device, "uncondensed source (folded)"))
    return variants


def _condensed_from(run: Path) -> Path | None:
    from ..errors import EdgevpError
    from ..runs import RunDir

    try:
        source = (RunDir(run).manifest().get("inputs") or {}).get("condensed_from")
    except EdgevpError:  # an export directory copied without its manifest still profiles on its own
        return None
    return Path(source["run"]) if source and source.get("run") else None


def torch_run_variants(run: Path, device: str, backend: str = "torch") -> list[Variant]:
    """A run in PyTorch against its uncompressed versions: the bare backbone, and the run it was condensed from."""
    from ..records import TrainInfo, train_info_of
    from ..runs import RunDir

    manifest = RunDir(run).manifest()
    train_info = train_info_of(manifest) or TrainInfo()
    variants = [Variant("bare backbone", f"{run}#bare", backend, device, {"macs": train_info.bare_macs}),
                Variant(f"{manifest.get('method')} (this run)", str(run), backend, device,
                        {"macs": train_info.macs, "params": train_info.total_params, "role": "this run"})]
    source = _condensed_from(run)
    if source is not None and source.is_dir():
        info = RunDir(source).train_info() or TrainInfo()
        variants.insert(1, Variant("uncondensed source", str(source), backend, device,
                                   {"macs": info.macs, "params": info.total_params}))
    for v in variants:
        if v.info.get("macs") and variants[0].info.get("macs"):
            v.info["ratio_macs"] = v.info["macs"] / variants[0].info["macs"]
    return variants


def profile_targets(target: Path, against: list[Path], backend: str, device: str, batches: list[int], warmup: int,
                    iters: int, rounds: int, threads: int | None, out: Path | None, task: str | None = None
                    ) -> tuple[dict, list[Path]]:
    """Profile `target` (and `against`); `task` picks a multi-task pack's task (an id, or `mixed`: the batch cycles
    over the tasks, the default)."""
    if backend not in ("ort", "trt", "trtexec", "torch", "torch-compile"):
        raise ConfigError(f"unknown backend '{backend}'", "choose ort, trt, trtexec or torch")
    if not target.exists():
        raise IncompatibleError(f"'{target}' does not exist", "give an artifact (.onnx, .engine) or a run directory")
    if backend.startswith("torch") and not target.is_dir():
        raise ConfigError("--backend torch profiles a run directory (PyTorch eager), not an artifact")
    if backend == "torch-compile" and device != "cuda":
        raise ConfigError("--compile times torch.compile on CUDA", "add --device cuda, or drop --compile on the CPU")
    if target.is_dir():
        variants = (torch_run_variants(target, device, backend) if backend.startswith("torch")
                    else run_variants(target, backend, device))
        out = out or target / "profile"
    else:
        variants = [_variant(target, backend, device)]
        out = out or target.parent / "profile"
    names = {v.name for v in variants}
    extra = []
    for p in against:
        label, sep, path = str(p).partition("=")
        v = _variant(Path(path), backend, device, label) if sep and "/" not in label else _variant(p, backend, device)
        if v.name in names:
            where = p.parent.parent if p.parent.name == "export" else p.parent  # RUN/export/model.onnx -> RUN
            v.name = f"{v.name} ({where.name})"
        if v.name in names:
            raise ConfigError(f"two variants are named '{v.name}'", "name them: --against NAME=PATH")
        names.add(v.name)
        extra.append(v)
    # the reference (ratio 1.0) is the first variant: a run's own bare export, or else the first --against
    variants = variants + extra if target.is_dir() else extra + variants
    if task is not None:
        for v in variants:
            if v.backend == "ort" and v.artifact.endswith(".onnx"):
                v.task = str(task)  # ignored by single-task artifacts
    check_writable(out)  # before the measuring, not after it
    result = compare(variants, batches, rounds, warmup, iters, threads)
    return result, write_results(out, result)
