"""The demo's commands on the normal path print no warning: each runs in a fresh process with every warning an error
(PYTHONWARNINGS=error), so a warning from edgevp, or one it lets through from torch, ONNX Runtime or timm, fails."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

RECIPE = Path(__file__).parent.parent / "recipes" / "tiny" / "vpt_deep.yaml"
STEPS = [["train", str(RECIPE), "-o", "run", "-s", "train.epochs=1", "-s", "data.limit_train=64"],
         ["condense", "run", "-o", "pc", "--keep", "0.5", "--finetune-epochs", "1"],
         ["export", "run"], ["export", "run", "--target", "ort-fp16"],
         ["profile", "run/export/model.onnx", "--rounds", "1"], ["report", "run", "pc", "-o", "report"],
         ["pack", "run", "pc", "-o", "pack"], ["eval", "run/export/model.onnx"]]


def test_the_demo_commands_raise_no_warning(tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "error", "HF_HUB_OFFLINE": "1"}
    for step in STEPS:
        r = subprocess.run([sys.executable, "-m", "edgevp", "-q", *step], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=600)
        assert r.returncode == 0, f"edgevp {' '.join(step)}: {r.stderr[-2000:]}"
        assert "Warning" not in r.stderr, r.stderr[-2000:]
