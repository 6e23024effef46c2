"""`make rehearse`: config/config.yaml itself with config/rehearse.yaml over it. The override changes only sizes
(same aspect ratios), epochs and the data, its DAG is the competition's, rule for rule, and it runs end to end on a
tiny synthetic set (docs/plan.md has the numbers of the full `make rehearse`)."""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml

from carvana_seg.plan.command import load_configs, make_plan
from tests.helpers import job_counts, snakemake

ALLOWED_VARIANT_CHANGES = {"width", "height", "epochs"}


def _yaml(repo_root, name: str) -> dict:
    return yaml.safe_load((repo_root / "config" / name).read_text())


def test_override_only_shrinks_sizes_epochs_and_data(repo_root):
    base, over = _yaml(repo_root, "config.yaml"), _yaml(repo_root, "rehearse.yaml")
    assert set(over) <= {"name", "data", "variants", "pseudo_label"}
    assert set(over["pseudo_label"]) == {"epochs"} and over["data"]["path"] == "../shared/carvana-sample"
    assert _yaml(repo_root, "rehearse-synthetic.yaml") == {"data": {"source": "synthetic"}}
    assert [v["name"] for v in over["variants"]] == [v["name"] for v in base["variants"]]
    for b, o in zip(base["variants"], over["variants"]):
        assert {k for k in b if b[k] != o.get(k)} <= ALLOWED_VARIANT_CHANGES | {"encoder_weights"}, (b, o)
        assert set(o) == set(b) and o["encoder_weights"] is None, (b, o)  # random init: the rehearsal runs offline
        assert o["width"] * b["height"] == o["height"] * b["width"]  # same aspect ratio
        assert o["width"] < b["width"] and o["epochs"] < b["epochs"]


@pytest.mark.dag
def test_rehearsal_dag_is_the_competition_dag(repo_root, tmp_path):
    files = [str(repo_root / "config" / f) for f in ("config.yaml", "rehearse.yaml", "rehearse-synthetic.yaml")]
    res = snakemake(repo_root, tmp_path, "-n", "--configfile", *files)
    assert res.returncode == 0, res.stderr[-3000:]
    counts = job_counts(res.stdout + res.stderr)
    competition = make_plan(load_configs(files[:1]), "cpu")["jobs"]
    assert counts == make_plan(load_configs(files), "cpu")["jobs"]
    assert counts.pop("score") == 2  # synthetic data has test truth: each round's submission is scored
    assert counts == competition  # 5 folds x 3 variants, pseudo-label round, outliers with zoom, submission
    res = subprocess.run(["make", "-n", "rehearse"], cwd=repo_root, capture_output=True, text=True)
    assert "--configfile config/config.yaml config/rehearse.yaml" in res.stdout, res.stdout + res.stderr


@pytest.mark.dag
@pytest.mark.slow
def test_the_rehearsal_runs_every_rule_end_to_end(repo_root, tmp_path):
    """The rehearsal itself, for real, at the smallest data that still runs every rule: config.yaml + rehearse.yaml
    + rehearse-synthetic.yaml, plus one file that shrinks only the synthetic set (5 training cars, one per fold; 2
    test cars, one an outlier; 384x256 photos, the Kaggle aspect ratio). CPU profile, as `make rehearse` without a
    GPU. Every rule of the competition DAG runs: 3 variants in both rounds, outliers, a scored and validated
    submission per round, pseudo-gain and the report figures.

    Two of the 5 folds are trained (``folds.use: [0, 1]``, still k = 5): folds 2-4 are the same rules with another
    wildcard, and two folds keep every step that joins folds (the OOF table over folds, each variant's fold average
    in the ensemble, round two retraining each fold from its own round-one model). That the 5-fold DAG is the
    competition's, job for job, is test_rehearsal_dag_is_the_competition_dag's dry run; here the run's job counts
    equal `make plan`'s for the same files. 12 train and 12 OOF jobs instead of 30 + 30.

    The same file sizes the worker pools for 2 cores: config.yaml's 16 DataLoader workers per train job (8 per
    OOF, ensemble and resize job) are sized for a GPU box's cores, and two CPU jobs forking 16 each spent two
    thirds of this test's 455 s starting and scheduling them (benchmark files: 16-35 s per one-epoch 32x32 train
    job, ~10 GB RSS). One worker each still runs every worker code path (persistent, reseeded DataLoader workers;
    the process pools); the counts do not change the DAG, which test_rehearsal_dag_is_the_competition_dag checks."""
    tiny = {
        "data": {"synthetic": {"n_train_cars": 5, "n_test_cars": 2, "n_outlier_cars": 1, "width": 384, "height": 256}},
        "folds": {"use": [0, 1]},
        "train": {"num_workers": 1},
        "predict": {"workers": 1},
        "resize": {"workers": 2},
    }
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(tiny))
    files = [str(repo_root / "config" / f) for f in ("config.yaml", "rehearse.yaml", "rehearse-synthetic.yaml")]
    res = snakemake(
        repo_root,
        tmp_path,
        "--cores",
        "2",
        "--workflow-profile",
        "cpu",
        "--configfile",
        *files,
        str(tmp_path / "tiny.yaml"),
        timeout=1500,
    )
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    counts = job_counts(out)
    assert counts == make_plan(load_configs([*files, str(tmp_path / "tiny.yaml")]), "cpu")["jobs"]
    results = tmp_path / "results" / "rehearse"
    assert (results / "submission.csv.gz").stat().st_size > 0 and (results / "pseudo_gain.json").is_file()
    score = json.loads((results / "test_score.json").read_text())
    assert 0.5 < score["mean_dice"] <= 1.0, score
