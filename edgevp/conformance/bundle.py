"""`edgevp check BUNDLE`: a device bundle (single export or pack) against every rule of the tools it is made for,
torch-free, so it runs on the device before a build. The same check gates every TensorRT bundle at export.

For each TensorRT platform of the bundle (or the one `trt_version` names): the ONNX against that importer, the
trtexec command lines of build_engine.sh and verify.sh against that trtexec's option parser, and the flags
build_engine.sh really runs against the ones model.json records; the DeepStream config against nvinfer's parser;
every Triton config against Triton's own protobuf; the reference I/O files present and complete.
"""
from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import IncompatibleError
from .checks import check_nvinfer_config, check_onnx, check_triton_config, check_trtexec_args
from .findings import Finding, errors
from .platforms import PLATFORMS, Platform, for_trt_version

EDGEVP = "edgevp bundle layout (export/bundle.py)"
CASE_ARM = re.compile(r"^\s+(?P<pattern>[0-9.*]+)\) FLAGS=\((?P<flags>[^)]*)\) ;;$", re.M)


@dataclass
class BundleReport:
    """What `check_bundle` found, per platform checked."""

    bundle: str
    platforms: list[str]
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not errors(self.findings)

    def to_dict(self) -> dict:
        return {"bundle": self.bundle, "platforms": self.platforms, "ok": self.ok,
                "errors": [str(f) for f in errors(self.findings)],
                "warnings": [str(f) for f in self.findings if f.severity == "warning"]}


def _meta(bundle: Path) -> dict:
    path = bundle / "model.json"
    if not path.is_file():
        raise IncompatibleError(f"'{bundle}' is not a device bundle (no model.json)",
                                "give the trt-<precision>/ folder that edgevp export or pack wrote")
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise IncompatibleError(f"'{path}' is not valid JSON: {e}") from None


def bundle_platforms(meta: dict, trt_version: str | None) -> list[Platform]:
    """The platforms to check: the device's (`trt_version`) when given, which must be one the bundle was made for."""
    made_for = [PLATFORMS[n] for n in meta.get("platforms", []) if n in PLATFORMS]
    if not made_for:
        raise IncompatibleError("the bundle's model.json names no platform it was made for",
                                "export it again with this edgevp (edgevp export --platform ...)")
    if trt_version is None:
        return made_for
    device = for_trt_version(trt_version)
    if device.trt not in {p.trt for p in made_for}:
        raise IncompatibleError(f"this bundle was made for {', '.join(p.describe() for p in made_for)}, not "
                                f"TensorRT {trt_version}", f"export it again with --platform {device.name} or all")
    return [device]


def _script_args(text: str, command: str) -> list[str]:
    """The `--options` of the `"$TRTEXEC" ...` line that runs `command` (--onnx / --loadEngine) in a script."""
    for line in text.splitlines():
        if line.lstrip().startswith('"$TRTEXEC"') and command in line:
            words = shlex.split(line.replace("\\", " "), posix=True)
            return [w for w in words if w.startswith("--")]
    return []


def _scripts(bundle: Path, meta: dict, platform: Platform) -> list[Finding]:
    """build_engine.sh runs exactly the recorded flags for this TensorRT, and every trtexec option it and verify.sh
    pass is one this trtexec knows."""
    out: list[Finding] = []
    script = (bundle / "build_engine.sh").read_text() if (bundle / "build_engine.sh").is_file() else ""
    want = meta.get("trtexec_flags", {}).get(platform.trt)
    arms = {m["pattern"]: m["flags"].split() for m in CASE_ARM.finditer(script)}
    got = arms.get("10.*" if platform.trt == "10" else platform.trt)
    if not script or want is None or got != want:
        out.append(Finding("bundle-trtexec-flags", "error", "build_engine.sh",
                           f"build_engine.sh does not run the trtexec flags model.json records for TensorRT "
                           f"{platform.trt} ({got} vs {want}): export the bundle again", EDGEVP))
    build = [a for a in _script_args(script, "--onnx=") if not a.startswith('--saveEngine="')] + (got or [])
    out += check_trtexec_args(build, platform.trt)
    verify = (bundle / "verify.sh").read_text() if (bundle / "verify.sh").is_file() else ""
    out += check_trtexec_args(_script_args(verify, "--loadEngine="), platform.trt)
    return out


def _references(bundle: Path, meta: dict) -> list[Finding]:
    ref = meta.get("reference") or {}
    folder = bundle / ref.get("dir", "reference")
    missing = [n for n in ("inputs.json", "outputs.json", "tolerances.json") if not (folder / n).is_file()]
    missing += [f"input_{k}.{name}.bin" for k in range(int(ref.get("feeds", 0))) for name in ref.get("inputs", {})
                if not (folder / f"input_{k}.{name}.bin").is_file()]
    if not ref.get("feeds"):
        missing.append("(no reference feeds recorded)")
    return [Finding("bundle-reference", "error", str(folder.name),
                    f"reference I/O incomplete: {', '.join(missing)}; export the bundle again", EDGEVP)] if missing else []


def check_bundle(path: str | Path, trt_version: str | None = None) -> BundleReport:
    """Every rule for every platform of the bundle at `path` (or the one of `trt_version`)."""
    import onnx

    bundle = Path(path)
    if bundle.is_file():
        bundle = bundle.parent
    meta = _meta(bundle)
    platforms = bundle_platforms(meta, trt_version)
    onnx_path = bundle / meta.get("onnx", "")
    if not onnx_path.is_file():
        raise IncompatibleError(f"the bundle's ONNX '{onnx_path}' is missing", "copy the whole bundle folder")
    model = onnx.load(str(onnx_path))
    report = BundleReport(str(bundle), [p.name for p in platforms])
    for p in platforms:
        report.findings += [_tagged(f, p) for f in check_onnx(model, p) + _scripts(bundle, meta, p)]
    ds = (meta.get("deepstream") or {}).get("config")
    if ds:
        report.findings += check_nvinfer_config((bundle / ds).read_text(), model)
    for cfg in sorted((bundle / "triton").glob("*/config.pbtxt")):
        served = cfg.parent / "1" / "model.onnx"
        report.findings += [_where(f, cfg.parent.name) for f in
                            check_triton_config(cfg.read_text(), onnx.load(str(served)) if served.is_file() else model)]
    report.findings += _references(bundle, meta)
    return report


def _tagged(f: Finding, p: Platform) -> Finding:
    return Finding(f.rule, f.severity, f"{p.name}: {f.where}", f.message, f.source)


def _where(f: Finding, prefix: str) -> Finding:
    return Finding(f.rule, f.severity, f"{prefix}: {f.where}", f.message, f.source)


def gate_bundle(bundle: Path, result: dict) -> dict:
    """The export/pack gate: record `check_bundle` under `result["conformance"]` and fail `result` on any error."""
    report = check_bundle(bundle).to_dict()
    report["bundle"] = bundle.name  # checked in the staging folder: recorded as the folder it is installed as
    result["conformance"] = report
    if result.get("status", "ok") == "ok" and not report["ok"]:
        result.update(status="failed", error=f"the bundle breaks {len(report['errors'])} device-tool rule(s): "
                                             + "; ".join(report["errors"][:3]))
    return result
