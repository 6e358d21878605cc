"""Training on real pixels: the loss falls, runs resume to the same result, failures keep what was written."""
from __future__ import annotations

import pytest
import torch

from edgevp.checkpoints import read_checkpoint
from edgevp.errors import DivergedError, IncompatibleError
from edgevp.model import load_run
from edgevp.runs import RunDir
from edgevp.train import Interrupted, fit, lr_at

from ..conftest import tiny_config


def _tensors(path):
    return read_checkpoint(path)[0]


@pytest.mark.parametrize("method, prompt", [("linear", None), ("vpt", {"num_tokens": 4}),
                                            ("e2vpt", {"num_tokens": 4, "num_kv": 2, "dropout": 0.1}),
                                            ("lorvp", {"rank": 2})])
def test_short_real_training_run_lowers_the_loss(tmp_path, method, prompt):
    cfg = tiny_config(method, prompt, train={"epochs": 4, "lr": 0.01})
    result = fit(cfg, out=tmp_path / "run")
    metrics = RunDir(result.run_dir).metrics()
    assert [m["epoch"] for m in metrics] == [0, 1, 2, 3]
    assert metrics[-1]["train_loss"] < metrics[0]["train_loss"]
    assert result.test_top1 is not None and 0 <= result.test_top1 <= 100
    manifest = RunDir(result.run_dir).manifest()
    assert manifest["stages"][-1]["status"] == "completed"
    assert manifest["train_info"]["trainable_params"] == result.params["trainable"]
    assert manifest["inputs"]["split_sizes"] == {"train": 128, "val": 32, "test": 32}
    # the checkpoint holds only prompt and head tensors, never the backbone
    keys = _tensors(result.run_dir / "checkpoints" / "best.safetensors").keys()
    assert all(k.startswith(("method.", "head.")) for k in keys)
    # and loads back into an identical model
    _, model, _ = load_run(result.run_dir)
    assert sum(p.numel() for _, p in model.trainable_parameters()) == result.params["trainable"]


@pytest.mark.parametrize("stop_after", [3, 4, 9])  # mid-epoch, at an epoch boundary (4 steps/epoch), later
def test_interrupted_run_resumes_to_the_same_result(tmp_path, stop_after):
    cfg = tiny_config("vpt", {"num_tokens": 3, "dropout": 0.2}, train={"epochs": 3},
                      data={"augment": "crop_flip"})
    straight = fit(cfg, out=tmp_path / "straight")
    with pytest.raises(Interrupted):
        fit(cfg, out=tmp_path / "resumed", stop_after_steps=stop_after)
    assert RunDir(tmp_path / "resumed").manifest()["stages"][-1]["status"] == "interrupted"
    resumed = fit(None, resume=tmp_path / "resumed")
    for which in ("last", "best"):
        a = _tensors(straight.run_dir / "checkpoints" / f"{which}.safetensors")
        b = _tensors(resumed.run_dir / "checkpoints" / f"{which}.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ma, mb = RunDir(straight.run_dir).metrics(), RunDir(resumed.run_dir).metrics()
    drop = ("epoch_seconds",)
    assert [{k: v for k, v in m.items() if k not in drop} for m in ma] == \
           [{k: v for k, v in m.items() if k not in drop} for m in mb]


def test_existing_run_directory_is_not_overwritten(tmp_path):
    cfg = tiny_config(train={"epochs": 1})
    fit(cfg, out=tmp_path / "run")
    before = (tmp_path / "run" / "checkpoints" / "best.safetensors").read_bytes()
    with pytest.raises(IncompatibleError, match="already exists"):
        fit(cfg, out=tmp_path / "run")
    assert (tmp_path / "run" / "checkpoints" / "best.safetensors").read_bytes() == before


def test_nan_loss_stops_with_a_clear_error_and_keeps_checkpoints(tmp_path):
    cfg = tiny_config("vpt", {"num_tokens": 2}, train={"epochs": 3, "lr": 1e30, "optimizer": "sgd",
                                                       "warmup_epochs": 0.0})
    with pytest.raises(DivergedError, match="loss became"):
        fit(cfg, out=tmp_path / "run")
    run = RunDir(tmp_path / "run")
    assert run.manifest()["stages"][-1]["status"] == "failed"
    assert run.config().method == "vpt"  # what was written stays readable
    # and no temporary half-written file is left behind, nor the writer lock (removed when its holder finishes)
    assert [p.name for p in run.path.rglob(".*")] == []


def test_checkpoint_from_another_method_is_refused(tmp_path):
    fit(tiny_config("vpt", {"num_tokens": 2}, train={"epochs": 1}), out=tmp_path / "vpt")
    with pytest.raises(IncompatibleError, match="method 'vpt', not 'e2vpt'"):
        read_checkpoint(tmp_path / "vpt" / "checkpoints" / "best.safetensors", tiny_config("e2vpt"))
    with pytest.raises(IncompatibleError, match="backbone 'test_vit', not 'test_vit2'"):
        read_checkpoint(tmp_path / "vpt" / "checkpoints" / "best.safetensors",
                        tiny_config("vpt", backbone="test_vit2"))
    (tmp_path / "junk.safetensors").write_bytes(b"garbage")
    with pytest.raises(IncompatibleError, match="unreadable"):
        read_checkpoint(tmp_path / "junk.safetensors")


def test_lr_schedule_warms_up_then_decays_to_min():
    cfg = tiny_config(train={"epochs": 10, "lr": 1.0, "warmup_epochs": 2.0, "min_lr": 0.1}).train
    lrs = [lr_at(cfg, s, 10) for s in range(100)]
    assert lrs[0] == pytest.approx(0.05) and lrs[19] == pytest.approx(1.0)
    assert all(a <= b for a, b in zip(lrs[:20], lrs[1:20]))
    assert all(a >= b for a, b in zip(lrs[20:], lrs[21:])) and lrs[-1] == pytest.approx(0.1, abs=1e-3)
