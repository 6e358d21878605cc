"""Profiling: graph MACs vs the analytic formula, the latency runner, artifact-only profiling, TensorRT/trtexec paths
with fakes, and the errors users hit."""
from __future__ import annotations

import json
import subprocess
import sys
import types
import warnings

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from edgevp.cli import app
from edgevp.cost import vit_macs
from edgevp.errors import ConfigError, IncompatibleError
from edgevp.profile import trtexec
from edgevp.profile.latency import measure, median_of
from edgevp.profile.onnx_macs import graph_cost

from ..conftest import tiny_model


def _export(model, path, size=32):
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.rand(1, 3, size, size),), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"], dynamic_axes={"input": {0: "batch"}})
    return path


@pytest.fixture(scope="module")
def onnx_pair(tmp_path_factory):
    d = tmp_path_factory.mktemp("onnx")
    return _export(tiny_model("linear"), d / "bare.onnx"), _export(tiny_model("vpt", {"num_tokens": 6}), d / "vpt.onnx")


@pytest.mark.parametrize("method, prompt", [("linear", {}), ("vpt", {"num_tokens": 5, "deep": False}),
                                            ("vpt", {"num_tokens": 4, "tokens_per_layer": [4, 0, 2, 1, 0, 3]}),
                                            ("e2vpt", {"num_tokens": 3, "num_kv": 2, "dropout": 0.0})])
def test_graph_macs_equal_the_analytic_formula(tmp_path, method, prompt):
    model = tiny_model(method, prompt)
    cost = graph_cost(_export(model, tmp_path / "m.onnx"))
    analytic = vit_macs(model.info, 10, model.method.extra_tokens())
    assert cost.unknown == [] and cost.macs == analytic.total
    assert [cost.per_block[f"blocks.{i}"] for i in range(6)] == analytic.per_block
    # initializers after constant folding (test_vit resamples its position embedding at run time): within 2 %
    assert cost.params == pytest.approx(sum(p.numel() for p in model.backbone.parameters()), rel=0.02)


def test_graph_macs_of_a_cnn_match_torch_counting(tmp_path):
    from torch.utils.flop_counter import FlopCounterMode

    model = tiny_model("linear", backbone="test_efficientnet", img_size=32).eval()
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(torch.rand(1, 3, 32, 32))
    assert graph_cost(_export(model, tmp_path / "cnn.onnx")).macs == fc.get_total_flops() // 2


def test_latency_runner_honours_warmup_and_iterations():
    calls = []
    stats = measure(lambda: calls.append(1), batch=4, warmup=3, iters=25)
    assert len(calls) == 28 and stats.iters == 25 and stats.warmup == 3
    assert stats.min_ms <= stats.p50_ms <= stats.p90_ms <= stats.p99_ms <= stats.max_ms
    assert stats.throughput == pytest.approx(4000 / stats.mean_ms)
    combined = median_of([stats, stats])
    assert combined.iters == 50 and combined.p50_ms == stats.p50_ms
    with pytest.raises(ValueError):
        measure(lambda: None, 1, iters=0)


def test_profile_an_artifact_alone_via_cli(onnx_pair, tmp_path):
    bare, vpt = onnx_pair
    r = CliRunner().invoke(app, ["profile", str(vpt), "--against", str(bare), "--iters", "5", "--warmup", "1",
                                 "--rounds", "2", "--threads", "1", "--json", "--out", str(tmp_path / "p")])
    assert r.exit_code == 0, r.output
    result = json.loads(r.output)
    assert [row["variant"] for row in result["rows"]] == ["bare", "vpt"]
    ref, var = result["rows"]
    assert ref["ratio_p50"] == 1.0 and var["ratio_macs"] > 1.0 and var["macs"] > ref["macs"]
    assert ref["ratio_p50_rounds"] == [1.0, 1.0] and len(var["ratio_p50_rounds"]) == 2  # one ratio per round
    assert "ratio per round" in (tmp_path / "p" / "profile.md").read_text()
    assert result["conditions"]["vpt"]["providers"] == ["CPUExecutionProvider"]
    assert result["conditions"]["vpt"]["threads"] == 1
    for ext in ("json", "csv", "md"):
        assert (tmp_path / "p" / f"profile.{ext}").stat().st_size > 0


