"""CUDA paths (mixed precision training, device placement); run only where a GPU exists (`-m gpu`)."""
from __future__ import annotations

import pytest
import torch

from edgevp.train import fit

from ..conftest import tiny_config

pytestmark = pytest.mark.gpu


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("method", ["vpt", "e2vpt", "lorvp"])
def test_amp_training_on_cuda(tmp_path, method):
    cfg = tiny_config(method, train={"epochs": 2, "device": "cuda", "amp": True, "lr": 0.01})
    result = fit(cfg, out=tmp_path / "run")
    assert result.test_top1 is not None and result.best_val_top1 >= 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("extra", [[], ["--compile"]])
def test_profile_a_run_in_pytorch_on_cuda(tmp_path, extra):
    import json

    from typer.testing import CliRunner

    from edgevp.cli import app

    fit(tiny_config("vpt", {"num_tokens": 4}, train={"epochs": 1}), out=tmp_path / "run")
    r = CliRunner().invoke(app, ["profile", str(tmp_path / "run"), "--backend", "torch", "--device", "cuda", *extra,
                                 "--iters", "5", "--warmup", "3", "--rounds", "1", "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    assert all(c["device"].startswith("cuda") and c["compiled"] == bool(extra) for c in res["conditions"].values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_ort_cuda_provider_is_really_used(tmp_path):
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is not installed")
    from edgevp.export.pipeline import ExportOptions, export_run
    from edgevp.profile.worker import measure_artifact

    fit(tiny_config("lorvp", {"rank": 2}, train={"epochs": 1}), out=tmp_path / "run")
    export_run(tmp_path / "run", ExportOptions())
    out = measure_artifact(str(tmp_path / "run" / "export" / "model.onnx"), "ort", 1, 2, 5, "cuda")
    assert out["conditions"]["providers"][0] == "CUDAExecutionProvider"
