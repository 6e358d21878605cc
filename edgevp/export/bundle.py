"""What every TensorRT device bundle carries, for a single export and a pack alike (torch-free):

- `build_engine.sh`: reads the device's TensorRT version, refuses one the bundle was not made for (one line, exit 4,
  before anything is built), and runs trtexec with that version's flags (`trtexec_flags`: `--stronglyTyped` on
  10.x; `--fp16` / `--int8` weak typing on 8.x, where `--stronglyTyped` is an unknown option).
- `reference/`: reference I/O in the forms the device tools read: Polygraphy JSON (`inputs.json`, a list of feed
  dicts; `outputs.json`, Polygraphy `RunResults`) and raw binaries for trtexec's `--loadInputs` (`input_<k>.<name>.bin`,
  shaped like the engine's profile), the outputs of the bundle's own ONNX on ONNX Runtime, and per-precision
  tolerances (`tolerances.json`).
- `verify.sh`: compares an engine (or the ONNX) with the reference I/O: Polygraphy when it is installed, else trtexec
  plus a numpy comparison.
"""
from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np

from ..conformance.platforms import Platform
from ..errors import EXIT_MISSING, EXIT_OK, EXIT_VERIFY
from ..io import write_json, write_text

REFERENCE_DIR = "reference"
RUNNER = "onnxrt-runner"
# floors of the allowed |engine - ORT| per precision, abs and rel (Polygraphy: |a - b| <= atol + rtol * |b|); the
# reduced precisions also allow twice what the ONNX itself moved from fp32 on these inputs
TOLERANCE_FLOOR = {"fp32": (1e-3, 1e-3), "fp16": (1e-2, 1e-2), "int8": (5e-2, 5e-2)}
WORKSPACE_MIB = 1024  # shared with the CPU on 8 GB Jetsons
# the bundle scripts' exit codes are edgevp's: 3 an engine differs from the references, 4 something is missing here
SCRIPT_EXITS = {"exit_ok": EXIT_OK, "exit_verify": EXIT_VERIFY, "exit_missing": EXIT_MISSING}


def trtexec_flags(platform: Platform, precision: str) -> list[str]:
    """The trtexec build flags for `precision` on `platform` (checked by `edgevp.conformance` against that
    version's option parser)."""
    typing = ["--stronglyTyped"] if platform.strongly_typed else {"fp32": [], "fp16": ["--fp16"],
                                                                   "int8": ["--int8"]}[precision]
    build_only = "--buildOnly" if platform.trt == "8.5" else "--skipInference"  # renamed in 8.6
    return [*typing, f"--memPoolSize=workspace:{WORKSPACE_MIB}", build_only]


def flags_by_version(platforms: list[Platform], precision: str) -> dict[str, list[str]]:
    """TensorRT version -> its trtexec flags: what model.json records and build_engine.sh's case arms run."""
    return {p.trt: trtexec_flags(p, precision) for p in platforms}


def _case_pattern(platform: Platform) -> str:
    return "10.*" if platform.trt == "10" else platform.trt


def version_cases(platforms: list[Platform], precision: str) -> str:
    """The `case "$TRT_VERSION"` arms of build_engine.sh: one per TensorRT version the bundle was made for."""
    arms, seen = [], set()
    for p in sorted(platforms, key=lambda p: p.trt == "10"):  # the catch-all 10.* arm last
        if p.trt in seen:
            continue
        seen.add(p.trt)
        arms.append(f"  {_case_pattern(p)}) FLAGS=({' '.join(trtexec_flags(p, precision))}) ;;")
    return "\n".join(arms)


def bundle_versions(platforms: list[Platform]) -> str:
    """`8.5, 8.6, 10.3, 10.x`: the TensorRT versions a bundle for `platforms` builds on."""
    versions = sorted({p.trt for p in platforms}, key=lambda v: [int(x) for x in v.split(".")] + [99])
    return ", ".join("10.x" if v == "10" else v for v in versions)


