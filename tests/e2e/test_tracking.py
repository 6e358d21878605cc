"""`train.track`: TensorBoard gets the same numbers as metrics.jsonl; a tracker that is not installed is one line
(exit 4) before training; `import edgevp` and `edgevp --help` import no tracker."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from edgevp.cli import app
from edgevp.errors import MissingError
from edgevp.train import fit
from edgevp.tracking import check_available

from ..conftest import tiny_config


def test_tensorboard_scalars_equal_the_metrics_file(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = tiny_config("vpt", {"num_tokens": 2}, train={"track": ["tensorboard"]})
    result = fit(cfg, out=tmp_path / "run")
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(tmp_path / "run" / "tb"), size_guidance={"scalars": 0}).Reload()
    for key in ("train_loss", "train_top1", "val_top1", "val_loss", "val_top5", "lr"):
        assert [e.value for e in events.Scalars(f"epoch/{key}")] == pytest.approx([m[key] for m in metrics],
                                                                                   rel=1e-6), key
    steps_per_epoch = 128 // 32
    assert [e.step for e in events.Scalars("epoch/val_top1")] == [steps_per_epoch * (m["epoch"] + 1) for m in metrics]
    assert [e.step for e in events.Scalars("step/loss")] == list(range(cfg.train.epochs * steps_per_epoch))
    assert events.Scalars("final/best_val_top1")[0].value == pytest.approx(result.best_val_top1, rel=1e-6)
    assert "config/text_summary" in events.Tags()["tensors"]  # the flattened config as text


def test_mlflow_metrics_equal_the_metrics_file(tmp_path, monkeypatch):
    """Runs where mlflow is installed (not in CI: `pip install 'edgevp[track-mlflow]'`): the default store is a
    SQLite file in the run directory (MLflow 3 refuses its file store), and its metrics equal metrics.jsonl."""
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = tiny_config("linear", train={"track": ["mlflow"]})
    result = fit(cfg, out=tmp_path / "run")
    run = tmp_path / "run"
    client = mlflow.tracking.MlflowClient(f"sqlite:///{run / 'mlflow.db'}")
    run_id = (run / "mlflow_run_id").read_text().strip()
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for key in ("val_top1", "train_loss"):
        got = [h.value for h in sorted(client.get_metric_history(run_id, f"epoch_{key}"), key=lambda h: h.step)]
        assert got == pytest.approx([m[key] for m in metrics], rel=1e-6), key
    assert client.get_run(run_id).data.metrics["final_best_val_top1"] == pytest.approx(result.best_val_top1)
    assert client.get_run(run_id).data.params["train.lr"] == str(cfg.train.lr)


def test_a_missing_tracker_is_one_line_before_training(tmp_path, monkeypatch):
    monkeypatch.setattr("edgevp.tracking.installed", lambda module: module != "mlflow")  # wherever it is installed
    with pytest.raises(MissingError, match=r"pip install 'edgevp\[track-mlflow\]'"):
        check_available(["tensorboard", "mlflow"])
    recipe = tmp_path / "r.yaml"
    recipe.write_text("method: linear\nbackbone: {name: test_vit, weights: none, img_size: 32}\n"
                      "data: {name: digits, limit_train: 64, limit_val: 16}\ntrain: {track: [mlflow]}\n")
    r = CliRunner().invoke(app, ["train", str(recipe), "-o", str(tmp_path / "run")])
    assert r.exit_code == 4
    assert r.output.strip() == ("error: train.track lists 'mlflow', but mlflow is not installed (pip install "
                                "'edgevp[track-mlflow]', or drop it from train.track)")
    assert not (tmp_path / "run" / "manifest.json").exists()


def test_importing_edgevp_loads_no_tracker():
    code = ("import sys, edgevp, edgevp.cli, edgevp.train\n"
            "from typer.testing import CliRunner\n"
            "CliRunner().invoke(edgevp.cli.app, ['--help'])\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorboard', 'mlflow') "
            "or m == 'torch.utils.tensorboard'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
