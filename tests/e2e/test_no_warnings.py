"""The demo's commands on the normal path print no warning: they run one after another in one fresh process with every
warning an error (PYTHONWARNINGS=error), so a warning from edgevp, or one it lets through from torch, ONNX Runtime or
timm, fails the command it happens in. (An error-filtered warning raises every time it is given, so running the
commands in one process instead of one each hides none.)"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

RECIPE = Path(__file__).parents[2] / "recipes" / "tiny" / "vpt_deep.yaml"
STEPS = [["train", str(RECIPE), "-o", "run", "-s", "train.epochs=1", "-s", "data.limit_train=64"],
         ["condense", "run", "-o", "pc", "--keep", "0.5", "--finetune-epochs", "1"],
         ["export", "run"], ["export", "run", "--target", "ort-fp16"],
         ["profile", "run/export/model.onnx", "--rounds", "1"], ["report", "run", "pc", "-o", "report"],
         ["pack", "run", "pc", "-o", "pack"], ["eval", "run/export/model.onnx"]]


DRIVER = """
import json, sys
from typer.testing import CliRunner
from edgevp.cli import app
for step in json.loads(sys.argv[1]):
    r = CliRunner().invoke(app, ["-q", *step])
    out = r.output  # stdout and stderr, as the user sees them
    if r.exit_code != 0 or "Warning" in out:
        sys.exit(f"edgevp {' '.join(step)}: exit {r.exit_code} {r.exception!r}\\n{out[-2000:]}")
"""


def test_the_demo_commands_raise_no_warning(tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "error", "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(STEPS)], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Warning" not in r.stderr, r.stderr[-2000:]
    assert (tmp_path / "pack" / "pack.json").is_file() and (tmp_path / "report").is_dir()  # every step ran
