"""Data-parallel training under torchrun (CPU, gloo, 2 processes): the same prompts/head as one process on the same
global batch, interruption and resume (also with another process count), Prompt Condensation scores summed over
ranks, and the bad input of more processes than samples in a batch.

One test launches the real command line (`edgevp train --nproc 2`, i.e. torchrun); the others fork two ranks from
the test process with torchrun's environment variables (RANK, WORLD_SIZE, MASTER_ADDR/PORT), which runs the same
code without importing torch and timm again in every rank.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import socket
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from edgevp import distributed
from edgevp.cli import app
from edgevp.condense.pc import PCOptions, condense_pc
from edgevp.config import load_yaml
from edgevp.errors import ConfigError, EdgevpError
from edgevp.recipe import build_run_config
from edgevp.condense.scores import mask_scores
from edgevp.train import fit

from ..conftest import tiny_model
from .. import support

ROOT = Path(__file__).resolve().parents[2]
# 63 training images in global batches of 31: slices of 15 and 16, and a last batch of 1 that leaves rank 0 empty
RECIPE = {"method": "vpt", "backbone": {"name": "test_vit", "weights": "none", "img_size": 32},
          "prompt": {"num_tokens": 4, "deep": True},
          "data": {"name": "digits", "limit_train": 63, "limit_val": 32, "limit_test": 32, "batch_size": 31},
          "train": {"epochs": 2, "optimizer": "adamw", "lr": 0.003, "weight_decay": 0.0, "warmup_epochs": 0.5,
                    "device": "cpu"}}
STEPS = 6  # 3 steps per epoch


def _env(**extra) -> dict:
    path = [str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path), "OMP_NUM_THREADS": "1", **extra}


def edgevp(*args: str, cwd: Path, **env) -> subprocess.CompletedProcess:
    return support.edgevp(*args, cwd=cwd, env=_env(**env), timeout=300)


def _rank_main(rank: int, world: int, port: int, fn, args) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    code = 0
    try:
        fn(*args)
    except EdgevpError as e:
        print(f"rank {rank}: {e.line()}", file=sys.stderr)
        code = e.exit_code
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        distributed.shutdown()
    os._exit(code)


def run_ranks(world: int, fn, *args) -> list[int]:
    """`fn(*args)` in `world` forked processes joined as torchrun ranks; their exit codes."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_rank_main, args=(r, world, port, fn, args)) for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
    codes = [p.exitcode for p in procs]
    for p in procs:
        if p.is_alive():
            p.kill()
    return codes


def assert_same_tensors(a: Path, b: Path) -> None:
    ta, tb = (load_file(str(p / "checkpoints" / "last.safetensors")) for p in (a, b))
    assert ta.keys() == tb.keys()
    for k in ta:
        torch.testing.assert_close(ta[k], tb[k], atol=1e-6, rtol=1e-5, msg=k)