def test_artifact_profiling_needs_no_torch(onnx_pair):
    code = ("import sys; from edgevp.profile.worker import measure_artifact; "
            f"r = measure_artifact({str(onnx_pair[0])!r}, 'ort', 2, 1, 3); "
            "from edgevp.profile.compare import artifact_cost; artifact_cost(" + repr(str(onnx_pair[0])) + "); "
            "assert r['stats']['iters'] == 3 and r['conditions']['input_shape'][0] == 2; "
            "heavy = [m for m in ('torch', 'timm') if m in sys.modules]; assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)


TRTEXEC_OUT = """[11/23/2026-10:00:00] [I] === Performance summary ===
[11/23/2026-10:00:00] [I] Throughput: 812.5 qps
[11/23/2026-10:00:00] [I] Latency: min = 1.30 ms, max = 2.10 ms, mean = 1.40 ms, median = 1.38 ms, percentile(90%) = 1.50 ms, percentile(95%) = 1.60 ms, percentile(99%) = 1.90 ms
[11/23/2026-10:00:00] [I] GPU Compute Time: min = 1.10 ms, max = 1.90 ms, mean = 1.20 ms, median = 1.18 ms, percentile(90%) = 1.30 ms, percentile(95%) = 1.40 ms, percentile(99%) = 1.70 ms
[11/23/2026-10:00:00] [I] Total Host Walltime: 0.246 s
"""


def test_trtexec_summary_is_parsed():
    s = trtexec.parse(TRTEXEC_OUT, batch=2)
    assert (s.min_ms, s.p50_ms, s.p90_ms, s.p99_ms, s.max_ms, s.mean_ms) == (1.10, 1.18, 1.30, 1.70, 1.90, 1.20)
    assert s.throughput == pytest.approx(1625.0)
    cmd = trtexec.command("m.engine", 1, 50, 200)
    assert "--loadEngine=m.engine" in cmd and "--iterations=50" in cmd
    assert "--stronglyTyped" in trtexec.command("m.onnx", 4, 50, 200, input_chw=(3, 224, 224))
    with pytest.raises(ValueError):
        trtexec.parse("no summary here", 1)


def test_trtexec_honours_the_TRTEXEC_variable_the_bundle_documents(monkeypatch):
    monkeypatch.setenv("TRTEXEC", "/opt/custom/trtexec")
    assert trtexec.command("m.engine", 1, 50, 200)[0] == "/opt/custom/trtexec"


class _FakeCuda:
    def __init__(self):
        self.allocs, self.copies, self.syncs = [], 0, 0

    def malloc(self, n):
        self.allocs.append(n)
        return 1000 + len(self.allocs)

    def free(self, p):
        pass

    def copy_to_device(self, dst, src):
        self.copies += 1

    def stream(self):
        return 7

    def synchronize(self, s):
        self.syncs += 1


def _fake_tensorrt(monkeypatch, version="10.3.0", in_shape=(-1, 3, 32, 32)):
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.TensorIOMode = types.SimpleNamespace(INPUT="in", OUTPUT="out")

    class Logger:
        WARNING = 2

        def __init__(self, level):
            pass

    class Context:
        def __init__(self):
            self.shapes, self.addr, self.runs = {"input": list(in_shape), "logits": [-1, 10]}, {}, 0

        def set_input_shape(self, name, shape):
            self.shapes[name] = list(shape)
            self.shapes["logits"] = [shape[0], 10]

        def get_tensor_shape(self, name):
            return self.shapes[name]

        def set_tensor_address(self, name, ptr):
            self.addr[name] = ptr

        def execute_async_v3(self, stream):
            self.runs += 1
            return True

    class Engine:
        num_io_tensors = 2

        def get_tensor_name(self, i):
            return ["input", "logits"][i]

        def get_tensor_shape(self, name):
            return list(in_shape) if name == "input" else [in_shape[0], 10]

        def get_tensor_mode(self, name):
            return "in" if name == "input" else "out"

        def get_tensor_dtype(self, name):
            return "float32"

        def create_execution_context(self):
            self.ctx = Context()
            return self.ctx

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            return Engine() if data == b"ENGINE" else None

    trt.Logger, trt.Runtime, trt.nptype = Logger, Runtime, lambda dt: np.float32
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    return trt


def test_trt_runtime_with_a_fake_tensorrt(monkeypatch, tmp_path):
    from edgevp.runtime.engine import TrtEngineRunner

    _fake_tensorrt(monkeypatch)
    eng = tmp_path / "m.engine"
    eng.write_bytes(b"ENGINE")
    cuda = _FakeCuda()
    runner = TrtEngineRunner(eng, batch=4, cuda=cuda)
    assert runner.context.shapes["input"] == [4, 3, 32, 32]
    assert cuda.allocs == [4 * 3 * 32 * 32 * 4, 4 * 10 * 4] and cuda.copies == 1
    stats = measure(runner.infer, 4, warmup=2, iters=5, sync=runner.sync)
    assert runner.context.runs == 7 and cuda.syncs == 6 and stats.iters == 5
    bad = tmp_path / "bad.engine"
    bad.write_bytes(b"junk")
    with pytest.raises(IncompatibleError, match="could not deserialize"):
        TrtEngineRunner(bad, 1, cuda=cuda)


def test_trt_engine_for_another_batch_or_version(monkeypatch, tmp_path):
    from edgevp.runtime.engine import TrtEngineRunner

    _fake_tensorrt(monkeypatch, in_shape=(1, 3, 32, 32))
    eng = tmp_path / "m.engine"
    eng.write_bytes(b"ENGINE")
    with pytest.raises(ConfigError, match="built for batch 1, not 8"):
        TrtEngineRunner(eng, 8, cuda=_FakeCuda())
    (tmp_path / "m.json").write_text(json.dumps({"tensorrt_version": "11.4.0", "gpu": None}))
    with pytest.raises(IncompatibleError, match="built with TensorRT 11.4.0, this is 10.3.0"):
        TrtEngineRunner(eng, 1, cuda=_FakeCuda())


@pytest.mark.parametrize("args, code, message", [
    (["missing.onnx"], 6, "does not exist"),
    (["--backend", "nope", "X.onnx"], 2, "unknown backend"),
    (["--device", "cuda", "BARE"], 4, "no CUDAExecutionProvider"),
    (["--iters", "0", "BARE"], 2, "--iters >= 1"),
    (["CORRUPT"], 6, "not a readable ONNX model"),
])
def test_profile_errors(onnx_pair, tmp_path, args, code, message):
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"not onnx")
    (tmp_path / "X.onnx").write_bytes(b"")
    args = [str(onnx_pair[0]) if a == "BARE" else str(corrupt) if a == "CORRUPT" else
            str(tmp_path / a) if a.endswith(".onnx") else a for a in args]
    r = CliRunner().invoke(app, ["profile", *args, "--iters" if "--iters" not in args else "--warmup", "1",
                                 "--rounds", "1", "--out", str(tmp_path / "o")])
    assert r.exit_code == code, r.output
    assert message in r.output and "Traceback" not in r.output


