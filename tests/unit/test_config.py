"""Recipe schema: defaults < YAML < overrides, type checks, unknown keys, round trip."""
from __future__ import annotations

import pytest
import yaml

from edgevp.config import load_yaml, run_config_to_yaml, to_dict
from edgevp.recipe import build_run_config
from edgevp.errors import ConfigError
from edgevp.prompts.vpt import VPTConfig


def test_overrides_take_precedence_and_are_typed():
    cfg = build_run_config({"method": "vpt", "train": {"lr": 0.1}},
                           ["train.lr=0.01", "prompt.num_tokens=50", "prompt.deep=false", "data.limit_train=100"])
    assert cfg.train.lr == 0.01 and isinstance(cfg.prompt, VPTConfig)
    assert cfg.prompt.num_tokens == 50 and cfg.prompt.deep is False and cfg.data.limit_train == 100
    assert build_run_config({}, ["train.lr=1"]).train.lr == 1.0  # int is accepted for float
    assert build_run_config({}, ["train.lr=1e-3"]).train.lr == 1e-3  # YAML 1.1 reads this as a string


@pytest.mark.parametrize("override, message", [
    ("train.lrr=0.1", "unknown config key 'train.lrr'"),
    ("train.epochs=2.5", "train.epochs: expected an integer"),
    ("train.optimizer=adam", "not one of sgd, adamw"),
    ("data.batch_size=abc", "expected an integer"),
    ("prompt.rank=4", "unknown config key 'prompt.rank'"),  # linear has no prompt options
    ("method=vpp", "unknown method 'vpp'"),
    ("trainlr", "not of the form key=value"),
    ("prompt.num_tokens=-1", "num_tokens must be >= 0"),
])
def test_bad_values_are_config_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        build_run_config({"method": "vpt"} if override.startswith("prompt.num") else {}, [override])


def test_unknown_key_suggests_the_close_one():
    with pytest.raises(ConfigError) as e:
        build_run_config({"train": {"epoch": 3}})
    assert "train.epochs" in e.value.line()


def test_resolved_config_round_trips_through_yaml():
    cfg = build_run_config({"method": "e2vpt", "prompt": {"num_kv": 7}}, ["backbone.img_size=112"])
    again = build_run_config(yaml.safe_load(run_config_to_yaml(cfg)))
    assert to_dict(again) == to_dict(cfg) and again.prompt.num_kv == 7


def test_every_recipe_resolves(tmp_path):
    import glob
    import os

    from ..conftest import RECIPES

    paths = glob.glob(os.path.join(RECIPES, "**", "*.yaml"), recursive=True)
    assert len(paths) >= 10
    for path in paths:
        build_run_config(load_yaml(path))


def test_missing_and_invalid_recipe_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_yaml(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(bad)
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_yaml(bad)
