"""Shared fixtures: tiny timm ViTs (random init) and real pixels from sklearn digits."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never wait on the model hub in tests
# one compute thread per test process (child processes inherit it): the suite runs a process per core already, and
# torch's own pool of one thread per core in each of them would only fight over the same cores
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pytest
import torch

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

from edgevp.recipe import build_run_config
from edgevp.model import build_model

RECIPES = os.path.join(os.path.dirname(__file__), "..", "recipes")


def tiny_config(method: str = "linear", prompt: dict | None = None, backbone: str = "test_vit", img_size: int = 32,
                **sections):
    data = {"method": method, "backbone": {"name": backbone, "weights": "none", "img_size": img_size},
            "data": {"name": "digits", "limit_train": 128, "limit_val": 32, "limit_test": 32, "batch_size": 32},
            "train": {"epochs": 2, "optimizer": "adamw", "lr": 0.003, "weight_decay": 0.0, "warmup_epochs": 0.5}}
    for k, v in sections.items():
        data.setdefault(k, {}).update(v)
    if prompt:
        data["prompt"] = prompt
    return build_run_config(data)


def tiny_model(method: str = "linear", prompt: dict | None = None, num_classes: int = 10, **kw):
    return build_model(tiny_config(method, prompt, **kw), num_classes)


@pytest.fixture(scope="session")
def digits_batch() -> torch.Tensor:
    """8 real digit images, [0, 1], 3×32×32."""
    from sklearn.datasets import load_digits

    imgs = torch.from_numpy(load_digits().images[:8].astype(np.float32) / 16.0)[:, None]
    return torch.nn.functional.interpolate(imgs, size=(32, 32), mode="bilinear").expand(-1, 3, -1, -1).contiguous()


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    # offline weights convert into the user's cache; keep tests from writing elsewhere than a shared temp cache
    if "EDGEVP_CACHE" not in os.environ:
        monkeypatch.setenv("EDGEVP_CACHE", os.path.expanduser("~/.cache/edgevp"))


TRAINING_STACK = ("torch", "timm", "torchvision")
# installed through PYTHONPATH as sitecustomize.py, so every child process (the profile workers too) inherits it
BLOCKER = f'''import sys


class _NoTrainingStack:
    """Imports of {TRAINING_STACK} fail as if they were not installed."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {TRAINING_STACK!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None


sys.meta_path.insert(0, _NoTrainingStack())
'''


@pytest.fixture(scope="session")
def no_torch_env(tmp_path_factory) -> dict:
    """An environment whose Python refuses torch, timm and torchvision (as a Jetson without the training stack)."""
    shim = tmp_path_factory.mktemp("no_torch")
    (shim / "sitecustomize.py").write_text(BLOCKER)
    path = [str(shim), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path)}


def _shared(tmp_path_factory) -> "os.PathLike":
    """The session's folder every xdist worker sees (the workers' common base temp)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session", autouse=True)
def _memoised_onnx_export(tmp_path_factory):
    """`torch.onnx.export` memoised for the session (`tests/support.py` ExportMemo)."""
    from .support import ExportMemo

    memo = ExportMemo(_shared(tmp_path_factory) / "onnx-exports", torch.onnx.export)
    torch.onnx.export = memo
    yield memo
    torch.onnx.export = memo.export


@pytest.fixture(scope="session")
def run_cache(tmp_path_factory):
    """The session's tiny trained runs (`tests/support.py` RUNS); under xdist the workers share one cache."""
    from .support import RunCache

    return RunCache(_shared(tmp_path_factory) / "shared-runs")
