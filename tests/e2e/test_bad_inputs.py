"""Every bad input is one clear line with a documented exit code, found before long work, and nothing already
written is lost or left half-written. One table: (command line, exit code, words of the message).

Placeholders in a command line: {run} a trained tiny VPT run (its files are digested before and compared after
every case, as are {lor}'s and both packs'), {lor} a trained LoR-VP run, {pack} a pack of {run} (constant tables),
{tpack} a pack of {lor} with tables as inputs, {recipe} the tiny recipe, {folder} an image folder of real digit
pixels, {tmp} a fresh directory per case, {onnx} the run's exported model.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from edgevp.cli import app
from edgevp.export.pipeline import ExportOptions, export_run
from edgevp.multitask.pipeline import PackOptions, pack


RECIPES = Path(__file__).parents[2] / "recipes"
runner = CliRunner()


def _digest(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file() and p.name != ".edgevp.lock"}


def _digit_folder(root: Path, classes=(0, 1, 2), per_class=8) -> Path:
    from sklearn.datasets import load_digits

    d = load_digits()
    for c in classes:
        (root / f"c{c}").mkdir(parents=True, exist_ok=True)
        for i, img in enumerate(d.images[d.target == c][:per_class]):
            Image.fromarray((img * 16).clip(0, 255).astype(np.uint8)).resize((24, 24)).save(root / f"c{c}" / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def world(tmp_path_factory, run_cache):
    root = tmp_path_factory.mktemp("bad_inputs")
    run, lor = run_cache.get("vpt2", root / "run"), run_cache.get("lorvp", root / "lor")
    export_run(run, ExportOptions(exporter="legacy", test_images=0))
    pack([run], root / "pack", PackOptions(gate_images=4))  # constant tables
    pack([lor], root / "tpack", PackOptions(gate_images=4, tables_as_inputs=True))  # pixel tables only
    empty_recipe = root / "empty.yaml"
    empty_recipe.write_text("# nothing\n")
    broken_yaml = root / "broken.yaml"
    broken_yaml.write_text("method: vpt\ntrain:\n  lr: [1, 2\n")
    list_recipe = root / "list.yaml"
    list_recipe.write_text("- a\n- b\n")
    folder = _digit_folder(root / "digits")
    one_class = _digit_folder(root / "one", classes=(3,))
    corrupt = _digit_folder(root / "corrupt")
    (corrupt / "c1" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    a_file = root / "a_file.txt"
    a_file.write_text("x")
    (root / "loop.yaml").symlink_to(root / "loop2.yaml")
    (root / "loop2.yaml").symlink_to(root / "loop.yaml")
    return {"run": run, "lor": lor, "recipe": RECIPES / "tiny" / "vpt_deep.yaml", "empty": empty_recipe,
            "lorrecipe": RECIPES / "tiny" / "lorvp.yaml", "e2recipe": RECIPES / "tiny" / "e2vpt.yaml",
            "broken": broken_yaml, "list": list_recipe, "folder": folder, "one": one_class, "corrupt": corrupt,
            "file": a_file, "onnx": run / "export" / "model.onnx", "root": root, "pack": root / "pack",
            "tpack": root / "tpack"}


FOLDER = ["-s", "data.name=folder", "-s", "data.root={folder}", "-s", "train.epochs=1"]
T = "{recipe}"
CASES = [
    # -- train: recipes and overrides --------------------------------------------------------------------------------
    (["train"], 2, "give a RECIPE or --resume"),
    (["train", "{root}/nope.yaml"], 2, "not found"),
    (["train", "{root}"], 2, "is not a file"),
    (["train", "{empty}"], 2, "is empty"),
    (["train", "{broken}"], 2, "not valid YAML at line 4, column 1"),
    (["train", "{list}"], 2, "must be a mapping"),
    (["train", T, "-s", "train.lrr=1"], 2, "did you mean 'train.lr'"),
    (["train", T, "-s", "train.epochs=two"], 2, "expected an integer"),
    (["train", T, "-s", "train.epochs=-1"], 2, "epochs must be >= 0"),
    (["train", T, "-s", "train.epochs=0"], 2, "train.epochs=0 trains nothing"),
    (["train", "{root}/loop.yaml"], 2, "is a symbolic link loop"),
    (["train", T, "-s", "train.lr=-0.01"], 2, "lr must be > 0"),
    (["train", T, "-s", "train.lr=0"], 2, "lr must be > 0"),
    (["train", T, "-s", "train.weight_decay=-1"], 2, "weight_decay and momentum must be >= 0"),
    (["train", T, "-s", "train.grad_clip=0"], 2, "grad_clip must be > 0"),
    (["train", T, "-s", "train.label_smoothing=1"], 2, "label_smoothing must be in [0, 1)"),
    (["train", T, "-s", "train.eval_every=0"], 2, "eval_every and log_every must be >= 1"),
    (["train", T, "-s", "train.threads=0"], 2, "threads must be >= 1"),
    (["train", T, "-s", "train.device=gpu"], 2, "device must be auto, cpu, cuda or cuda:N"),
    (["train", T, "-s", "train.optimizer=adam"], 2, "'adam' is not one of sgd, adamw"),
    (["train", T, "-s", "train.amp=maybe"], 2, "expected true/false"),
    (["train", T, "-s", "data.batch_size=0"], 2, "batch_size and eval_batch_size must be >= 1"),
    (["train", T, "-s", "data.eval_batch_size=0"], 2, "batch_size and eval_batch_size must be >= 1"),
    (["train", T, "-s", "data.val_fraction=1.5"], 2, "val_fraction and test_fraction must be in [0, 1)"),
    (["train", T, "-s", "data.test_fraction=-0.1"], 2, "val_fraction and test_fraction must be in [0, 1)"),
    (["train", T, "-s", "data.limit_train=0"], 2, "must be >= 1"),
    (["train", T, "-s", "data.num_workers=-1"], 2, "num_workers must be >= 0"),
    (["train", T, "-s", "data.resize=stretch"], 2, "is not one of direct, timm"),
    (["train", T, "-s", "data.augment=mixup"], 2, "is not one of none, flip, crop_flip"),
    (["train", T, "-s", "data.name=cifar"], 2, "unknown dataset 'cifar'; choose one of fashion_mnist"),
    (["train", T, "-s", "prompt.num_tokens=-1"], 2, "num_tokens must be >= 0"),
    (["train", T, "-s", "prompt.dropout=1.5"], 2, "dropout must be in [0, 1)"),
    (["train", T, "-s", "prompt.project=0"], 2, "project must be -1 (off) or a positive dim"),
    (["train", T, "-s", "prompt.tokens_per_layer=[1,2]"], 2, "tokens_per_layer needs deep=true and"),
    (["train", T, "-s", "method=nope"], 2, "unknown method 'nope'"),
    (["train", "{lorrecipe}", "-s", "prompt.rank=0"], 2, "rank and mapping_every must be >= 1"),
    (["train", "{lorrecipe}", "-s", "prompt.mapping=ilm", "-s", "prompt.mapping_every=0"], 2,
     "rank and mapping_every must be >= 1"),
    (["train", "{e2recipe}", "-s", "prompt.segments=5"], 2, "must divide the embedding dim"),
    (["train", "{e2recipe}", "-s", "prompt.kv_dropout=1"], 2, "dropout and kv_dropout must be in [0, 1)"),
    (["train", "{e2recipe}", "-s", "prompt.kv_init=xavier"], 2, "is not one of kaiming, uniform, trunc_normal"),
    (["train", T, "-s", "backbone.name=not_a_model"], 2, "unknown backbone"),
    (["train", T, "-s", "backbone.name=resnet18", "-s", "backbone.weights=none"], 2, "needs a timm"),
    (["train", T, "-s", "backbone.weights={root}/nope.safetensors"], 4, "weights file"),
    (["train", T, "-s", "backbone.weights=hub"], 4, "no network"),
    (["train", T, "-s", "train.device=cuda"], 4, "no CUDA GPU"),
    (["train", T, "-s", "traineepochs=1"], 2, "unknown config key"),
    (["train", T, "-s", "train.lr"], 2, "is not of the form key=value"),
    (["train", T, "--resume", "{run}"], 2, "drop RECIPE and -s"),
    (["train", T, "--overwrite", "--resume", "{run}"], 2, "cannot be combined with --resume"),
    # -- train: data ----------------------------------------------------------------------------------------------------
    (["train", T, "-s", "data.name=folder"], 5, "needs data.root"),
    (["train", T, "-s", "data.name=folder", "-s", "data.root={root}/nowhere"], 5, "does not exist"),
    (["train", T, "-s", "data.name=folder", "-s", "data.root={file}"], 5, "is a file, not a folder"),
    (["train", T, "-s", "data.name=folder", "-s", "data.root={one}", "-s", "data.test_fraction=0",
      "-s", "data.val_fraction=0.25"], 5, "has 1 class"),
    (["train", T, *FOLDER[:2], "-s", "data.root={corrupt}", "-s", "train.epochs=1"], 5, "broken.png"),
    (["train", T, "-s", "data.name=fashion_mnist", "-s", "data.root={root}"], 5, "Fashion-MNIST not found"),
    # -- train: run directories -----------------------------------------------------------------------------------------
    (["train", T, "-o", "{run}"], 6, "already exists"),
    (["train", "--resume", "{root}/nowhere"], 6, "not an edgevp run directory"),
    (["train", "--resume", "{folder}"], 6, "not an edgevp run directory"),
    (["train", T, "-o", "{file}/sub"], 2, "cannot write to"),
    # -- condense ---------------------------------------------------------------------------------------------------
    (["condense", "{run}", "-o", "{tmp}/c", "--keep", "0"], 2, "keep must be in (0, 1]"),
    (["condense", "{run}", "-o", "{tmp}/c", "--keep", "1.5"], 2, "keep must be in (0, 1]"),
    (["condense", "{run}", "-o", "{tmp}/c", "--keep", "0.001"], 2, "keeps no prompt"),
    (["condense", "{run}", "-o", "{tmp}/c", "--keep", "abc"], 2, "takes a number or a percentage"),
    (["condense", "{run}", "-o", "{tmp}/c", "--keep-count", "0"], 2, "keep_count must be >= 1"),
    (["condense", "{run}", "-o", "{tmp}/c", "--keep-count", "999"], 2, "--keep-count must be in 1.."),
    (["condense", "{run}", "-o", "{tmp}/c", "--keep", "0.3", "--keep-count", "3"], 2, "give one of keep"),
    (["condense", "{run}", "-o", "{tmp}/c", "--max-overhead", "-5%"], 2, "budget below the bare backbone"),
    (["condense", "{run}", "-o", "{tmp}/c", "--ranking", "best"], 2, "'best' is not one of global, layer, random"),
    (["condense", "{run}", "-o", "{tmp}/c", "--score", "grad"], 2, "is not one of abs_batch, abs_mean"),
    (["condense", "{run}", "-o", "{tmp}/c", "--lr", "-1"], 2, "lr must be > 0"),
    (["condense", "{run}", "-o", "{tmp}/c", "--method", "magic"], 2, "unknown condense method"),
    (["condense", "{run}", "-o", "{tmp}/c", "--method", "e2vpt"], 2, "has token/segment masks"),
    (["condense", "{run}", "-o", "{tmp}/c", "--method", "e2vpt", "--rewind", "randm"], 2,
     "'randm' is not one of init, random"),
    (["condense", "{run}", "-o", "{tmp}/c", "--method", "e2vpt", "--token-budgets", "0"], 2,
     "token budgets are percentages in 1..99"),
    (["condense", "{run}", "-o", "{tmp}/c", "--method", "e2vpt", "--token-budgets", "a,b"], 2,
     "comma-separated integers"),
    (["condense", "{lor}", "-o", "{tmp}/c"], 2, "has prompt units to score"),
    (["condense", "{root}/nowhere", "-o", "{tmp}/c"], 6, "not an edgevp run directory"),
    # -- export -------------------------------------------------------------------------------------------------------
    (["export", "{run}", "--target", "tflite", "-o", "{tmp}/e"], 2, "unknown export target"),
    (["export", "{run}", "--opset", "13", "-o", "{tmp}/e"], 2, "cannot write opset 13"),
    (["export", "{run}", "--atol", "-1", "-o", "{tmp}/e"], 2, "atol and max_drop must be >= 0"),
    (["export", "{run}", "--gate-images", "0", "-o", "{tmp}/e"], 2, "must be >= 1"),
    (["export", "{run}", "--int8-mode", "dynamc", "-o", "{tmp}/e"], 2, "'dynamc' is not one of static, dynamic"),
    (["export", "{run}", "--checkpoint", "first", "-o", "{tmp}/e"], 2, "'first' is not one of best, last"),
    (["export", "{run}", "--exporter", "jit", "-o", "{tmp}/e"], 2, "'jit' is not one of dynamo, legacy"),
    (["export", "{run}", "-o", "{file}/sub"], 2, "cannot write"),
    (["export", "{root}/nowhere"], 6, "not an edgevp run directory"),
    # -- pack -------------------------------------------------------------------------------------------------------
    (["pack", "-o", "{tmp}/p"], 2, "at least one run"),
    (["pack", "{run}"], 2, "--out DIR"),
    (["pack", "{run}", "{run}", "-o", "{tmp}/p"], 2, "given twice"),
    (["pack", "{run}", "-o", "{tmp}/p", "--target", "coreml"], 2, "is not one of onnx"),
    (["pack", "{run}", "-o", "{run}"], 2, "is one of the runs"),
    (["pack", "{root}/nowhere", "-o", "{tmp}/p"], 6, "not an edgevp run directory"),
    (["pack", "{run}", "{root}/nowhere", "-o", "{tmp}/p"], 6, "not an edgevp run directory"),
    (["pack", "{run}", "-o", "{file}/sub"], 2, "cannot write to"),
    (["pack", "{run}", "-o", "{tmp}/p", "--gate-images", "0"], 2, "must be >= 1"),
    (["pack", "{run}", "-o", "{tmp}/p", "--max-drop", "-1"], 2, "atol and max_drop must be >= 0"),
    (["pack", "{run}", "-o", "{tmp}/p", "--min-agreement", "1.5"], 2, "min_agreement must be in [0, 1]"),
    (["pack", "{run}", "-o", "{tmp}/p", "--gate-confidence", "0.2"], 2, "gate_confidence must be in [0.5, 1)"),
    (["pack", "{run}", "-o", "{tmp}/p", "--kv-capacity", "-1"], 2, "kv_capacity must be >= 0"),
    (["pack", "{run}", "-o", "{tmp}/p", "--opset", "13"], 2, "cannot write opset 13"),
    (["pack", "{run}", "-o", "{tmp}/p", "--platform", "jp4"], 2, "unknown platform 'jp4'"),
    (["pack", "{run}", "-o", "{tmp}/p", "--checkpoint", "first"], 2, "'first' is not one of best, last"),
    (["pack", "{run}", "-o", "{tmp}/p", "--update-tables"], 6, "holds no pack"),
    (["pack", "{run}", "-o", "{run}/export", "--update-tables"], 6, "holds no pack"),
    (["pack", "{run}", "-o", "{pack}", "--update-tables"], 6, "does not take its tables as inputs"),
    (["pack", "{run}", "-o", "{tpack}", "--update-tables"], 2, "has no input for"),
    (["pack", "{root}/nowhere", "-o", "{tpack}", "--update-tables"], 6, "not an edgevp run directory"),
    # -- sweep and --nproc --------------------------------------------------------------------------------------------
    (["sweep", T, "-o", "{tmp}/s"], 2, "give at least one --grid"),
    (["sweep", T, "--grid", "train.lr", "-o", "{tmp}/s"], 2, "is not of the form KEY=V1,V2"),
    (["sweep", T, "--grid", "=0.1", "-o", "{tmp}/s"], 2, "has an empty key"),
    (["sweep", T, "--grid", "train.lr=", "-o", "{tmp}/s"], 2, "has an empty value"),
    (["sweep", T, "--grid", "train.lrr=0.1,0.01", "-o", "{tmp}/s"], 2, "did you mean 'train.lr'"),
    (["sweep", T, "--grid", "train.epochs=2,two", "-o", "{tmp}/s"], 2, "expected an integer, got 'two'"),
    (["sweep", T, "--grid", "train.epochs=0,1", "-o", "{tmp}/s"], 2, "train.epochs=0 trains nothing"),
    (["sweep", T, "--grid", "train.lr=0.1", "--grid", "train.lr=0.2", "-o", "{tmp}/s"], 2, "is given twice"),
    (["sweep", T, "--grid", "train.lr=0.1,0.1", "-o", "{tmp}/s"], 2, "a value is given twice"),
    (["sweep", T, "--grid", "method=vpt,linear", "-o", "{tmp}/s"], 2, "sweep one method per study"),
    (["sweep", T, "--grid", "train.lr=0.1", "--trials", "3", "-o", "{tmp}/s"], 2, "more than the grid's 1 points"),
    (["sweep", T, "--grid", "train.lr=0.1", "--sampler", "bayes", "-o", "{tmp}/s"], 2, "'bayes' is not one of"),
    (["sweep", T, "--grid", "train.lr=0.1", "--metric", "acc", "-o", "{tmp}/s"], 2, "'acc' is not one of"),
    (["sweep", T, "--grid", "train.lr=0.1", "--heartbeat", "2", "--grace", "1", "-o", "{tmp}/s"], 2,
     "must be longer than --heartbeat"),
    (["sweep", T, "--grid", "train.lr=0.1", "--storage", "nosuchdb://host/db", "-o", "{tmp}/s"], 2,
     "cannot open the sweep storage"),
    (["sweep", T, "--grid", "train.lr=0.1", "-o", "{file}/sub"], 2, "cannot create the sweep directory"),
    (["sweep", "{root}/nope.yaml", "--grid", "train.lr=0.1", "-o", "{tmp}/s"], 2, "not found"),
    (["sweep", T, "--grid", "train.lr=0.1", "--nproc", "0", "-o", "{tmp}/s"], 2, "--nproc: must be >= 1, got 0"),
    (["sweep", T, "--grid", "train.lr=0.1", "--nproc", "64", "-o", "{tmp}/s"], 2,
     "64 processes for a global batch of"),
    (["train", T, "--nproc", "0", "-o", "{tmp}/r"], 2, "--nproc must be >= 1, got 0"),
    (["train", T, "--nproc", "64", "-o", "{tmp}/r"], 2, "64 processes for a global batch of 32"),
    (["train", "--resume", "{run}", "--nproc", "64"], 2, "64 processes for a global batch of 32"),
    # -- profile and report -----------------------------------------------------------------------------------------
    (["profile", "{root}/nowhere.onnx"], 6, "does not exist"),
    (["profile", "{onnx}", "--iters", "0"], 2, "--iters >= 1"),
    (["profile", "{onnx}", "--backend", "tvm"], 2, "unknown backend"),
    (["profile", "{onnx}", "--compile"], 2, "--compile applies to --backend torch"),
    (["profile", "{file}"], 2, "is not an artifact"),
    (["report", "{root}/nowhere", "-o", "{tmp}/r"], 6, "does not exist"),
    (["report", "{run}", "--profile", "{root}/nowhere.json", "-o", "{tmp}/r"], 6, "does not exist"),
    (["report", "{run}", "--profile", "{file}", "-o", "{tmp}/r"], 6, "not a readable edgevp profile.json"),
    (["report", "{run}", "-o", "{file}/sub"], 2, "cannot write to"),
    # -- eval and predict -------------------------------------------------------------------------------------------
    (["eval", "{onnx}", "--data", "{folder}", "-o", "{file}/sub"], 2, "cannot write to"),
    (["eval", "{onnx}", "--data", "{folder}", "--batch", "0", "-o", "{tmp}/e"], 2, "--batch and --limit must be >= 1"),
    (["eval", "{root}/nowhere.onnx", "-o", "{tmp}/e"], 6, "does not exist"),
    (["eval", "{onnx}", "--data", "{root}/nowhere", "-o", "{tmp}/e"], 5, "does not exist"),
    (["predict", "{onnx}", "{root}/nowhere.png"], 5, "does not exist"),
    (["predict", "{onnx}", "{folder}", "--top-k", "0"], 2, "--batch and --top-k must be >= 1"),
    (["list", "nonsense"], 2, "cannot list 'nonsense'"),
]


WRITTEN = ("run", "lor", "pack", "tpack")  # digested before and compared after every case


@pytest.mark.parametrize("args, code, words", CASES, ids=[" ".join(c[0])[:60] for c in CASES])
def test_bad_input(world, tmp_path, monkeypatch, args, code, words):
    places = {**{k: str(v) for k, v in world.items()}, "tmp": str(tmp_path)}
    argv = [a.format(**places) for a in args]
    before = {k: _digest(world[k]) for k in WRITTEN}
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")  # a train without -o writes runs/<name> here
    r = runner.invoke(app, argv)
    out = r.output.strip()
    assert r.exit_code == code, out
    assert words in out, out
    assert "Traceback" not in out and len(out.splitlines()) == 1, out  # one line
    assert {k: _digest(world[k]) for k in WRITTEN} == before  # nothing already written changed
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and not p.name.startswith(".edgevp.lock")] or \
        code == 0  # nothing half-written under the output
    assert not list((tmp_path / "cwd" / "runs").glob("*")) or code == 0  # no empty default run directory left


def test_there_are_at_least_sixty_bad_inputs():
    assert len(CASES) >= 60


def test_failed_run_without_checkpoints_starts_over(world, tmp_path):
    out = tmp_path / "run"
    r = runner.invoke(app, ["train", str(world["recipe"]), "-o", str(out), "-s", "data.name=folder",
                            "-s", f"data.root={world['corrupt']}", "-s", "train.epochs=1"])
    assert r.exit_code == 5
    assert not (out / "manifest.json").exists()  # refused before the run directory was written
    shutil.copytree(world["run"], out, dirs_exist_ok=True)
    shutil.rmtree(out / "checkpoints")
    m = json.loads((out / "manifest.json").read_text())
    m["stages"] = [{"name": "train", "status": "failed", "error": "boom"}]
    (out / "manifest.json").write_text(json.dumps(m))
    r = runner.invoke(app, ["train", "--resume", str(out)])
    assert r.exit_code == 6 and "start it again" in r.output
    r = runner.invoke(app, ["train", str(world["recipe"]), "-o", str(out), "-s", "train.epochs=1"])
    assert r.exit_code == 0, r.output  # a failed run with no checkpoint is started over
    r = runner.invoke(app, ["train", str(world["recipe"]), "-o", str(out), "-s", "train.epochs=1"])
    assert r.exit_code == 6 and "--overwrite" in r.output
    r = runner.invoke(app, ["train", str(world["recipe"]), "-o", str(out), "-s", "train.epochs=1", "--overwrite"])
    assert r.exit_code == 0, r.output


def test_resume_refuses_a_changed_dataset(world, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(world["folder"], data)
    out = tmp_path / "run"
    r = runner.invoke(app, ["train", str(world["recipe"]), "-o", str(out), "-s", "data.name=folder",
                            "-s", f"data.root={data}", "-s", "train.epochs=2"])
    assert r.exit_code == 0, r.output
    assert json.loads((out / "manifest.json").read_text())["inputs"]["data"]["fingerprint"]["files"] == 24
    for p in sorted((data / "c0").iterdir())[:3]:
        p.unlink()
    before = _digest(out)
    r = runner.invoke(app, ["train", "--resume", str(out)])
    assert r.exit_code == 6 and "24 files then, 21 now" in r.output
    assert _digest(out) == before


def test_hidden_and_appledouble_files_are_not_images(world, tmp_path):
    from edgevp.config import DataConfig
    from edgevp.data import load_splits

    data = tmp_path / "data"
    shutil.copytree(world["folder"], data)
    (data / "c0" / "._0.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (data / "c1" / ".hidden.png").write_bytes(b"nope")
    (data / "__MACOSX" / "c0").mkdir(parents=True)
    s = load_splits(DataConfig(name="folder", root=str(data), test_fraction=0.0, val_fraction=0.25))
    assert len(s.train) + len(s.val) == 24 and s.classes == ["c0", "c1", "c2"]


def test_a_second_writer_gets_exit_8(world, tmp_path):
    from edgevp.runs import writer_lock

    out = tmp_path / "run"
    with writer_lock(out):  # another edgevp process holds it (flock is per open file, so this stands in for one)
        r = runner.invoke(app, ["train", str(world["recipe"]), "-o", str(out), "-s", "train.epochs=1"])
        assert r.exit_code == 8 and "being written by another edgevp process" in r.output
    assert not (out / "manifest.json").exists()


def test_a_second_export_into_the_same_directory_gets_exit_8_and_stale_staging_is_cleaned(world, tmp_path):
    from edgevp.runs import writer_lock

    out = tmp_path / "export"
    (out / ".export-killed123").mkdir(parents=True)  # left by an export that was killed
    (out / ".export-killed123" / "model.onnx").write_bytes(b"half")
    with writer_lock(out):
        r = runner.invoke(app, ["export", str(world["run"]), "-o", str(out), "--exporter", "legacy"])
        assert r.exit_code == 8 and "being written by another edgevp process" in r.output
    r = runner.invoke(app, ["export", str(world["run"]), "-o", str(out), "--exporter", "legacy", "--test-images", "0"])
    assert r.exit_code == 0, r.output
    assert not list(out.glob(".export-*")) and (out / "model.onnx").is_file()


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I", "F", "LA", "PA", "CMYK", "P-transparent", "RGBA", "1"])
def test_every_image_mode_becomes_8_bit_without_saturation(tmp_path, mode):
    """Real digit pixels in every Pillow mode decode to the same 8-bit picture (16-bit scaled, never clipped)."""
    from sklearn.datasets import load_digits

    from edgevp.runtime.decode import read_image

    base = (load_digits().images[0] * 16).clip(0, 255).astype(np.uint8)  # 8x8, 0..255
    gray = Image.fromarray(base)
    if mode in ("I;16", "I;16B"):
        img = Image.fromarray(base.astype(np.uint16) * 257)  # the same picture over the 16-bit range
        path = tmp_path / "x.png"
        img.save(path)
        if mode == "I;16B":
            path = tmp_path / "x.tif"
            Image.frombytes("I;16B", base.shape[::-1], (base.astype(">u2") * 257).tobytes()).save(path)
    elif mode == "I":
        path = tmp_path / "x.tif"
        Image.fromarray(base.astype(np.int32) * 257, mode="I").save(path)
    elif mode == "F":
        path = tmp_path / "x.tif"
        Image.fromarray(base.astype(np.float32) / 255.0, mode="F").save(path)
    elif mode == "LA":
        path = tmp_path / "x.png"
        gray.convert("LA").save(path)
    elif mode == "PA":
        path = tmp_path / "x.png"
        gray.convert("RGBA").save(path)
    elif mode == "CMYK":
        path = tmp_path / "x.jpg"
        gray.convert("CMYK").save(path, quality=100)
    elif mode == "P-transparent":
        path = tmp_path / "x.png"
        pal = gray.convert("P")
        pal.info["transparency"] = 0
        pal.save(path, transparency=0)
    elif mode == "RGBA":
        path = tmp_path / "x.png"
        gray.convert("RGBA").save(path)
    else:
        path = tmp_path / "x.png"
        gray.point(lambda v: 255 if v > 127 else 0).convert("1").save(path)
    arr = read_image(path)
    got = arr if arr.ndim == 2 else arr[..., 0]
    want = np.where(base > 127, 255, 0) if mode == "1" else base
    tol = 3 if mode == "CMYK" else 0  # JPEG
    assert got.dtype == np.uint8 and got.shape == base.shape
    assert np.abs(got.astype(int) - want.astype(int)).max() <= tol, (mode, got.max(), want.max())
    assert got.max() == want.max() or mode == "CMYK"  # bright pixels stay bright: no clipping to 255 of 16-bit
