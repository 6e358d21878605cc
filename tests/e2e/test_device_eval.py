"""Issue 12, on the device: `edgevp eval` / `edgevp predict` on deployed artifacts (torch-free), the test split every
export carries (test.npz), and TensorRT bundles that drop into Jetson tooling (labels.txt, DeepStream nvinfer config,
Triton model repository), each file parsed by a real parser."""
from __future__ import annotations

import configparser
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edgevp.cli import app
from edgevp.errors import IncompatibleError, MissingError
from edgevp.export.pipeline import ExportOptions, export_run
from edgevp.train import fit

from ..conftest import tiny_config
from .. import support


def _cli(*args) -> "CliRunner.Result":
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A tiny VPT run exported three ways: fp32 ONNX, a TensorRT fp32 device bundle (no TensorRT here: exit 4 after
    the bundle is written), int8 ONNX."""
    run = tmp_path_factory.mktemp("device_eval") / "vpt"
    fit(tiny_config("vpt", {"num_tokens": 4}, train={"epochs": 1}), out=run)
    for target in ("onnx", "trt-fp32", "ort-int8"):
        try:
            export_run(run, ExportOptions(target=target, exporter="legacy", gate_images=16, simplify="none"))
        except MissingError:
            assert target.startswith("trt-")
    return run


@pytest.fixture(scope="module")
def digits_folder(tmp_path_factory) -> Path:
    """ROOT/<class>/<image>.png from real digit pixels (sklearn's 8x8 digits, grey PNGs), 4 per class."""
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    root = tmp_path_factory.mktemp("digits")
    for c in range(10):
        (root / str(c)).mkdir()
        for j, i in enumerate(np.flatnonzero(d.target == c)[-4:]):
            Image.fromarray(np.clip(d.images[i] * 255 / 16, 0, 255).round().astype(np.uint8)).save(
                root / str(c) / f"{j}.png")
    return root


def _one_line(r) -> str:
    assert r.output.strip().count("\n") == 0 and "Traceback" not in r.output, r.output
    return r.output


def test_eval_fp32_equals_pytorch_on_the_bundled_test_split(run, tmp_path):
    from edgevp.export.onnx import torch_logits
    from edgevp.model import load_run

    export = run / "export"
    side = json.loads((export / "model.json").read_text())
    assert "test.npz" in side["files"] and side["test_split"]["cap"] == 500 and side["test_split"]["images"] == 32
    with np.load(export / "test.npz") as z:
        images, labels, names = z["images"], z["labels"], list(z["class_names"])
        stored_torch = float(z["torch_top1"])
    assert images.dtype == np.uint8 and images.shape == (32, 3, 32, 32) and names == [str(i) for i in range(10)]

    r = _cli("eval", export / "model.onnx", "--batch", "7")  # the test split beside it; batches that do not divide
    assert r.exit_code == 0, r.output
    doc = json.loads((export / "eval" / "model.onnx" / "eval.json").read_text())
    # PyTorch (the run's best checkpoint) on exactly these images
    _, model, _ = load_run(run, "best")
    ref = float((torch_logits(model, images.astype(np.float32) / 255).argmax(1) == labels).mean() * 100)
    assert doc["top1"] == ref == stored_torch
    manifest = json.loads((run / "manifest.json").read_text())
    c = doc["comparison"]
    assert c["test_top1"] == manifest["train_info"]["test_top1"] and c["torch_top1_same_images"] == ref
    assert c["checkpoint_matches"] is True and c["run_name"] == run.name
    assert doc["images"] == 32 and doc["skipped"] == 0 and doc["artifact"]["precision"] == "fp32"
    assert sum(p["images"] for p in doc["per_class"]) == 32
    assert doc["top5"] >= doc["top1"]
    out = export / "eval" / "model.onnx"
    conf = (out / "confusion.csv").read_text().splitlines()
    assert len(conf) == 11 and sum(int(v) for line in conf[1:] for v in line.split(",")[1:]) == 32
    assert (out / "eval.csv").read_text().startswith("class,index,images,correct,top1")
    assert (out / "confusion.png").is_file()
    assert "top-1" in r.output and "PyTorch on the same images" in r.output


def test_eval_int8_and_the_bundle_onnx(run, tmp_path):
    export = run / "export"
    r = _cli("eval", export / "model.int8.onnx", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert doc["artifact"]["precision"] == "int8" and doc["artifact"]["classes"] == 10 and doc["images"] == 32
    # a TensorRT bundle directory without TensorRT: its ONNX and its own copy of the test split
    bundle = export / "trt-fp32"
    assert (bundle / "test.npz").read_bytes() == (export / "test.npz").read_bytes()
    r = _cli("eval", bundle)
    assert r.exit_code == 0, r.output
    doc = json.loads((bundle / "eval" / "model.onnx" / "eval.json").read_text())
    assert doc["comparison"]["run_name"] == run.name and doc["top1"] == doc["comparison"]["torch_top1_same_images"]
    # `edgevp report` gains the deployed top-1 column
    r = _cli("report", run, "-o", tmp_path / "report")
    assert r.exit_code == 0, r.output
    (row,) = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert set(row["deployed_top1_values"]) == {"fp32", "int8"} and row["deployed_top1_values"]["fp32"] == doc["top1"]
    assert "deployed top-1" in (tmp_path / "report" / "report.md").read_text()


def test_preprocessing_matches_the_training_pipeline(digits_folder):
    import torch

    from edgevp.data import ImageTransform
    from edgevp.device.preprocess import Preprocess
    from edgevp.runtime.decode import read_image

    pre = Preprocess(size=(32, 32), interpolation="bicubic")
    for resize in ("direct", "timm"):
        pre.resize, pre.crop_pct = resize, 0.95
        tf = ImageTransform(size=32, interpolation="bicubic", resize=resize, crop_pct=0.95)
        for f in sorted(digits_folder.rglob("*.png"))[:5]:
            want = tf(torch.from_numpy(read_image(str(f)))[None].float() / 255).numpy()
            got = pre.image(f)
            assert got.shape == want.shape == (3, 32, 32) and np.array_equal(got, want), resize


def test_eval_on_an_image_folder_and_class_mismatch(run, digits_folder, tmp_path):
    r = _cli("eval", run / "export" / "model.onnx", "--data", digits_folder, "-o", tmp_path / "e")
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "e" / "eval.json").read_text())
    assert doc["images"] == 40 and doc["data"]["kind"] == "folder" and len(doc["per_class"]) == 10
    # classes that are not the artifact's: one line, exit 5
    bad = tmp_path / "pets"
    for c in ("cat", "dog"):
        (bad / c).mkdir(parents=True)
        (bad / c / "a.png").write_bytes((digits_folder / "1" / "0.png").read_bytes())
    r = _cli("eval", run / "export" / "model.onnx", "--data", bad)
    assert r.exit_code == 5 and "do not match" in _one_line(r) and "'cat'" in r.output


