"""The CLI: commands, documented exit codes, one-line errors, lean start-up, Ctrl-C and resume."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgevp.cli import app
from edgevp.runs import RunDir

RECIPE = str(Path(__file__).parents[2] / "recipes" / "tiny" / "vpt_deep.yaml")
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, list(args))


def test_help_for_every_command():
    for args in ([], ["train"], ["list"], ["demo"], ["sweep"]):
        r = invoke(*args, "--help")
        assert r.exit_code == 0 and "Usage" in r.output
    assert "Exit codes" in invoke("--help").output


def test_import_and_help_stay_lean():
    code = ("import sys, edgevp, edgevp.cli, edgevp.sweep; heavy = [m for m in ('torch', 'timm', 'onnx', "
            "'onnxruntime', 'tensorrt', 'matplotlib', 'optuna', 'sqlalchemy') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)
    out = subprocess.run([sys.executable, "-m", "edgevp", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "train" in out.stdout


def test_list_methods_comes_from_the_registry():
    r = invoke("list", "methods")
    assert r.exit_code == 0 and [line.split()[0] for line in r.output.splitlines()] == ["e2vpt", "linear", "lorvp",
                                                                                         "pad", "vpt"]
    assert invoke("list", "exit-codes").output.count("\n") == 10
    targets = [line.split()[0] for line in invoke("list", "targets").output.splitlines()]
    assert targets == ["onnx", "ort-fp16", "ort-int8", "trt-fp16", "trt-fp32", "trt-int8"]
    assert invoke("list", "nonsense").exit_code == 2


def test_train_end_to_end_with_overrides(tmp_path):
    out = tmp_path / "run"
    r = invoke("train", RECIPE, "-s", "train.epochs=1", "-s", "prompt.num_tokens=2", "--out", str(out))
    assert r.exit_code == 0, r.output
    assert "done: best val top-1" in r.output
    cfg = RunDir(out).config()
    assert cfg.train.epochs == 1 and cfg.prompt.num_tokens == 2
    assert (out / "checkpoints" / "best.safetensors").is_file() and (out / "metrics.jsonl").is_file()


def test_print_config_resolves_without_training(tmp_path):
    r = invoke("train", RECIPE, "-s", "train.lr=0.5", "--print-config")
    assert r.exit_code == 0 and "lr: 0.5" in r.output and "num_tokens: 4" in r.output


@pytest.mark.parametrize("args, code, message", [
    (["train", RECIPE, "-s", "train.lrr=1"], 2, "unknown config key 'train.lrr'"),
    (["train", RECIPE, "-s", "train.epochs=two"], 2, "expected an integer"),
    (["train", "missing.yaml"], 2, "not found"),
    (["train"], 2, "give a RECIPE"),
    (["train", "--resume", "/nonexistent", "--print-config"], 2, "--print-config prints a RECIPE's resolved config"),
    (["train", RECIPE, "-s", "method=nope"], 2, "unknown method 'nope'"),
    (["train", RECIPE, "-s", "backbone.name=not_a_model"], 2, "unknown backbone"),
    (["train", RECIPE, "-s", "data.name=folder", "-s", "data.root=/nonexistent"], 5, "does not exist"),
    (["train", RECIPE, "-s", "train.device=cuda"], 4, "no CUDA GPU"),
    (["train", RECIPE, "-s", "backbone.weights=hub"], 4, "no network"),
    (["train", "--resume", "/nonexistent"], 6, "not an edgevp run directory"),
    (["train", RECIPE, "-s", "train.lr=1e30", "-s", "train.optimizer=sgd", "-s", "train.warmup_epochs=0"], 7,
     "loss became"),
])
def test_bad_input_gives_one_line_and_exit_code(tmp_path, args, code, message):
    r = invoke(*args, "--out", str(tmp_path / "run")) if args[:2] != ["train", "--resume"] and args != ["train"] \
        and "missing.yaml" not in args else invoke(*args)
    assert r.exit_code == code, r.output
    assert message in r.output
    assert "Traceback" not in r.output and r.output.strip().count("\n") < 6


def test_sigint_checkpoints_and_resume_finishes(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "edgevp", "train", RECIPE, "-s", "train.epochs=400", "-s", "train.log_every=1",
           "--out", str(out)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "log.txt").is_file() or "step" not in (out / "log.txt").read_text():
        time.sleep(0.2)
        assert time.time() < deadline and proc.poll() is None
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted at epoch" in err and "--resume" in err and "Traceback" not in err
    state = RunDir(out).manifest()["stages"][-1]
    assert state["status"] == "interrupted"
    # --resume reads the run's own config; shorten it so the resumed run ends after the interrupted epoch
    cfg_text = (out / "config.yaml").read_text().replace("epochs: 400", "epochs: 1")
    (out / "config.yaml").write_text(cfg_text)
    r = subprocess.run([sys.executable, "-m", "edgevp", "train", "--resume", str(out)], env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert RunDir(out).manifest()["stages"][-1]["status"] == "completed"


def test_training_without_the_train_extra_says_what_to_install():
    code = ("import sys; sys.modules['torch'] = None; from edgevp.cli import main; "
            f"sys.argv = ['edgevp', 'train', {RECIPE!r}]; main()")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 4 and "pip install 'edgevp[train]'" in r.stderr and "Traceback" not in r.stderr
