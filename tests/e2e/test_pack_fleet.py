"""Packs at fleet scale (issue 21, part A): 64 tasks of every method (VPT-shallow included) in one graph, a Swin pack
of mixed methods, and per-task tables stored in fp16 behind a gate. Each task is checked against its own deploy form
on a shuffled batch that mixes all of them; one task per method also against its own ONNX export.

The 64 tasks are derived from one tiny model per method by deterministic perturbation of its prompts and head (seeded
by the task id), so no training is needed; the fp16 gate runs the real command on two 1-epoch runs."""
from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from edgevp.checkpoints import read_checkpoint, save_checkpoint
from edgevp.cli import app
from edgevp.export.fold import deploy_copy, to_deploy
from edgevp.export.onnx import export_onnx, run_ort, session
from edgevp.multitask.graph import export_pack, run_pack
from edgevp.multitask.model import PackedModel
from edgevp.multitask.tables import stack_tables, task_fold
from edgevp.runs import RunDir
from edgevp.train import fit

from ..conftest import tiny_config, tiny_model
from ..unit.test_swin import SWIN

runner = CliRunner()
VIT_METHODS = [("linear", None), ("lorvp", None), ("pad", {"size": 4}), ("vpt", {"num_tokens": 3}),
               ("vpt", {"num_tokens": 4, "tokens_per_layer": [4, 0, 2, 1, 3, 4]}),  # a condensed run's counts
               ("e2vpt", {"num_tokens": 2, "num_kv": 3}), ("vpt", {"num_tokens": 2, "deep": False}),
               ("vpt", {"num_tokens": 5, "deep": False})]
SWIN_METHODS = [("linear", None), ("lorvp", None), ("pad", {"size": 4}), ("vpt", {"num_tokens": 3, "deep": True}),
                ("vpt", {"num_tokens": 3, "tokens_per_layer": [3, 0, 1, 2, 0, 3]}),
                ("e2vpt", {"num_tokens": 2, "num_kv": 2, "segments": 4})]


def _derive(base, seed: int, classes: int):
    """A copy of `base` with its prompts and a `classes`-way head drawn from `seed`: another task's constants."""
    model = copy.deepcopy(base).eval()
    g = torch.Generator().manual_seed(seed)
    model.backbone.reset_classifier(classes)
    with torch.no_grad():
        for p in [*model.method.parameters(), *model.backbone.get_classifier().parameters()]:
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model


def _fleet(methods, count: int, backbone: str = "test_vit"):
    """`count` tasks cycling over `methods` on one backbone (the same seed builds the same frozen weights), with 4 to
    10 classes."""
    bases = [tiny_model(m, p, backbone=backbone) for m, p in methods]
    return [_derive(bases[i % len(bases)], 1000 + i, 4 + i % 7) for i in range(count)]


def _pack(models, tables_as_inputs: bool):
    folds = []
    for m in models:
        work, backbone, _ = deploy_copy(m)
        folds.append(task_fold(work, backbone))
    work, backbone, _ = deploy_copy(models[0])
    tables, report = stack_tables(folds, backbone, work.std[0], reserve=tables_as_inputs)
    return PackedModel(backbone, work.mean, work.std, True, tables, tables_as_inputs), tables, report


def _export(packed, tables, models, path, tables_as_inputs: bool):
    """The pack's ONNX through the command's own writer (`export_pack`), with stand-ins for the runs' records."""
    tasks = [SimpleNamespace(model=m, run=SimpleNamespace(name=f"task{i}"), cfg=SimpleNamespace(
        method=m.method.name, backbone=SimpleNamespace(name="tiny")), classes=[str(c) for c in range(
            m.backbone.get_classifier().out_features)]) for i, m in enumerate(models)]
    opts = SimpleNamespace(tables_as_inputs=tables_as_inputs, opset=17, platform="all", include_preprocess=True)
    return export_pack(packed, tables, tasks, opts, {}, path)


def _images(n: int) -> np.ndarray:
    from sklearn.datasets import load_digits

    imgs = torch.from_numpy(load_digits().images[:n].astype(np.float32) / 16.0)[:, None]
    x = torch.nn.functional.interpolate(imgs, size=(32, 32), mode="bilinear").expand(-1, 3, -1, -1)
    return x.contiguous().numpy()


