"""Config schema: defaults, unknown keys, ranges, slices; both shipped configs resolve."""

from __future__ import annotations

import copy

import pytest
import yaml

from carvana_seg.pipeline import config
from carvana_seg.pipeline.errors import ConfigError

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


@pytest.mark.parametrize("path", ["config/config.yaml", "config/demo.yaml", "config/sample.yaml"])
def test_shipped_configs_resolve(repo_root, path):
    cfg = config.load(repo_root / path)
    assert cfg["name"]


def test_competition_config_is_the_seed(repo_root):
    cfg = config.load(repo_root / "config/config.yaml")
    assert cfg["data"]["source"] == "kaggle"
    assert cfg["folds"]["k"] == 5
    assert [(v["width"], v["height"]) for v in cfg["variants"]] == [(1024, 1024), (1344, 896), (1280, 1280)]
    assert all(v["arch"] == "Unet" for v in cfg["variants"])
    assert (cfg["train"]["optimizer"], cfg["train"]["schedule"]) == ("adamw", "onecycle")  # docs/recipe.md


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


# --- config layering: a given config is complete on its own (schema defaults), never merged into config.yaml ----


def _readme_config(repo_root) -> dict:
    readme = (repo_root / "README.md").read_text()
    block = readme[readme.index("```yaml\n# my.yaml\n") + len("```yaml\n") :]
    return yaml.safe_load(block[: block.index("```")])


@pytest.mark.dag
@pytest.mark.slow
def test_readme_minimal_config_plans_what_it_says_with_schema_defaults(repo_root, tmp_path):
    from carvana_seg.pipeline.config import fold_ids, resolve
    from carvana_seg.pipeline.rounds import last_round, round_variants
    from tests.helpers import job_counts, snakemake

    mine = _readme_config(repo_root)
    (tmp_path / "my.yaml").write_text(yaml.safe_dump(mine))
    res = snakemake(repo_root, tmp_path, "-n", "--configfile", str(tmp_path / "my.yaml"))
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    full = resolve(mine)
    n_models = sum(len(round_variants(full, r)) for r in range(1, last_round(full) + 1)) * len(fold_ids(full))
    assert job_counts(out)["train"] == n_models
    assert f"results/{mine['name']}/" in out and "results/carvana" not in out
    competition = yaml.safe_load((repo_root / "config" / "config.yaml").read_text())
    schema_workers = resolve(
        {"name": "x", "data": {"source": "synthetic"}, "variants": [{"name": "v", "width": 64, "height": 64}]}
    )
    assert full["train"]["num_workers"] == schema_workers["train"]["num_workers"] != competition["train"]["num_workers"]


@pytest.mark.dag
def test_a_config_without_name_is_refused_by_snakemake_and_the_cli(repo_root, tmp_path):
    from carvana_seg.pipeline import cli
    from tests.helpers import snakemake

    (tmp_path / "noname.yaml").write_text(
        yaml.safe_dump({"data": {"source": "synthetic"}, "variants": [{"name": "v", "width": 64, "height": 64}]})
    )
    res = snakemake(repo_root, tmp_path, "-n", "--configfile", str(tmp_path / "noname.yaml"))
    assert res.returncode != 0 and "'name' is a required property" in res.stdout + res.stderr
    assert not (tmp_path / "results" / "carvana").exists()
    assert cli.main(["folds", "--configfile", str(tmp_path / "noname.yaml"), "--raw", "x", "--out", "y"]) == 2


def test_stage_cli_gives_a_minimal_config_the_schema_defaults(tmp_path):
    from carvana_seg.pipeline.config import _schema, load

    (tmp_path / "min.yaml").write_text(
        yaml.safe_dump(
            {"name": "m", "data": {"source": "synthetic"}, "variants": [{"name": "v", "width": 64, "height": 64}]}
        )
    )
    cfg = load(tmp_path / "min.yaml")
    schema = _schema()["properties"]
    assert cfg["train"]["num_workers"] == schema["train"]["properties"]["num_workers"]["default"]
    assert cfg["folds"]["k"] == schema["folds"]["properties"]["k"]["default"]
