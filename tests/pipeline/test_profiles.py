"""Cluster profiles: each maps the GPU rules onto the cluster's GPU request and dry-runs with its executor plugin."""

from __future__ import annotations

import re

import pytest
import yaml

from carvana_seg.pipeline.config import load, resolve
from carvana_seg.pipeline.resources import rule_threads
from carvana_seg.pipeline.rounds import last_round, round_variants
from carvana_seg.pipeline.stages import GPU_RULES, LOCAL_RULES
from tests.helpers import job_counts, snakemake

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
    # exactly the GPU rules ask for a GPU; the local rules are never given cluster resources
    assert {r for r, res in prof["set-resources"].items() if res.get("gpu")} == set(GPU_RULES)
    assert not set(LOCAL_RULES) & set(prof["set-resources"])


@pytest.mark.dag
@pytest.mark.parametrize("name", PROFILES)
def test_profile_dry_run_plans_gpu_jobs(repo_root, tmp_path, name):
    for module in PROFILES[name][1]:
        pytest.importorskip(module)
    res = snakemake(
        repo_root, tmp_path, "-n", "--workflow-profile", name, "--configfile", str(repo_root / "config" / "demo.yaml")
    )
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    demo = yaml.safe_load((repo_root / "config" / "demo.yaml").read_text())
    full = resolve(demo)  # pseudo-label rounds >= 2 retrain their variants on every fold
    n_rounds = last_round(full)
    n_models = sum(len(round_variants(full, r)) for r in range(1, n_rounds + 1)) * demo["folds"]["k"]
    counts = job_counts(out)
    assert counts.get("train") == n_models and counts.get("oof") == n_models, counts
    assert counts.get("ensemble") == n_rounds, counts
    jobs = re.split(r"\n(?=\[.*\]\n)|\n(?=(?:local)?rule \w+:)", out)
    for rule in GPU_RULES:
        blocks = [b for b in jobs if b.lstrip().startswith(f"rule {rule}:")]
        assert blocks and all(re.search(r"resources:.*\bgpu=1\b", b) for b in blocks), (rule, blocks[:1])
    fetch = next(b for b in jobs if b.lstrip().startswith("rule fetch:"))
    assert not re.search(r"resources:.*\bgpu=", fetch)


@pytest.mark.dag
def test_cpu_profile_runs_model_jobs_single_threaded(repo_root, tmp_path):
    """`make demo` without a GPU: model jobs get one thread each (two at once on 2 cores), other rules keep theirs."""
    prof = _profile(repo_root, "cpu")
    assert prof["set-threads"] == {rule: 1 for rule in GPU_RULES}
    assert set(GPU_RULES) == {"train", "oof", "ensemble", "outliers"}
    assert "resources" not in prof  # no gpu limit: only the cores bound the number of jobs
    res = snakemake(
        repo_root, tmp_path, "-n", "--workflow-profile", "cpu", "--configfile", str(repo_root / "config" / "demo.yaml")
    )
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


@pytest.mark.dag
def test_threads_follow_the_workers_each_job_starts(repo_root, tmp_path):
    """Competition config: resize 8 processes, train DataLoader workers + 1, ensemble decode workers + 1; fetch and
    submit are local rules; outliers asks for a GPU only with its zoom re-prediction."""
    cfg = load(repo_root / "config" / "config.yaml")
    want = rule_threads(cfg)
    assert want["resize_cache"] == cfg["resize"]["workers"] == 8
    assert want["train"] == cfg["train"]["num_workers"] + 1 and want["ensemble"] == cfg["predict"]["workers"] + 1
    res = snakemake(
        repo_root, tmp_path, "-n", "--cores", "64", "--configfile", str(repo_root / "config" / "config.yaml")
    )
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    jobs = re.split(r"\n(?=\[.*\]\n)|\n(?=(?:local)?rule \w+:)", out)
    for rule, n in want.items():
        blocks = [b for b in jobs if re.match(rf"\s*(?:local)?rule {rule}:", b)]
        if rule != "score":  # no test truth outside synthetic data
            assert blocks and all(re.search(rf"threads: {n}\b", b) for b in blocks), (rule, n, blocks[:1])
    for rule in ("train", "oof", "ensemble", "outliers"):
        block = next(b for b in jobs if re.match(rf"\s*rule {rule}:", b))
        assert re.search(r"resources:.*\bgpu=1\b", block), block
    # fetch and submit (internet) are local rules (a dry run prints every job as `rule`, so read the Snakefile)
    snakefile = (repo_root / "Snakefile").read_text()
    assert "workflow.localrules(*LOCAL_RULES)" in snakefile and "localrules:" not in snakefile  # one list
    assert LOCAL_RULES == ("fetch", "submit")
    off = tmp_path / "off.yaml"
    off.write_text(
        yaml.safe_dump(
            {**yaml.safe_load((repo_root / "config" / "config.yaml").read_text()), "outliers": {"repredict": "none"}}
        )
    )
    res = snakemake(repo_root, tmp_path, "-n", "--configfile", str(off))
    block = next(
        b
        for b in re.split(r"\n(?=\[.*\]\n)|\n(?=(?:local)?rule \w+:)", res.stdout + res.stderr)
        if re.match(r"\s*rule outliers:", b)
    )
    assert not re.search(r"\bgpu=1\b", block), block