def _mixed_batch_equals_each_own_deploy_form(models, sess, flat, per_task: int = 2) -> float:
    """Every task gets `per_task` images; the pack runs them in one shuffled batch order (8 at a time, so every batch
    mixes tasks); returns the worst max abs logit vs each task's own deploy form on its images."""
    x = _images(per_task * len(models))
    task = np.repeat(np.arange(len(models)), per_task)
    order = np.random.default_rng(0).permutation(len(x))
    got = run_pack(sess, x[order], task[order], flat, batch=8)[np.argsort(order)]  # back in task order
    worst = 0.0
    with torch.no_grad():
        for t, model in enumerate(models):
            rows = slice(t * per_task, (t + 1) * per_task)
            own = to_deploy(model)(torch.from_numpy(x[rows])).numpy()
            assert np.all(got[rows, own.shape[1]:] == -1.0e4)  # the task's unused class columns
            worst = max(worst, float(np.abs(got[rows, :own.shape[1]] - own).max()))
    return worst


def test_64_tasks_of_every_method_equal_their_own_exports_on_a_shuffled_mixed_batch(tmp_path):
    models = _fleet(VIT_METHODS, 64)
    packed, tables, report = _pack(models, tables_as_inputs=True)
    assert tables.num_tasks == 64 and report["pixel"] == "pos_embed"
    assert report["prompt_tokens"][6:16] == [2, 5, 0, 0, 0, 0, 0, 0, 2, 5] and tables.tokens.shape == (64, 5, 64)
    assert report["kv_columns"][1][:8] == [0, 0, 0, 3, 0, 5, 0, 0]  # condensed: none in block 1; E²VPT: 2 + 3
    meta = _export(packed, tables, models, tmp_path / "pack.onnx", tables_as_inputs=True)
    assert "prompt_tokens" in meta["inputs"] and "prompt_token_mask" in meta["inputs"]
    flat = {k: v.numpy() for k, v in tables.flat().items()}
    worst = _mixed_batch_equals_each_own_deploy_form(models, session(tmp_path / "pack.onnx"), flat)
    assert worst <= 1e-4
    # one task of each method against its own ONNX export (the file `edgevp export` writes from the deploy form)
    x = _images(8)
    sess = session(tmp_path / "pack.onnx")
    for i, m in enumerate(models[:len(VIT_METHODS)]):
        export_onnx(to_deploy(m), tmp_path / f"own{i}.onnx", (3, 32, 32), exporter="legacy")
        own = run_ort(session(tmp_path / f"own{i}.onnx"), x, 8)
        got = run_pack(sess, x, np.full(8, i), flat)
        assert np.abs(got[:, :own.shape[1]] - own).max() <= 1e-4, m.method.name
    # the tasks really differ: a pack that served task 0's constants to everyone could not pass
    with torch.no_grad():
        a, b = (packed(torch.from_numpy(x), torch.full((8,), t), *tables.flat().values()) for t in (6, 14))
    assert (a - b).abs().max() > 1e-2


def test_a_swin_pack_of_mixed_methods_equals_each_tasks_own_export(tmp_path):
    models = _fleet(SWIN_METHODS, 12, backbone=SWIN)
    packed, tables, report = _pack(models, tables_as_inputs=False)
    assert report["pixel"] == "input_bias" and report["kv_columns"][1][:6] == [0, 0, 0, 3, 0, 4]
    _export(packed, tables, models, tmp_path / "pack.onnx", tables_as_inputs=False)
    worst = _mixed_batch_equals_each_own_deploy_form(models, session(tmp_path / "pack.onnx"), {})
    assert worst <= 1e-4
    x = _images(8)
    for i in (3, 5):  # VPT-deep and E²VPT: window attention with per-sample key/value columns
        export_onnx(to_deploy(models[i]), tmp_path / f"own{i}.onnx", (3, 32, 32), exporter="legacy")
        own = run_ort(session(tmp_path / f"own{i}.onnx"), x, 8)
        got = run_pack(session(tmp_path / "pack.onnx"), x, np.full(8, i), {})
        assert np.abs(got[:, :own.shape[1]] - own).max() <= 1e-4