def test_predict_skips_an_undecodable_image_and_strict_stops(run, digits_folder, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for c in ("3", "7"):
        (folder / f"{c}.png").write_bytes((digits_folder / c / "0.png").read_bytes())
    (folder / "broken.png").write_bytes(b"not a png at all")
    model = run / "export" / "model.onnx"
    r = CliRunner().invoke(app, ["predict", str(model), str(folder), "-k", "3", "--batch", "2"])
    assert r.exit_code == 0, r.output
    assert "warning: skipped cannot read image" in r.output and "2 image(s) predicted, 1 skipped" in r.output
    r = _cli("predict", model, folder, "--json")
    res = json.loads(r.output[r.output.index("{"):])
    assert res["images"] == 2 and res["skipped"] == 1 and len(res["predictions"][0]["top"]) == 5
    top = res["predictions"][0]["top"]
    assert 0 < sum(t["probability"] for t in top) <= 1 + 1e-9 and top[0]["probability"] >= top[1]["probability"]
    assert top[0]["label"] in [str(i) for i in range(10)]
    r = _cli("predict", model, folder / "3.png", "--csv", "-k", "2")
    assert r.exit_code == 0 and r.output.splitlines()[0] == "image,rank,label,index,probability"
    r = _cli("predict", model, folder, "--strict")
    assert r.exit_code == 5 and "cannot read image" in _one_line(r)


def test_foreign_onnx_needs_size_mean_std(run, digits_folder, tmp_path):
    import onnx

    m = onnx.load(str(run / "export" / "model.onnx"))
    del m.metadata_props[:]
    foreign = tmp_path / "foreign.onnx"
    onnx.save(m, str(foreign))
    r = _cli("eval", foreign, "--data", digits_folder)
    assert r.exit_code == 2 and "has no edgevp metadata" in _one_line(r) and "--size" in r.output
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"{i}\n" for i in range(10)))
    r = _cli("eval", foreign, "--data", digits_folder, "--size", "32", "--mean", "0,0,0", "--std", "1", "--labels",
             labels, "-o", tmp_path / "f")
    assert r.exit_code == 0, r.output
    ours = json.loads(_cli("eval", run / "export" / "model.onnx", "--data", digits_folder, "--json").output)
    assert json.loads((tmp_path / "f" / "eval.json").read_text())["top1"] == ours["top1"]