def assert_same_metrics(a: Path, b: Path) -> None:
    ma, mb = ([json.loads(line) for line in (p / "metrics.jsonl").read_text().splitlines()] for p in (a, b))
    assert len(ma) == len(mb) == RECIPE["train"]["epochs"]
    for ra, rb in zip(ma, mb):
        for k in ("train_loss", "train_top1", "val_loss", "val_top1", "val_top5", "lr"):
            assert ra[k] == pytest.approx(rb[k], rel=1e-5), k


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A recipe file and the one-process reference run (`single`)."""
    d = tmp_path_factory.mktemp("ddp")
    (d / "r.yaml").write_text(yaml.safe_dump(RECIPE))
    fit(build_run_config(load_yaml(d / "r.yaml")), out=d / "single")
    return d


def _train(recipe: Path, out: Path) -> None:
    fit(build_run_config(load_yaml(recipe)), out=out)


def test_two_processes_train_the_same_tensors_as_one(work):
    assert run_ranks(2, _train, work / "r.yaml", work / "two") == [0, 0]
    stage = json.loads((work / "two" / "manifest.json").read_text())["stages"][-1]
    assert (stage["world_size"], stage["backend"], stage["per_rank_batch"]) == (2, "gloo", [15, 16])
    assert stage["allreduce_bytes_per_step"] > 0
    assert_same_tensors(work / "single", work / "two")
    assert_same_metrics(work / "single", work / "two")


def test_torchrun_run_interrupted_then_resumed_with_two_or_one_process(work):
    run = edgevp("train", "r.yaml", "-o", "cut", "--nproc", "2", cwd=work, EDGEVP_STOP_AFTER_STEPS="2")
    assert run.returncode == 130, run.stderr[-3000:]  # rank 0's exit code through `--nproc` (torchrun)
    assert run.stderr.count("error: interrupted at epoch 1 step 2; checkpoint saved") == 1  # rank 0 alone says it
    progress = torch.load(work / "cut" / "checkpoints" / "resume.pt", weights_only=False)["progress"]
    assert progress["global_step"] == 2
    shutil.copytree(work / "cut", work / "cut1")
    assert run_ranks(2, fit, None, None, work / "cut") == [0, 0]  # resume with the same process count
    fit(None, resume=work / "cut1")  # and with one
    for path in ("cut", "cut1"):
        assert_same_tensors(work / "single", work / path)
        assert_same_metrics(work / "single", work / path)
    stages = json.loads((work / "cut1" / "manifest.json").read_text())["stages"]
    assert [(s["status"], s.get("world_size", 1)) for s in stages] == [("interrupted", 2), ("completed", 1)]


def _train_stopping_rank_1(recipe: Path, out: Path, steps: int) -> None:
    if distributed.rank() == 1:  # as a SIGINT/SIGTERM that reaches rank 1 alone
        os.environ["EDGEVP_STOP_AFTER_STEPS"] = str(steps)
    _train(recipe, out)


def test_stop_on_one_rank_stops_both_at_the_same_step_with_one_checkpoint(work):
    assert run_ranks(2, _train_stopping_rank_1, work / "r.yaml", work / "stop", 4) == [130, 130]
    state = torch.load(work / "stop" / "checkpoints" / "resume.pt", weights_only=False)
    assert (state["progress"]["epoch"], state["progress"]["step_in_epoch"]) == (1, 1)
    assert [s["status"] for s in json.loads((work / "stop" / "manifest.json").read_text())["stages"]] == [
        "interrupted"]


def _train_killing_rank_1(recipe: Path, out: Path) -> None:
    if distributed.rank() == 1:  # rank 1 dies (as kill -9) in its third step
        import edgevp.train

        step, calls = edgevp.train._ddp_step, []
        edgevp.train._ddp_step = lambda *a: os._exit(9) if len(calls) == 2 else (calls.append(1), step(*a))[1]
    _train(recipe, out)


def test_a_dead_rank_stops_the_others_with_a_clear_error(work, capfd):
    assert run_ranks(2, _train_killing_rank_1, work / "r.yaml", work / "dead") == [1, 9]  # no hang
    stage = json.loads((work / "dead" / "manifest.json").read_text())["stages"][-1]
    assert stage["status"] == "failed" and "another torchrun rank stopped" in stage["error"]
    assert "rank 0: another torchrun rank stopped or stopped answering" in capfd.readouterr().err


def test_prompt_condensation_scores_with_two_ranks_equal_one_process(work):
    opts = PCOptions(keep=0.5, finetune_epochs=1)
    condense_pc(work / "single", work / "pc1", opts)
    assert run_ranks(2, condense_pc, work / "single", work / "pc2", opts) == [0, 0]
    one, two = (load_file(str(work / p / "condense" / "scores.safetensors")) for p in ("pc1", "pc2"))
    assert one.keys() == two.keys()
    for k in one:
        assert one[k].abs().sum() > 0
        torch.testing.assert_close(one[k], two[k], atol=1e-7, rtol=1e-5, msg=k)
    keep = [json.loads((work / p / "condense" / "keep_mask.json").read_text()) for p in ("pc1", "pc2")]
    assert keep[0] == keep[1]
    assert_same_tensors(work / "pc1", work / "pc2")


def test_more_processes_than_a_global_batch_is_one_line_and_exit_2(work, monkeypatch):
    line = ("error: 32 processes for a global batch of 31 (data.batch_size): a rank would never get a sample (use at "
            "most 31 processes, or raise data.batch_size)")
    r = CliRunner().invoke(app, ["train", str(work / "r.yaml"), "-o", str(work / "big"), "--nproc", "32"])
    assert (r.exit_code, r.output.strip()) == (2, line)
    for rank, output in (("0", line), ("1", "")):  # under torchrun: rank 0 says it, the others exit silently
        monkeypatch.setenv("WORLD_SIZE", "32")
        monkeypatch.setenv("RANK", rank)
        r = CliRunner().invoke(app, ["train", str(work / "r.yaml"), "-o", str(work / "big")])
        assert (r.exit_code, r.output.strip()) == (2, output)
    assert not (work / "big").exists()  # refused before any work
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError):
        distributed.check_batch(1)
    distributed.check_batch(3)  # an uneven split is fine
    assert [distributed.batch_slice(3, 2, r) for r in (0, 1)] == [slice(0, 1), slice(1, 3)]


def _mask_scores(model, dataset, out: Path) -> None:
    scores = mask_scores(model, distributed.ShardedBatches(dataset, range(len(dataset)), 7))
    if distributed.is_main():
        torch.save(scores, out)


def test_e2vpt_mask_scores_with_two_ranks_equal_one_process(tmp_path):
    torch.manual_seed(0)
    model = tiny_model("e2vpt", {"num_tokens": 4, "num_kv": 2, "dropout": 0.0})
    g = torch.Generator().manual_seed(1)
    data = torch.utils.data.TensorDataset(torch.rand(20, 3, 32, 32, generator=g),
                                          torch.randint(0, 10, (20,), generator=g))
    one = mask_scores(model, torch.utils.data.DataLoader(data, batch_size=7))  # batches of 7, 7, 6
    assert run_ranks(2, _mask_scores, model, data, tmp_path / "two.pt") == [0, 0]
    two = torch.load(tmp_path / "two.pt")
    for a, b in zip(one, two):
        assert a.abs().sum() > 0
        torch.testing.assert_close(a, b, atol=1e-7, rtol=1e-5)