SCRIPT = """#!/usr/bin/env bash
# Build a TensorRT engine from {onnx} on this device (engines are tied to the GPU and the TensorRT version) and put
# it where DeepStream and Triton look for it. This bundle was made for TensorRT {versions} (edgevp export
# --platform {platform}); another version is refused before anything is built.
# The engine is named after what it is tied to:
#   model.trt<TensorRT major.minor>-sm<compute capability>-{precision}.engine
# (e.g. model.trt10.3-sm87-{precision}.engine), with a sidecar JSON of the same stem that edgevp eval/predict/profile
# check before loading it. Override the detection with TRT_VERSION=10.3 and SM=87.
# Usage: ./build_engine.sh [trtexec args...]   e.g. ./build_engine.sh --verbose; then ./verify.sh
set -euo pipefail
cd "$(dirname "$0")"
TRTEXEC=${{TRTEXEC:-$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)}}
PYVER='import tensorrt; print(".".join(tensorrt.__version__.split(".")[:2]))'
TRT_VERSION=${{TRT_VERSION:-$(python3 -c "$PYVER" 2>/dev/null || true)}}
if [ -z "$TRT_VERSION" ]; then  # trtexec prints "[TensorRT v100300]" (10.3) or "[TensorRT v8601]" (8.6)
  V=$("$TRTEXEC" --help 2>&1 | grep -o 'TensorRT v[0-9]*' | head -1 | tr -dc '0-9' || true)
  if [ -n "$V" ] && [ "$V" -ge 100000 ]; then TRT_VERSION="$((V / 10000)).$((V / 100 % 100))";
  elif [ -n "$V" ]; then TRT_VERSION="$((V / 1000)).$((V / 100 % 10))"; fi
fi
[ -n "$TRT_VERSION" ] || {{ echo "cannot tell the TensorRT version here: set TRT_VERSION=10.3" >&2; exit {exit_missing}; }}
TRT_VERSION=$(echo "$TRT_VERSION" | cut -d. -f1-2)
# trtexec flags per TensorRT version (8.x: weak typing with precision flags, no --stronglyTyped; 10.x: strongly
# typed from the precision-explicit ONNX)
case "$TRT_VERSION" in
{cases}
  *) echo "this bundle was made for TensorRT {versions} (--platform {platform}); this device has TensorRT" \\
       "$TRT_VERSION: export again with --platform all or the platform of this device" >&2; exit {exit_missing} ;;
esac
SM=${{SM:-$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d ' .' || true)}}
case "$SM" in ''|*[!0-9]*)  # Jetson: nvidia-smi may not know compute_cap; the SoC tells it
  case "$(tr -d '\\0' < /proc/device-tree/compatible 2>/dev/null || true)" in
    *tegra234*) SM=87 ;; *tegra194*) SM=72 ;; *tegra186*) SM=62 ;; *tegra210*) SM=53 ;; *) SM="" ;;
  esac ;;
esac
[ -n "$SM" ] || {{ echo "cannot tell the GPU's compute capability here: set SM=87" >&2; exit {exit_missing}; }}
ENGINE="model.trt${{TRT_VERSION}}-sm${{SM}}-{precision}.engine"
"$TRTEXEC" --onnx={onnx} --saveEngine="$ENGINE" --timingCacheFile=timing.cache {shapes} "${{FLAGS[@]}}" "$@"
# the engine's sidecar (<engine stem>.json, also model.json): the TensorRT version and GPU it was built for, which
# edgevp eval / predict / profile check before loading it
python3 - "$ENGINE" "$TRT_VERSION" "$SM" <<'PY' || echo "note: python3 could not write the engine's sidecar" >&2
import json
import subprocess
import sys

engine, version, sm = sys.argv[1:4]
try:
    import tensorrt
    version = tensorrt.__version__
except ImportError:
    pass


def gpu():
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=5).stdout.strip()
        if out:
            return out.splitlines()[0].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        model = open("/proc/device-tree/model").read().strip().rstrip("\\x00")
    except OSError:
        return None
    return model if "jetson" in model.lower() else None


meta = json.load(open("model.json"))
meta.update(tensorrt_version=version, gpu=gpu(), compute_capability=sm[:-1] + "." + sm[-1], engine=engine,
            built_by="build_engine.sh")
json.dump(meta, open(engine.rsplit(".", 1)[0] + ".json", "w"), indent=1)
json.dump(meta, open("model.json", "w"), indent=1)
PY
"""


# --- Polygraphy's JSON (polygraphy/json/serde.py: an ndarray is {"array": base64(np.save), "polygraphy_class":
# "ndarray"}; comparator/struct.py: RunResults {"lst": [[runner, [IterationResult]]]}), written without Polygraphy

def _array(a: np.ndarray) -> dict:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
    return {"array": base64.b64encode(buf.getvalue()).decode(), "polygraphy_class": "ndarray"}