def test_vpt_shallow_on_swin_is_refused_in_one_line():
    """Its prompt rows evolve with the image and are merged between stages: no deploy form, so no task form."""
    from edgevp.errors import ConfigError

    with pytest.raises(ConfigError, match="VPT-shallow on a Swin backbone has no deploy form"):
        _pack([tiny_model("linear", backbone=SWIN), tiny_model("vpt", {"num_tokens": 2, "deep": False},
                                                              backbone=SWIN)], False)


def test_fp16_tables_halve_the_table_bytes_within_fp16_rounding():
    models = _fleet(VIT_METHODS, 16)
    packed, tables, _ = _pack(models, tables_as_inputs=True)
    half = tables.stored(torch.float16)
    packed16 = PackedModel(packed.backbone, packed.mean, packed.std, True, half, True)
    for name, t in tables.flat().items():  # prompts and heads in half the bytes; masks and row ids as they were
        kept = "mask" in name or "row" in name
        assert half.flat()[name].dtype == (t.dtype if kept else torch.float16), name
    x = torch.from_numpy(_images(16))
    task = torch.arange(16)
    with torch.no_grad():
        a = packed(x, task, *tables.flat().values())
        b = packed16(x, task, *half.flat().values())
    assert 0 < (a - b).abs().max() <= 0.05 and torch.equal(a.argmax(1), b.argmax(1))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("fleet_runs")
    fit(tiny_config("vpt", {"num_tokens": 2, "deep": False}, train={"epochs": 1}), out=root / "shallow")
    fit(tiny_config("e2vpt", {"num_tokens": 2, "num_kv": 2}, train={"epochs": 1}), out=root / "e2vpt")
    return root


def test_fp16_tables_pass_the_gate_per_task_and_are_stored_in_fp16(runs, tmp_path):
    out = tmp_path / "pack"
    r = runner.invoke(app, ["pack", str(runs / "shallow"), str(runs / "e2vpt"), "-o", str(out), "--tables-as-inputs",
                            "--table-dtype", "float16", "--gate-images", "8"])
    assert r.exit_code == 0, r.output
    side = json.loads((out / "pack.json").read_text())
    assert all(p["fp16_tables"]["failed"] is None and 0 < p["max_abs"] for p in side["parity"]["per_task"])
    assert side["parity"]["mixed_batch"]["max_abs"] == 0.0
    with np.load(out / "tables.npz") as npz:
        assert npz["prompt_tokens"].dtype == np.float16 and npz["kv_key_0"].dtype == np.float16
        assert npz["kv_mask_0"].dtype == np.float32 and npz["kv_row_0"].dtype == np.int64
    r = runner.invoke(app, ["profile", str(out / "model.onnx"), "--iters", "2", "--warmup", "1", "--rounds", "1",
                            "-o", str(tmp_path / "prof")])
    assert r.exit_code == 0, r.output  # the device-side feeds give the graph its fp16 tables


def test_a_head_that_fp16_cannot_hold_fails_the_fp16_table_gate(runs, tmp_path):
    """Head weights below fp16's smallest subnormal become 0: every logit ties, so top-1 agreement collapses."""
    import shutil

    run = shutil.copytree(runs / "e2vpt", tmp_path / "tiny_head")
    shutil.rmtree(run / "export", ignore_errors=True)
    cfg = RunDir(run).config()
    for ckpt in (run / "checkpoints").glob("*.safetensors"):
        state, meta = read_checkpoint(ckpt, cfg)
        state["head.weight"], state["head.bias"] = state["head.weight"] * 1e-9, torch.zeros_like(state["head.bias"])
        save_checkpoint(ckpt, state, cfg, **meta)
    r = runner.invoke(app, ["pack", str(run), "-o", str(tmp_path / "fp16"), "--table-dtype", "float16",
                            "--gate-images", "16"])
    assert r.exit_code == 3 and "with fp16 tables vs its own export: top-1 agreement" in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1


def test_fp16_tables_with_an_fp16_target_are_refused_before_any_work(tmp_path):
    r = runner.invoke(app, ["pack", str(tmp_path / "never_read"), "-o", str(tmp_path / "out"), "--target", "ort-fp16",
                            "--table-dtype", "float16"])
    assert r.exit_code == 2 and "--table-dtype float16 is for the fp32 targets" in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1 and not (tmp_path / "out").exists()
