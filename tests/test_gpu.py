"""CUDA paths (mixed precision training, device placement); run only where a GPU exists (`-m gpu`)."""
from __future__ import annotations

import pytest
import torch

from edgevp.train import fit

from .conftest import tiny_config

pytestmark = pytest.mark.gpu


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("method", ["vpt", "e2vpt", "lorvp"])
def test_amp_training_on_cuda(tmp_path, method):
    cfg = tiny_config(method, train={"epochs": 2, "device": "cuda", "amp": True, "lr": 0.01})
    result = fit(cfg, out=tmp_path / "run")
    assert result.test_top1 is not None and result.best_val_top1 >= 0
