"""Many tasks, one engine: packed graphs equal each task's own export, mixed batches equal per-sample results, tables
as inputs take new tasks without a new graph, and every bad input is one line with a documented exit code."""
from __future__ import annotations

import copy
import json

import numpy as np
import onnx
import pytest
import torch
from typer.testing import CliRunner

from edgevp.cli import app
from edgevp.export.fold import fix_img_size, to_deploy
from edgevp.export.pipeline import ExportOptions, export_run
from edgevp.multitask.model import PackedModel
from edgevp.multitask.tables import PAD_LOGIT, fit_to_capacity, stack_tables, task_fold

from ..conftest import tiny_model

runner = CliRunner()


def _randomise(model):
    """Prompts far from zero, so a fold that dropped them could not pass."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.method.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model.eval()


def _packed(models, tables_as_inputs=False):
    folds = []
    for m in models:
        work = copy.deepcopy(m).eval()
        backbone = work.detach_method()
        fix_img_size(backbone)
        folds.append(task_fold(work, backbone))
    work = copy.deepcopy(models[0]).eval()
    backbone = work.detach_method()
    fix_img_size(backbone)
    tables, report = stack_tables(folds, backbone, work.std[0])
    return PackedModel(backbone, work.mean, work.std, True, tables, tables_as_inputs), tables, report


MIXED = [("vpt", {"num_tokens": 3}), ("lorvp", None), ("linear", None), ("e2vpt", {"num_tokens": 2, "num_kv": 3}),
         ("vpt", {"num_tokens": 5, "tokens_per_layer": [5, 0, 2, 1, 3, 4]})]


def test_pack_targets_are_registered_export_targets():
    """A pack is built for export targets: every `--target` it takes is one `edgevp export` registers (so the two
    cannot drift apart), and none is int8 (calibration is per task)."""
    from typing import get_args, get_type_hints

    from edgevp.export.targets import list_targets
    from edgevp.multitask.tasks import PackOptions

    pack_targets = get_args(get_type_hints(PackOptions)["target"])
    assert "onnx" in pack_targets and set(pack_targets) <= set(list_targets())
    assert not [t for t in pack_targets if t.endswith("int8")]


@pytest.mark.parametrize("tables_as_inputs", [False, True])
def test_packed_graph_equals_each_tasks_deploy_form_and_mixed_batches(digits_batch, tables_as_inputs):
    models = [_randomise(tiny_model(m, p)) for m, p in MIXED]
    packed, tables, report = _packed(models, tables_as_inputs)
    assert report["pixel"] == "pos_embed" and report["kv_columns"][1] == [3, 0, 0, 5, 0]
    extra = tuple(tables.flat().values()) if tables_as_inputs else ()
    x = digits_batch
    with torch.no_grad():
        per_task = []
        for t, m in enumerate(models):
            own = to_deploy(m)(x)
            got = packed(x, torch.full((len(x),), t), *extra)
            torch.testing.assert_close(got, own, rtol=0, atol=1e-5)
            assert not torch.equal(own, to_deploy(models[0])(x)) or t == 0  # the tasks really differ
            per_task.append(got)
        task = torch.tensor([4, 0, 3, 1, 2, 0, 1, 4])
        mixed = packed(x, task, *extra)
        expect = torch.stack([per_task[t][i] for i, t in enumerate(task.tolist())])
        torch.testing.assert_close(mixed, expect, rtol=0, atol=1e-6)
        out_of_range = packed(x[:3], torch.tensor([0, 5, -1]), *extra)
    assert torch.isnan(out_of_range[1:]).all() and not torch.isnan(out_of_range[0]).any()


def test_padded_key_columns_get_exactly_zero_weight(digits_batch):
    """A task with fewer columns than the table holds computes exactly what it computes alone."""
    small = _randomise(tiny_model("vpt", {"num_tokens": 1}))
    large = _randomise(tiny_model("vpt", {"num_tokens": 6}))
    alone, _, _ = _packed([small])
    together, tables, _ = _packed([small, large])
    assert tables.kv[0][0].shape[2] == 6 and torch.isinf(tables.kv[0][2][0, 1:]).all()
    with torch.no_grad():
        a = alone(digits_batch, torch.zeros(len(digits_batch), dtype=torch.long))
        b = together(digits_batch, torch.zeros(len(digits_batch), dtype=torch.long))
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_fewer_classes_pad_with_a_large_negative_logit():
    from edgevp.multitask.tables import TaskFold

    a = _randomise(tiny_model("linear"))

    fold = TaskFold(None, [None] * 6, torch.randn(4, 64), torch.randn(4))
    stacked, rep = stack_tables([fold, TaskFold(None, [None] * 6, torch.randn(10, 64), torch.randn(10))],
                                copy.deepcopy(a).detach_method(), a.std[0])
    assert rep["classes"] == [4, 10] and torch.all(stacked.head_bias[0, 4:] == PAD_LOGIT)
    assert torch.all(stacked.head_weight[0, 4:] == 0)


def test_vpt_shallow_token_slots_padded_for_another_task_have_exactly_zero_effect(digits_batch):
    """A shallow task with fewer tokens than the table holds (or none: a deep task) computes what it computes alone."""
    small = _randomise(tiny_model("vpt", {"num_tokens": 1, "deep": False}))
    large = _randomise(tiny_model("vpt", {"num_tokens": 4, "deep": False}))
    deep = _randomise(tiny_model("vpt", {"num_tokens": 2}))
    together, tables, report = _packed([small, large, deep])
    assert report["prompt_tokens"] == [1, 4, 0] and tables.tokens.shape[1] == 4
    assert torch.isinf(tables.token_mask[0, 1:]).all() and torch.isinf(tables.token_mask[2]).all()
    for t, model in enumerate((small, large, deep)):
        alone, _, _ = _packed([model])
        task = torch.full((len(digits_batch),), t)
        with torch.no_grad():
            a = alone(digits_batch, torch.zeros_like(task))
            b = together(digits_batch, task)
            torch.testing.assert_close(b, to_deploy(model)(digits_batch), rtol=0, atol=1e-5)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_tables_that_do_not_fit_the_graph_are_refused():
    flat = {"head_weight": torch.zeros(1, 12, 8), "head_bias": torch.zeros(1, 12)}
    with pytest.raises(Exception, match="larger than the graph's"):
        fit_to_capacity(flat, {"head_weight": (10, 8), "head_bias": (10,)})
    with pytest.raises(Exception, match="has no input for"):
        fit_to_capacity({**flat, "pos_delta": torch.zeros(1, 4, 8)}, {"head_weight": (12, 8), "head_bias": (12,)})
    padded = fit_to_capacity({"head_weight": torch.ones(1, 3, 8), "head_bias": torch.ones(1, 3)},
                             {"head_weight": (5, 8), "head_bias": (5,), "kv_mask_0": (2,)})
    assert padded["head_bias"][0, 3:].eq(PAD_LOGIT).all() and torch.isinf(padded["kv_mask_0"]).all()


# -- the real command, on trained runs --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def runs(tmp_path_factory, run_cache):
    root = tmp_path_factory.mktemp("pack_runs")
    out = {name: run_cache.get(cached, root / name) for name, cached in
           (("vpt", "vpt2"), ("lorvp", "lorvp"), ("e2vpt", "e2vpt"), ("other_backbone", "linear_seed5"))}
    export_run(out["vpt"], ExportOptions(exporter="legacy"))  # e2vpt and lorvp: pack exports them itself
    return out


def test_pack_cli_gates_and_writes_tasks(runs, tmp_path):
    out = tmp_path / "pack"
    r = runner.invoke(app, ["pack", str(runs["vpt"]), str(runs["lorvp"]), str(runs["e2vpt"]), "-o", str(out),
                            "--gate-images", "8"])
    assert r.exit_code == 0, r.output
    side = json.loads((out / "pack.json").read_text())
    assert side["status"] == "ok" and [t["run"] for t in side["tasks"]] == ["vpt", "lorvp", "e2vpt"]
    assert all(p["max_abs"] <= 1e-4 and p["top1_agreement"] == 1.0 for p in side["parity"]["per_task"])
    assert side["parity"]["mixed_batch"]["max_abs"] <= 1e-4 and (runs["lorvp"] / "export" / "model.onnx").is_file()
    tasks = json.loads((out / "tasks.json").read_text())
    assert tasks["pad_logit"] == PAD_LOGIT and tasks["tasks"][1]["method"] == "lorvp"
    model = onnx.load(str(out / "model.onnx"))
    assert [i.name for i in model.graph.input] == ["images", "task"]
    meta = {p.key: p.value for p in model.metadata_props}
    assert [t["run"] for t in json.loads(meta["tasks"])] == ["vpt", "lorvp", "e2vpt"]
    # the artifact runs on ONNX Runtime with a mixed batch, and an out-of-range id is NaN for that sample only
    import onnxruntime as ort

    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((3, 3, 32, 32), dtype=np.float32)
    y = sess.run(None, {"images": x, "task": np.array([2, 0, 7], dtype=np.int64)})[0]
    assert np.isnan(y[2]).all() and np.isfinite(y[:2]).all()
    r = runner.invoke(app, ["profile", str(out / "model.onnx"), "--iters", "2", "--warmup", "1", "--rounds", "1",
                            "--task", "1"])
    assert r.exit_code == 0, r.output
    rows = json.loads((out / "profile" / "profile.json").read_text())["rows"]  # the task is a field, not in a path
    assert {(row["artifact"], row["task"]) for row in rows} == {(str(out / "model.onnx"), "1")}
    r = runner.invoke(app, ["profile", str(out / "model.onnx"), "--iters", "2", "--warmup", "1", "--rounds", "1",
                            "--task", "3"])
    assert r.exit_code == 2 and "task 3 is out of range" in r.output


def test_tables_as_inputs_take_new_tasks_without_a_new_graph(runs, tmp_path):
    out = tmp_path / "pack"
    r = runner.invoke(app, ["pack", str(runs["vpt"]), str(runs["e2vpt"]), "-o", str(out), "--tables-as-inputs",
                            "--gate-images", "8"])
    assert r.exit_code == 0, r.output
    graph = (out / "model.onnx").read_bytes()
    names = [i.name for i in onnx.load(str(out / "model.onnx")).graph.input]
    assert names[:2] == ["images", "task"] and "head_weight" in names and "kv_mask_0" in names
    r = runner.invoke(app, ["pack", str(runs["e2vpt"]), str(runs["lorvp"]), str(runs["vpt"]), "-o", str(out),
                            "--update-tables", "--gate-images", "8"])
    assert r.exit_code == 0, r.output
    assert (out / "model.onnx").read_bytes() == graph  # the same graph serves three tasks now
    side = json.loads((out / "pack.json").read_text())
    assert [t["run"] for t in side["tasks"]] == ["e2vpt", "lorvp", "vpt"]
    assert all(p["max_abs"] <= 1e-4 for p in side["parity"]["per_task"])
    with np.load(out / "tables.npz") as npz:
        assert len(npz["head_weight"]) == 3
    # a table file that does not match the graph: one line, exit 6
    with np.load(out / "tables.npz") as npz:
        bad = {k: npz[k] for k in npz.files}
    bad["head_weight"] = bad["head_weight"][:, :, :5]
    np.savez(out / "tables.npz", **bad)
    r = runner.invoke(app, ["profile", str(out / "model.onnx"), "--iters", "2", "--warmup", "1", "--rounds", "1"])
    assert r.exit_code == 6 and "does not match this model" in r.output


def test_reserved_key_value_columns_take_a_prompt_task_into_a_pixel_only_pack(runs, tmp_path):
    out = tmp_path / "pack"
    r = runner.invoke(app, ["pack", str(runs["lorvp"]), "-o", str(out), "--tables-as-inputs", "--kv-capacity", "3",
                            "--gate-images", "8"])
    assert r.exit_code == 0, r.output
    with np.load(out / "tables.npz") as npz:
        assert npz["kv_key_0"].shape[2] == 3 and np.isinf(npz["kv_mask_0"]).all()  # reserved, all masked
    r = runner.invoke(app, ["pack", str(runs["lorvp"]), str(runs["vpt"]), "-o", str(out), "--update-tables",
                            "--gate-images", "8"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["pack", str(runs["vpt"]), str(runs["e2vpt"]), "-o", str(out), "--update-tables"])
    assert r.exit_code == 2 and "larger than the graph's" in r.output  # E²VPT's 2 + 2 columns > the 3 reserved
    assert json.loads((out / "pack.json").read_text())["tasks"][1]["run"] == "vpt"  # unchanged after the refusal


def test_ort_fp16_and_trt_bundle(runs, tmp_path):
    r = runner.invoke(app, ["pack", str(runs["vpt"]), str(runs["lorvp"]), "-o", str(tmp_path / "a"), "--target",
                            "ort-fp16", "--gate-images", "8"])
    assert r.exit_code == 0, r.output
    side = json.loads((tmp_path / "a" / "pack.json").read_text())
    assert side["files"][0] == "model.fp16.onnx" and len(side["accuracy_vs_fp32"]) == 2
    r = runner.invoke(app, ["pack", str(runs["vpt"]), str(runs["lorvp"]), "-o", str(tmp_path / "b"), "--target",
                            "trt-fp16", "--tables-as-inputs", "--gate-images", "8", "--max-tasks", "32"])
    assert r.exit_code == 4 and "TensorRT is not installed" in r.output, r.output  # the bundle is written, as export
    bundle = tmp_path / "b" / "trt-fp16"
    assert json.loads((tmp_path / "b" / "pack.json").read_text())["conformance"]["ok"]
    script = (bundle / "build_engine.sh").read_text()
    assert "images:8x3x32x32" in script and "head_weight:32x10x" in script and "head_weight:1x10x" in script
    assert {"model.fp16.onnx", "tables.npz", "tasks.json", "README.md"} <= {p.name for p in bundle.iterdir()}
    _triton_serves_the_frozen_tables_with_task_per_request(bundle)


def _triton_serves_the_frozen_tables_with_task_per_request(bundle):
    """Tables as inputs have no batch axis, so triton/pack_onnx serves the graph with them as constants: `images` and
    `task` per request under dynamic batching (checked with Triton's own protobuf), the same logits as the bundle's
    graph fed the tables, on a mixed batch."""
    import onnxruntime as ort
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    cfg = text_format.Parse((bundle / "triton" / "pack_onnx" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert cfg.HasField("dynamic_batching") and cfg.max_batch_size == 8 and cfg.platform == "onnxruntime_onnx"
    task = next(i for i in cfg.input if i.name == "task")
    assert task.data_type == model_config_pb2.TYPE_INT64 and list(task.dims) == [1] and list(task.reshape.shape) == []
    assert not (bundle / "triton" / "pack").exists()  # no engine Triton could batch: it takes the tables as inputs
    frozen = ort.InferenceSession(str(bundle / "triton" / "pack_onnx" / "1" / "model.onnx"))
    assert [i.name for i in frozen.get_inputs()] == ["images", "task"]
    full = ort.InferenceSession(str(bundle / "model.fp16.onnx"))
    with np.load(bundle / "tables.npz") as npz:
        tables = {k: npz[k] for k in npz.files}
    x = np.random.default_rng(1).random((4, 3, 32, 32), dtype=np.float32)
    t = np.array([1, 0, 0, 1])
    assert np.array_equal(frozen.run(None, {"images": x, "task": t})[0],
                          full.run(None, {"images": x, "task": t, **tables})[0])


@pytest.mark.parametrize("args, code, message", [
    ([], 2, "at least one run"),
    (["{vpt}", "{vpt}"], 2, "given twice"),
    (["{vpt}", "{other_backbone}"], 2, "differ in backbone weights"),
    (["{vpt}", "/nonexistent"], 6, "not an edgevp run directory"),
    (["{vpt}", "--target", "tflite"], 2, "'tflite' is not one of"),
    (["{vpt}", "--gate-images", "0"], 2, "must be >= 1"),
    (["{vpt}", "--update-tables"], 6, "holds no pack"),
])
def test_pack_bad_input(runs, tmp_path, args, code, message):
    out = tmp_path / "out"
    argv = [a.format(**{k: str(v) for k, v in runs.items()}) for a in args]
    r = runner.invoke(app, ["pack", *argv, "-o", str(out)])
    assert r.exit_code == code, r.output
    assert message in r.output and "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1
    assert not (out / "pack.json").exists()