def test_jetson_state_reads_clocks_and_warns(tmp_path):
    from edgevp.profile.device import jetson_state

    assert jetson_state(str(tmp_path)) is None
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/nv_tegra_release").write_text("# R36 (release), REVISION: 4.0\n")
    cpu = tmp_path / "sys/devices/system/cpu/cpu0/cpufreq"
    cpu.mkdir(parents=True)
    for f, v in (("scaling_cur_freq", "729600"), ("scaling_min_freq", "729600"), ("scaling_max_freq", "1728000"),
                 ("scaling_governor", "schedutil")):
        (cpu / f).write_text(v)
    state = jetson_state(str(tmp_path))
    assert state["l4t"].startswith("# R36") and state["cpu_clocks"]["cpu0"]["max_khz"] == "1728000"
    assert any("jetson_clocks" in w for w in state["warnings"])


def test_profile_a_condensed_run_in_torch_against_its_uncompressed_versions(tmp_path):
    from edgevp.condense.pc import PCOptions, condense_pc
    from edgevp.train import fit

    from ..conftest import tiny_config

    fit(tiny_config("vpt", {"num_tokens": 6}, train={"epochs": 1}), out=tmp_path / "vpt")
    condense_pc(tmp_path / "vpt", tmp_path / "pc", PCOptions(keep=0.25, finetune_epochs=0))
    r = CliRunner().invoke(app, ["profile", str(tmp_path / "pc"), "--backend", "torch", "--iters", "3", "--warmup",
                                 "1", "--rounds", "1", "--threads", "1", "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    names = [row["variant"] for row in res["rows"]]
    assert names == ["bare backbone", "uncondensed source", "vpt (this run)"]
    macs = {row["variant"]: row["ratio_macs"] for row in res["rows"]}
    assert macs["bare backbone"] == 1.0 < macs["vpt (this run)"] < macs["uncondensed source"]
    assert all(row["peak_rss_mib"] > 0 for row in res["rows"])
    assert (tmp_path / "pc" / "profile" / "profile.json").is_file()
    base = ["profile", str(tmp_path / "pc"), "--iters", "1", "--rounds", "1"]
    r = CliRunner().invoke(app, [*base, "--compile"])  # torch.compile is timed on CUDA only
    assert r.exit_code == 2 and "--backend torch" in r.output
    r = CliRunner().invoke(app, [*base, "--backend", "torch", "--compile"])
    assert r.exit_code == 2 and "--device cuda" in r.output
    if not torch.cuda.is_available():
        r = CliRunner().invoke(app, [*base, "--backend", "torch", "--device", "cuda"])
        assert r.exit_code == 4 and "no CUDA GPU" in r.output and "Traceback" not in r.output
    # the deployed forms through ONNX Runtime: export both runs, then the condensed run's references come first (the
    # TorchScript exporter: which exporter wrote the graphs is not what is profiled, and it takes a tenth of the time)
    for run in ("vpt", "pc"):
        r = CliRunner().invoke(app, ["export", str(tmp_path / run), "--with-references", "--exporter", "legacy"])
        assert r.exit_code == 0, r.output
    other = tmp_path / "vpt" / "export" / "unfolded.onnx"
    r = CliRunner().invoke(app, ["profile", str(tmp_path / "pc"), "--against", f"vpt unfolded={other}", "--iters", "3",
                                 "--warmup", "1", "--rounds", "1", "--threads", "1", "--json"])
    assert r.exit_code == 0, r.output
    rows = {row["variant"]: row for row in json.loads(r.output)["rows"]}
    assert list(rows) == ["bare backbone", "unfolded prompts", "uncondensed source (folded)", "folded (this run)",
                          "vpt unfolded"]
    macs = [row["ratio_macs"] for row in rows.values()]
    assert macs[0] == 1.0 < macs[3] < macs[2] and macs[3] < macs[1]
    assert rows["folded (this run)"]["role"] == "this run"
