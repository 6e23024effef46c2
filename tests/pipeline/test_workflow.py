"""The Snakemake DAG: lint-clean, and dry-runs of the competition and demo configs plan the expected jobs."""

from __future__ import annotations

import shutil

import pytest

from tests.helpers import job_counts, make_layout, snakemake, write_config


@pytest.mark.dag
def test_competition_config_plans_15_training_jobs(repo_root, tmp_path):
    raw = make_layout(tmp_path / "kaggle_copy", n_cars=6, w=64, h=48)
    cfg = write_config(tmp_path, repo_root / "config/config.yaml", data={"source": "local", "path": str(raw)})
    res = snakemake(repo_root, tmp_path, "-n", "--configfile", str(cfg))
    assert res.returncode == 0, res.stderr[-3000:]
    counts = job_counts(res.stdout + res.stderr)
    # round one: 3 variants x 5 folds; pseudo-label round two (pseudo_label.variants: null) retrains all 15
    assert counts.get("train") == 15 + 15, counts
    assert counts.get("oof") == 15 + 15, counts
    assert counts.get("resize_cache") == 3, counts
    assert "resize_pseudo" not in counts, counts  # pseudo-labels are decoded by the DataLoader, never cached
    for rule in ("fetch", "validate_data", "folds", "pseudo_labels", "pseudo_gain"):
        assert counts.get(rule) == 1, (rule, counts)
    for rule in ("threshold", "ensemble", "outliers", "submission", "oof_table"):
        assert counts.get(rule) == 2, (rule, counts)  # once per round
    assert "submit" not in counts  # uploading is never part of `all`
    assert "score" not in counts  # no test truth outside synthetic data


@pytest.mark.dag
def test_kaggle_source_dry_run_plans_data_stages(repo_root, tmp_path):
    res = snakemake(repo_root, tmp_path, "-n", "--configfile", str(repo_root / "config/config.yaml"))
    assert res.returncode == 0, res.stderr[-3000:]
    assert job_counts(res.stdout + res.stderr).get("fetch") == 1


@pytest.mark.dag
def test_bad_config_key_fails_naming_it(repo_root, tmp_path):
    cfg = write_config(tmp_path, repo_root / "config/demo.yaml", folds={"k": 3, "seeed": 1})
    res = snakemake(repo_root, tmp_path, "-n", "--configfile", str(cfg))
    assert res.returncode != 0
    assert "seeed" in res.stdout + res.stderr


@pytest.mark.dag
@pytest.mark.skipif(shutil.which("true") is None, reason="needs a POSIX shell")
def test_lint_is_clean(repo_root, tmp_path):
    res = snakemake(repo_root, tmp_path, "--lint", "--configfile", str(repo_root / "config/demo.yaml"))
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    assert "Lints for" not in out, out[-3000:]


def test_sample_config_validates(repo_root):
    from carvana_seg.pipeline import config

    cfg = config.load(repo_root / "config/sample.yaml")
    assert cfg["data"] == {**cfg["data"], "source": "local", "path": "../shared/carvana-sample"}
    assert cfg["variants"] and cfg["pseudo_label"]["enabled"] and cfg["folds"]["k"] >= 2
    # offline: weights from scratch or from an installed package, never a download
    assert all(w is None or w.startswith("package:") for w in (v["encoder_weights"] for v in cfg["variants"]))
    assert cfg["threshold"]["value"] is None  # searched on the OOF predictions, never on test photos


@pytest.mark.dag
def test_sample_config_dry_run_plans_every_stage(repo_root, real_sample, tmp_path):
    """config/sample.yaml on the real sample (skipped without ../shared/carvana-sample): every stage is planned."""
    cfg = write_config(tmp_path, repo_root / "config/sample.yaml", data={"source": "local", "path": str(real_sample)})
    res = snakemake(repo_root, tmp_path, "-n", "--configfile", str(cfg))
    assert res.returncode == 0, res.stderr[-3000:]
    counts = job_counts(res.stdout + res.stderr)
    from carvana_seg.pipeline import config

    sample = config.load(repo_root / "config/sample.yaml")
    k, n_variants = sample["folds"]["k"], len(sample["variants"])
    n_retrained = len(sample["pseudo_label"]["variants"] or sample["variants"])
    assert counts.get("train") == k * n_variants + k * n_retrained, counts  # round two retrains the named variants
    for rule in ("fetch", "validate_data", "folds", "pseudo_labels", "pseudo_gain", "report_figures"):
        assert counts.get(rule) == 1, (rule, counts)
    for rule in ("threshold", "ensemble", "outliers", "submission"):
        assert counts.get(rule) == 2, (rule, counts)
