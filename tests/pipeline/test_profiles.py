"""Cluster profiles: each maps the GPU rules onto the cluster's GPU request and dry-runs with its executor plugin."""

from __future__ import annotations

import re

import pytest
import yaml

from carvana_seg.pipeline.config import resolve
from carvana_seg.pipeline.rounds import last_round, round_variants
from tests.helpers import job_counts, snakemake

GPU_RULES = ("train", "oof", "ensemble")
# profile -> (executor, python modules its dry-run needs)
PROFILES = {
    "slurm": ("slurm", ("snakemake_executor_plugin_slurm",)),
    "kubernetes": ("kubernetes", ("snakemake_executor_plugin_kubernetes", "snakemake_storage_plugin_fs")),
}


def _profile(repo_root, name: str) -> dict:
    return yaml.safe_load((repo_root / "profiles" / name / "profile.yaml").read_text())


@pytest.mark.parametrize("name", PROFILES)
def test_profile_requests_one_gpu_per_gpu_job(repo_root, name):
    prof = _profile(repo_root, name)
    assert prof["executor"] == PROFILES[name][0]
    assert "gpu" not in prof.get("default-resources", {})  # CPU jobs never ask for a GPU
    for rule in GPU_RULES:
        res = prof["set-resources"][rule]
        assert res["gpu"] == 1, (rule, res)
        if name == "kubernetes":
            assert res["gpu_manufacturer"] == "nvidia"  # the plugin needs it to request nvidia.com/gpu


@pytest.mark.parametrize("name", PROFILES)
def test_profile_dry_run_plans_gpu_jobs(repo_root, tmp_path, name):
    for module in PROFILES[name][1]:
        pytest.importorskip(module)
    res = snakemake(repo_root, tmp_path, "-n", "--workflow-profile", name,
                    "--configfile", str(repo_root / "config" / "demo.yaml"))
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    demo = yaml.safe_load((repo_root / "config" / "demo.yaml").read_text())
    full = resolve(demo)  # pseudo-label rounds >= 2 retrain their variants on every fold
    n_rounds = last_round(full)
    n_models = sum(len(round_variants(full, r)) for r in range(1, n_rounds + 1)) * demo["folds"]["k"]
    counts = job_counts(out)
    assert counts.get("train") == n_models and counts.get("oof") == n_models, counts
    assert counts.get("ensemble") == n_rounds, counts
    jobs = re.split(r"\n(?=\[.*\]\n)|\n(?=rule \w+:)", out)
    for rule in GPU_RULES:
        blocks = [b for b in jobs if b.lstrip().startswith(f"rule {rule}:")]
        assert blocks and all(re.search(r"resources:.*\bgpu=1\b", b) for b in blocks), (rule, blocks[:1])
    fetch = next(b for b in jobs if b.lstrip().startswith("rule fetch:"))
    assert not re.search(r"resources:.*\bgpu=", fetch)


def test_cpu_profile_runs_model_jobs_single_threaded(repo_root, tmp_path):
    """`make demo` without a GPU: model jobs get one thread each (two at once on 2 cores), other rules keep theirs."""
    prof = _profile(repo_root, "cpu")
    assert prof["set-threads"] == {rule: 1 for rule in GPU_RULES}
    assert "resources" not in prof  # no gpu limit: only the cores bound the number of jobs
    res = snakemake(repo_root, tmp_path, "-n", "--workflow-profile", "cpu",
                    "--configfile", str(repo_root / "config" / "demo.yaml"))
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    jobs = re.split(r"\n(?=\[.*\]\n)|\n(?=rule \w+:)", out)
    for rule in GPU_RULES:
        blocks = [b for b in jobs if b.lstrip().startswith(f"rule {rule}:")]
        assert blocks and not any(re.search(r"threads: [2-9]", b) for b in blocks), (rule, blocks[:1])
    fetch = next(b for b in jobs if b.lstrip().startswith("rule fetch:"))
    assert re.search(r"threads: 2\b", fetch), fetch
    makefile = (repo_root / "Makefile").read_text()
    assert "--workflow-profile cpu" in makefile and "nvidia-smi -L" in makefile
