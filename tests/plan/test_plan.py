"""The planner (carvana_seg.plan): the competition fits the disk budget, job counts equal the dry run's, the FLOP
counts behave, and `make plan` / `python -m carvana_seg plan` print the table."""

from __future__ import annotations

import json
import subprocess

import pytest

from carvana_seg.pipeline import cli
from carvana_seg.plan.command import load_configs, make_plan
from carvana_seg.plan.compare import compare, device_row
from carvana_seg.plan.model_cost import model_cost
from tests.helpers import job_counts, snakemake

DISK_BUDGET = 150e9  # issue 12: peak disk of config/config.yaml on the full Kaggle data, both rounds


@pytest.fixture(scope="module")
def competition(repo_root) -> dict:
    return make_plan(load_configs([str(repo_root / "config" / "config.yaml")]), "h100")


def test_competition_peak_disk_within_budget(competition):
    stages = {s["rule"]: s for s in competition["stages"]}
    assert competition["data"]["n_train"] == 5088 and competition["data"]["n_test"] == 100_064
    assert competition["peak_disk"] <= DISK_BUDGET, competition["peak_disk"] / 1e9
    # the three training caches are most of it: 5,088 x (1024x1024 + 1344x896 + 1280x1280) x 4 bytes
    assert stages["resize_cache"]["disk"] == pytest.approx(5088 * 4 * (1024**2 + 1344 * 896 + 1280**2))
    # round two's 50,032 pseudo-labelled photos are linked, never cached again at three sizes (~778 GB)
    assert stages["pseudo_labels"]["disk"] < 2e9


@pytest.mark.slow
def test_disk_budget_can_fail(repo_root):
    cfg = load_configs([str(repo_root / "config" / "config.yaml")])
    for v in cfg["variants"]:  # 2x the side: 4x the cache
        v["width"], v["height"] = 2 * v["width"], 2 * v["height"]
    assert make_plan(cfg, "h100")["peak_disk"] > DISK_BUDGET


@pytest.mark.dag
@pytest.mark.parametrize("configs", [["config.yaml"], ["demo.yaml"]])
def test_planned_jobs_equal_the_dry_run(repo_root, tmp_path, configs):
    paths = [str(repo_root / "config" / c) for c in configs]
    res = snakemake(repo_root, tmp_path, "-n", "--configfile", *paths)
    assert res.returncode == 0, res.stderr[-3000:]
    planned = make_plan(load_configs(paths), "cpu")["jobs"]
    assert planned == job_counts(res.stdout + res.stderr)


def test_flop_counts_scale_with_pixels_and_training_costs_about_three_forwards():
    v = {"name": "v", "arch": "Unet", "encoder": "resnet18", "width": 64, "height": 64}
    small, big = model_cost(v), model_cost(dict(v, width=128, height=64))
    assert big.forward == pytest.approx(2 * small.forward, rel=0.02)
    assert 2.5 < small.train / small.forward < 3.5
    assert 10e6 < small.params < 20e6  # resnet18 U-Net: 14.3 M


def test_plan_command_prints_every_stage_and_writes_json(repo_root, tmp_path, capsys):
    out = tmp_path / "plan.json"
    assert (
        cli.main(
            ["plan", "--configfile", str(repo_root / "config" / "config.yaml"), "--gpu", "A100", "--json", str(out)]
        )
        == 0
    )
    text = capsys.readouterr().out
    for word in ("train", "ensemble", "resize_cache", "peak disk", "2,140 GPU-hours", "assumed"):
        assert word in text, word
    plan = json.loads(out.read_text())
    assert plan["device"]["name"] == "a100" and plan["hours"]["train"] > 0
    assert cli.main(["plan", "--configfile", str(repo_root / "config" / "config.yaml"), "--gpu", "tpu9"]) == 2
    assert "throughput table" in capsys.readouterr().err


def test_later_config_files_win(repo_root, tmp_path):
    over = tmp_path / "over.yaml"
    over.write_text("name: small\nfolds: {k: 3}\npseudo_label: {enabled: false}\n")
    cfg = load_configs([str(repo_root / "config" / "config.yaml"), str(over)])
    assert cfg["name"] == "small" and cfg["folds"]["k"] == 3 and cfg["folds"]["seed"] == 42
    assert make_plan(cfg, "h100")["jobs"]["train"] == 3 * 3


def test_report_compares_planned_with_measured(competition):
    import pandas as pd

    assert device_row("cuda (NVIDIA H100 80GB HBM3)") == "h100" and device_row("cpu") == "cpu"
    measured = [
        pd.DataFrame(
            {
                "stage": ["train", "resize", "submission", "submission_round1"],
                "jobs": [15, 3, 1, 1],
                "total_s": [3600.0, 60.0, 1.0, 1.0],
            }
        ),
        pd.DataFrame({"stage": ["train"], "jobs": [15], "total_s": [7200.0]}),
    ]
    table = compare(competition, measured).set_index("stage")
    assert table.loc["train", "planned_jobs"] == 30 and table.loc["train", "measured_jobs"] == 30
    assert table.loc["train", "measured_hours"] == 3.0 and table.loc["resize_cache", "measured_jobs"] == 3
    assert table.loc["submission", "measured_jobs"] == table.loc["submission", "planned_jobs"] == 2
    assert pd.isna(table.loc["resize_cache", "planned_hours"])  # CPU stages: no planned device-hours


def test_make_plan_target(repo_root):
    res = subprocess.run(
        ["make", "-n", "plan", "CONFIG=config/config.yaml", "GPU=h100"], cwd=repo_root, capture_output=True, text=True
    )
    assert "-m carvana_seg plan --configfile config/config.yaml --gpu h100" in res.stdout, res.stdout + res.stderr
