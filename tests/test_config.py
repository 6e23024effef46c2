"""Config schema: defaults, unknown keys, ranges, slices; both shipped configs resolve."""

from __future__ import annotations

import copy

import pytest
import yaml

from carvana_seg import config
from carvana_seg.errors import ConfigError

MIN = {"name": "t", "data": {"source": "synthetic"}, "variants": [{"name": "a", "width": 64, "height": 64}]}


def test_defaults_filled_recursively():
    cfg = config.resolve(MIN)
    assert cfg["folds"]["k"] == 5
    assert cfg["train"]["loss"]["boundary_weight"] == 3.0
    assert cfg["variants"][0]["arch"] == "Unet"
    assert cfg["variants"][0]["encoder_weights"] is None
    assert cfg["data"]["synthetic"]["width"] == 1918


@pytest.mark.parametrize(
    "patch,key",
    [
        ({"tyop": 1}, "<top level>"),
        ({"folds": {"k": 1}}, "folds.k"),
        ({"data": {"source": "ftp"}}, "data.source"),
        ({"variants": [{"name": "a", "width": 100, "height": 64}]}, "variants.0.width"),
        ({"train": {"loss": {"boundary_wieght": 2}}}, "train.loss"),
        ({"data": {"source": "local"}}, "data.path"),
    ],
)
def test_bad_keys_name_the_key(patch, key):
    bad = copy.deepcopy(MIN)
    bad.update(patch)
    with pytest.raises(ConfigError, match=f"'{key}"):
        config.resolve(bad)


def test_duplicate_variant_names():
    bad = copy.deepcopy(MIN)
    bad["variants"] = bad["variants"] * 2
    with pytest.raises(ConfigError, match="duplicate"):
        config.resolve(bad)


@pytest.mark.parametrize("path", ["config/config.yaml", "config/demo.yaml"])
def test_shipped_configs_resolve(repo_root, path):
    cfg = config.load(repo_root / path)
    assert cfg["name"]


def test_competition_config_is_the_seed(repo_root):
    cfg = config.load(repo_root / "config/config.yaml")
    assert cfg["data"]["source"] == "kaggle"
    assert cfg["folds"]["k"] == 5
    assert [(v["width"], v["height"]) for v in cfg["variants"]] == [(1024, 1024), (1344, 896), (1280, 1280)]
    assert all(v["arch"] == "Unet" for v in cfg["variants"])


def test_demo_config_is_synthetic(repo_root):
    raw = yaml.safe_load((repo_root / "config/demo.yaml").read_text())
    assert raw["name"] == "demo" and raw["data"]["source"] == "synthetic"


def test_stage_slice_is_minimal_and_stable():
    cfg = config.resolve(MIN)
    s = config.stage_config(cfg, "threshold")
    assert set(s) == {"name", "threshold", "variants", "folds"}
    t = config.stage_config(cfg, "train", "a")
    assert t["variant"]["name"] == "a" and "threshold" not in t
    other = copy.deepcopy(cfg)
    other["threshold"]["value"] = 0.4
    assert config.to_json(config.stage_config(other, "train", "a")) == config.to_json(t)
    assert config.config_hash(cfg) != config.config_hash(other)