def polygraphy_inputs(feeds: list[dict[str, np.ndarray]]) -> list:
    return [{k: _array(v) for k, v in feed.items()} for feed in feeds]


def polygraphy_outputs(outputs: list[dict[str, np.ndarray]], runner: str = RUNNER) -> dict:
    iterations = [{"outputs": {k: {"values": _array(v), "polygraphy_class": "LazyArray"} for k, v in out.items()},
                   "runtime": None, "runner_name": runner, "polygraphy_class": "IterationResult"}
                  for out in outputs]
    return {"lst": [[runner, iterations]], "polygraphy_class": "RunResults"}


def _load_array(d: dict) -> np.ndarray:
    return np.load(io.BytesIO(base64.b64decode(d["array"])), allow_pickle=False)


def read_polygraphy_inputs(bundle: Path) -> list[dict[str, np.ndarray]]:
    feeds = json.loads((bundle / REFERENCE_DIR / "inputs.json").read_text())
    return [{k: _load_array(v) for k, v in feed.items()} for feed in feeds]


def read_polygraphy_outputs(bundle: Path) -> list[dict[str, np.ndarray]]:
    runs = json.loads((bundle / REFERENCE_DIR / "outputs.json").read_text())["lst"][0][1]
    return [{k: _load_array(v["values"]) for k, v in it["outputs"].items()} for it in runs]