def _fake_pack(path: Path, tasks: list[list[str]]) -> None:
    """A two-input graph shaped like an `edgevp pack` (images, task -> logits) with its metadata."""
    import onnx
    from onnx import TensorProto, helper

    w = np.random.default_rng(0).normal(size=(3, max(map(len, tasks)))).astype(np.float32)
    nodes = [helper.make_node("GlobalAveragePool", ["images"], ["g"]), helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("MatMul", ["f", "w"], ["m"]), helper.make_node("Cast", ["task"], ["tf"], to=1),
             helper.make_node("Unsqueeze", ["tf", "ax"], ["t2"]), helper.make_node("Mul", ["t2", "zero"], ["t0"]),
             helper.make_node("Add", ["m", "t0"], ["logits"])]
    graph = helper.make_graph(nodes, "pack", [
        helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 32, 32]),
        helper.make_tensor_value_info("task", TensorProto.INT64, ["batch"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", w.shape[1]])],
        [onnx.numpy_helper.from_array(w, "w"), onnx.numpy_helper.from_array(np.array([1], np.int64), "ax"),
         onnx.numpy_helper.from_array(np.zeros(1, np.float32), "zero")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    for k, v in {"edgevp_kind": "pack", "tasks": json.dumps([{"id": i, "classes": c} for i, c in enumerate(tasks)]),
                 "data_config": json.dumps({"input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.5] * 3,
                                            "include_preprocess": True})}.items():
        model.metadata_props.add(key=k, value=v)
    onnx.save(model, str(path))


def test_bad_input_exit_codes(run, digits_folder, tmp_path):
    model = run / "export" / "model.onnx"
    r = _cli("eval", tmp_path / "missing.onnx")
    assert r.exit_code == 6 and "does not exist" in _one_line(r)
    r = _cli("predict", tmp_path / "missing.engine", digits_folder)
    assert r.exit_code == 6 and "does not exist" in _one_line(r)
    r = _cli("eval", model, "--task", "1")
    assert r.exit_code == 2 and "single-task" in _one_line(r)
    pack = tmp_path / "pack"
    pack.mkdir()
    _fake_pack(pack / "model.onnx", [[str(i) for i in range(10)], ["even", "odd"]])
    r = _cli("eval", pack / "model.onnx", "--data", digits_folder, "--task", "2")
    assert r.exit_code == 2 and "task 2 is out of range" in _one_line(r)
    r = _cli("eval", pack / "model.onnx", "--data", digits_folder)
    assert r.exit_code == 2 and "--task" in _one_line(r)
    r = _cli("eval", pack / "model.onnx", "--data", digits_folder, "--task", "1")  # task 1's classes: even/odd
    assert r.exit_code == 5 and "do not match" in _one_line(r)
    r = _cli("eval", pack, "--data", digits_folder, "--task", "0", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["artifact"]["task"] == 0
    r = _cli("predict", pack / "model.onnx", digits_folder / "1", "--task", "1", "--json", "-k", "5")
    assert r.exit_code == 0 and len(json.loads(r.output)["predictions"][0]["top"]) == 2
    # an engine needs TensorRT (here: exit 4, one line)
    engine = tmp_path / "model.trt10.3-sm87-fp16.engine"
    engine.write_bytes(b"plan")
    r = _cli("eval", engine)
    assert r.exit_code == 4 and "TensorRT" in _one_line(r)


def test_engines_from_another_tensorrt_or_gpu_are_refused(tmp_path):
    from edgevp.runtime.formats import check_engine_name, engine_name, parse_engine_name
    from edgevp.runtime.engine import check_sidecar

    name = engine_name("10.3.0.30", "8.7", "fp16")
    assert name == "model.trt10.3-sm87-fp16.engine"
    assert parse_engine_name(name) == {"trt": "10.3", "sm": "87", "precision": "fp16"}
    check_engine_name(name, "10.3.1", "8.7")
    with pytest.raises(IncompatibleError, match=r"built for TensorRT 10\.3, this is 10\.8.*build_engine\.sh"):
        check_engine_name(name, "10.8.0", "8.7")
    with pytest.raises(IncompatibleError, match=r"built for sm87, this GPU is sm89"):
        check_engine_name(name, "10.3.0", "8.9")
    engine = tmp_path / name
    engine.write_bytes(b"plan")
    engine.with_suffix(".json").write_text(json.dumps({"tensorrt_version": "10.3.0", "gpu": "Orin"}))
    assert check_sidecar(engine, "10.3.0", "Orin")["gpu"] == "Orin"
    with pytest.raises(IncompatibleError, match="rebuild it on this device"):
        check_sidecar(engine, "10.3.0", "NVIDIA H100")


def _triton_pb2():
    """tritonclient's model_config_pb2, loaded from its file (tritonclient.grpc's __init__ wants grpcio)."""
    try:
        from tritonclient.grpc import model_config_pb2

        return model_config_pb2
    except (ImportError, RuntimeError):
        spec = importlib.util.find_spec("tritonclient")
        if spec is None:
            pytest.skip("tritonclient is not installed (pip install 'edgevp[dev]')")
        f = Path(spec.submodule_search_locations[0]) / "grpc" / "model_config_pb2.py"
        mod_spec = importlib.util.spec_from_file_location("_triton_model_config_pb2", f)
        mod = importlib.util.module_from_spec(mod_spec)
        mod_spec.loader.exec_module(mod)
        return mod


def test_bundle_files_parse_with_real_parsers(run, tmp_path):
    from google.protobuf import text_format

    pb2 = _triton_pb2()
    bundle = run / "export" / "trt-fp32"
    classes = [str(i) for i in range(10)]
    assert (bundle / "labels.txt").read_text().splitlines() == classes
    meta = json.loads((bundle / "model.json").read_text())
    assert meta["input"] == "input" and meta["output"] == "logits" and meta["class_names"] == classes
    pre = meta["preprocessing"]
    assert pre["color_order"] == "RGB" and pre["normalisation"] == "inside the model" and pre["scale"] == 1 / 255
    model = meta["triton"]["tensorrt"]
    cfg = text_format.Parse((bundle / "triton" / model / "config.pbtxt").read_text(), pb2.ModelConfig())
    assert cfg.name == model and cfg.platform == "tensorrt_plan" and cfg.max_batch_size == 0  # fixed batch-1 engine
    assert [(i.name, list(i.dims), i.data_type) for i in cfg.input] == [("input", [1, 3, 32, 32], pb2.TYPE_FP32)]
    assert [(o.name, list(o.dims), o.label_filename) for o in cfg.output] == [("logits", [1, 10], "labels.txt"),
                                                                               ("probs", [1, 10], "labels.txt")]
    assert (bundle / "triton" / model / "labels.txt").read_text().splitlines() == classes
    assert (bundle / "triton" / model / "1").is_dir()
    onnx_dir = bundle / "triton" / meta["triton"]["onnxruntime"]
    cfg = text_format.Parse((onnx_dir / "config.pbtxt").read_text(), pb2.ModelConfig())
    assert cfg.platform == "onnxruntime_onnx" and cfg.max_batch_size == 8 and list(cfg.input[0].dims) == [3, 32, 32]
    assert cfg.HasField("dynamic_batching") and list(cfg.output[0].dims) == [10]
    assert (onnx_dir / "1" / "model.onnx").read_bytes() == (bundle / "model.onnx").read_bytes()
    ds = configparser.ConfigParser()
    ds.read(bundle / "deepstream" / "config_infer_primary.txt")
    p = ds["property"]
    assert p["onnx-file"] == "../model.onnx" and p["labelfile-path"] == "labels.txt" and p["network-type"] == "1"
    assert float(p["net-scale-factor"]) == pytest.approx(0.00392156862745098, abs=1e-15)
    assert p["offsets"] == "0;0;0" and p["model-color-format"] == "0" and p["infer-dims"] == "3;32;32"
    # nvinfer's classifier parser reads probabilities: the Softmax output, a threshold >= 0 (a negative one is a
    # parse error), and the training interpolation (bicubic) instead of the nearest-neighbour default
    assert p["batch-size"] == "1" and p["network-mode"] == "0" and p["output-blob-names"] == "probs"
    assert float(p["classifier-threshold"]) == 0 and p["scaling-filter"] == "2"
    assert (bundle / "deepstream" / "labels.txt").read_text().strip().split(";") == classes

    # build_engine.sh names the engine after TensorRT, GPU and precision and puts it where Triton/DeepStream look
    work = tmp_path / "bundle"
    import shutil

    shutil.copytree(bundle, work)
    fake = tmp_path / "trtexec"
    fake.write_text("#!/usr/bin/env bash\necho '&&&& RUNNING TensorRT.trtexec [TensorRT v100300]'\n"
                    'for a in "$@"; do case "$a" in --saveEngine=*) echo plan > "${a#--saveEngine=}";; esac; done\n')
    fake.chmod(0o755)
    r = subprocess.run(["bash", str(work / "build_engine.sh")], env={**os.environ, "TRTEXEC": str(fake), "SM": "87"},
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    engine = "model.trt10.3-sm87-fp32.engine"
    assert (work / engine).is_file() and (work / "triton" / model / "1" / "model.plan").is_file()
    side = json.loads((work / engine).with_suffix(".json").read_text())
    assert side["tensorrt_version"] == "10.3" and side["compute_capability"] == "8.7" and side["engine"] == engine
    ds.read(work / "deepstream" / "config_infer_primary.txt")
    assert ds["property"]["model-engine-file"] == f"../{engine}"


def test_eval_and_predict_without_torch(run, digits_folder, no_torch_env, tmp_path):
    def edgevp(*args):
        return support.edgevp(*args, env=no_torch_env, timeout=120)

    r = edgevp("eval", run / "export" / "model.onnx", "-o", tmp_path / "e")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "e" / "eval.json").read_text())["images"] == 32
    r = edgevp("predict", run / "export" / "trt-fp32", digits_folder / "5", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["images"] == 4
    r = subprocess.run([sys.executable, "-c", "import torch"], env=no_torch_env, capture_output=True, text=True)
    assert r.returncode == 1


def test_the_artifact_carries_the_run_s_own_crop_pct(tmp_path):
    """A recipe's data.crop_pct overrides the backbone's; the exported metadata (what the device resizes by) says
    the recipe's value, and the device-side centre crop of an image equals the training transform's."""
    import torch
    from PIL import Image

    from edgevp.data import ImageTransform
    from edgevp.device.artifact import open_artifact

    cfg = tiny_config("linear", data={"resize": "timm", "crop_pct": 0.8}, train={"epochs": 1})
    fit(cfg, out=tmp_path / "run")
    export_run(tmp_path / "run", ExportOptions(target="onnx", out=tmp_path / "export", test_images=0,
                                               gate_images=8))
    pre = open_artifact(tmp_path / "export" / "model.onnx").pre
    assert pre.crop_pct == 0.8 and pre.resize == "timm"
    rgb = np.random.default_rng(0).integers(0, 256, (48, 60, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "img.png")
    device = pre.image(tmp_path / "img.png")
    train = ImageTransform(size=32, interpolation=pre.interpolation, resize="timm", crop_pct=0.8)(
        torch.from_numpy(rgb).permute(2, 0, 1).float() / 255.0)
    assert device.shape == tuple(train.shape) and np.array_equal(device, train.numpy())