def run_all_outputs(onnx_path: Path, feeds: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """Every output of `onnx_path` on ONNX Runtime (CPU) for each feed."""
    from .onnx import session

    sess = session(onnx_path)
    names = [o.name for o in sess.get_outputs()]
    return [dict(zip(names, sess.run(None, feed))) for feed in feeds]


def tolerances(precision: str, outputs: list[dict], fp32_logits: np.ndarray | None) -> dict:
    """Polygraphy's atol/rtol for this precision: the floor, widened to twice what the bundle's ONNX differs from
    the fp32 ONNX on the reference inputs (an engine may differ from ORT as much as int8 differs from fp32)."""
    atol, rtol = TOLERANCE_FLOOR[precision]
    moved = 0.0
    if fp32_logits is not None and precision != "fp32":
        got = np.concatenate([o["logits"] for o in outputs]).astype(np.float64)
        moved = float(np.abs(got - fp32_logits[:len(got)].astype(np.float64)).max())
        atol = max(atol, 2 * moved)
    return {"atol": float(atol), "rtol": float(rtol), "precision": precision, "onnx_vs_fp32_max_abs": moved,
            "check": "|engine - reference| <= atol + rtol * |reference| (Polygraphy's rule), every output"}


def write_references(bundle: Path, onnx_name: str, feeds: list[dict[str, np.ndarray]], precision: str,
                     fp32_logits: np.ndarray | None, int32_inputs: tuple[str, ...] = ()) -> dict:
    """`bundle/reference/`: Polygraphy JSON inputs/outputs, trtexec raw inputs and the tolerances; returns the
    record for model.json. `int32_inputs` also get an int32 raw file (TensorRT 8.x binds INT64 inputs as INT32)."""
    ref = bundle / REFERENCE_DIR
    ref.mkdir(exist_ok=True)
    outputs = run_all_outputs(bundle / onnx_name, feeds)
    write_text(ref / "inputs.json", json.dumps(polygraphy_inputs(feeds)))
    write_text(ref / "outputs.json", json.dumps(polygraphy_outputs(outputs)))
    for k, feed in enumerate(feeds):
        for name, value in feed.items():
            (ref / f"input_{k}.{name}.bin").write_bytes(np.ascontiguousarray(value).tobytes())
            if name in int32_inputs:
                (ref / f"input_{k}.{name}.i32.bin").write_bytes(value.astype(np.int32).tobytes())
    tol = tolerances(precision, outputs, fp32_logits)
    record = {"dir": REFERENCE_DIR, "feeds": len(feeds), "inputs": {k: [str(v.dtype), list(v.shape)]
                                                                     for k, v in feeds[0].items()},
              "outputs": {k: list(v.shape) for k, v in outputs[0].items()}, "tolerances": tol,
              "source": f"{onnx_name} on ONNX Runtime (CPU)", "int32_inputs": list(int32_inputs)}
    write_json(ref / "tolerances.json", record)
    return record


def shapes_arg(which: str, dims: dict[str, dict[str, str]]) -> str:
    """trtexec's `--shapes`/`--minShapes`... value for profile point `which` over every input."""
    return ",".join(f"{name}:{d[which]}" for name, d in dims.items())


def verify_script(engine_glob: str, feeds: int, inputs: list[str], run_shapes: str, tol: dict,
                  int32_inputs: tuple[str, ...] = ()) -> str:
    """verify.sh: the engine (or an ONNX) against reference/ with Polygraphy, or trtexec + numpy without it."""
    load = ",".join(f"{n}:{REFERENCE_DIR}/input_$K.{n}$(suffix {n}).bin" for n in inputs)
    i32 = " ".join(int32_inputs)
    return VERIFY.format(glob=engine_glob, atol=tol["atol"], rtol=tol["rtol"], feeds=feeds, load=load,
                         shapes=run_shapes, i32=i32, ref=REFERENCE_DIR, **SCRIPT_EXITS)


VERIFY = """#!/usr/bin/env bash
# Check an engine built by build_engine.sh (or an ONNX of this bundle) against the reference I/O in {ref}/:
# |got - reference| <= atol + rtol * |reference| on every output (tolerances in {ref}/tolerances.json).
# Usage: ./verify.sh [ENGINE_OR_ONNX]   (default: the newest {glob} here). Exit 0: matches; 3: differs.
# With Polygraphy installed (pip install polygraphy) it runs `polygraphy run`; otherwise trtexec --loadInputs per
# reference feed and a numpy comparison.
set -euo pipefail
cd "$(dirname "$0")"
ATOL={atol!r}
RTOL={rtol!r}
TARGET=${{1:-$(ls -t {glob} 2>/dev/null | head -1 || true)}}
[ -n "$TARGET" ] || {{ echo "no engine here: run ./build_engine.sh first (or ./verify.sh model.onnx)" >&2; exit {exit_missing}; }}
if command -v polygraphy >/dev/null 2>&1; then
  case "$TARGET" in
    *.onnx) RUNNER=(--onnxrt) ;;
    *) RUNNER=(--trt --model-type engine) ;;
  esac
  polygraphy run "$TARGET" "${{RUNNER[@]}}" --load-inputs {ref}/inputs.json --load-outputs {ref}/outputs.json \\
    --atol "$ATOL" --rtol "$RTOL" || exit {exit_verify}
  exit {exit_ok}
fi
case "$TARGET" in *.onnx) echo "checking an ONNX needs Polygraphy: pip install polygraphy" >&2; exit {exit_missing} ;; esac
TRTEXEC=${{TRTEXEC:-$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)}}
MAJOR=$("$TRTEXEC" --help 2>&1 | grep -o 'TensorRT v[0-9]*' | head -1 | tr -dc '0-9' || true)
suffix() {{  # TensorRT 8.x binds INT64 inputs as INT32
  for n in {i32}; do [ "$1" = "$n" ] && [ -n "$MAJOR" ] && [ "$MAJOR" -lt 100000 ] && {{ echo .i32; return; }}; done
  echo ""
}}
for K in $(seq 0 $(({feeds} - 1))); do
  "$TRTEXEC" --loadEngine="$TARGET" --loadInputs="{load}" {shapes} \\
    --exportOutput="{ref}/got_$K.json" --iterations=1 --warmUp=0 --duration=0 >/dev/null
done
python3 - "$ATOL" "$RTOL" {feeds} <<'PY'
import base64, io, json, sys

import numpy as np

atol, rtol, feeds = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
ref = json.load(open("{ref}/outputs.json"))["lst"][0][1]
worst = 0.0
for k in range(feeds):
    got = {{o["name"]: np.asarray(o["values"], np.float64) for o in json.load(open(f"{ref}/got_{{k}}.json"))}}
    for name, lazy in ref[k]["outputs"].items():
        want = np.load(io.BytesIO(base64.b64decode(lazy["values"]["array"]))).astype(np.float64).ravel()
        diff = np.abs(got[name].ravel() - want)
        worst = max(worst, float(diff.max()))
        if not (diff <= atol + rtol * np.abs(want)).all():
            print(f"FAILED: feed {{k}} output {{name}}: max abs {{diff.max():.4g}} (atol {{atol}}, rtol {{rtol}})")
            sys.exit({exit_verify})
print(f"PASSED: {{feeds}} reference feeds, max abs {{worst:.4g}} (atol {{atol}}, rtol {{rtol}})")
PY
"""
