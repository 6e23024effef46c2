"""Rerun semantics of the DAG, by dry-runs over fabricated outputs: a changed setting or a change to what library code
computes schedules exactly the stages that read it and everything downstream; comments, docstrings and a moved
project schedule nothing. Also the static import scan behind the ``code`` fingerprints."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from carvana_seg.pipeline import codedeps

SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
AFTER_THRESHOLD = {"threshold", "outliers", "submission", "score", "report_figures"}
AFTER_TRAINING = {"oof", "oof_table", "threshold", "ensemble"} | AFTER_THRESHOLD
CONFIG = {
    "name": "rr",
    "data": {"source": "synthetic"},
    "folds": {"k": 2},
    "pseudo_label": {"enabled": False},
    "variants": [
        {"name": "va", "width": 64, "height": 64, "lr": 1.0e-4},
        {"name": "vb", "width": 96, "height": 64, "lr": 1.0e-4},
    ],
}


class Dag:
    """A copy of the project (its src/ first on PYTHONPATH, so its files can be touched) and a workdir whose
    every output exists and is recorded as up to date."""

    def __init__(self, root: Path, repo_root: Path) -> None:
        self.repo, self.work = root / "repo", root / "work"
        self.repo.mkdir()
        for f in repo_root.iterdir():
            if f.is_file():
                shutil.copy(f, self.repo / f.name)
        for d in ("workflow", "config", "src"):
            shutil.copytree(repo_root / d, self.repo / d, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        self.work.mkdir()
        self.write_config(CONFIG)
        summary = self.run("--summary")
        outputs = [line.split("\t")[0] for line in summary.splitlines()[1:] if "\t" in line]
        assert any(o.endswith("models/va/fold0/best.pt") for o in outputs), summary[-2000:]
        # the benchmark TSVs too: report_figures declares them as inputs (a dry-run prints each job's)
        benchmarks = re.findall(r"^\s+benchmark: (\S+)$", self.run("-n", "--forceall"), re.M)
        for o in outputs + benchmarks:
            (self.work / o).parent.mkdir(parents=True, exist_ok=True)
            if Path(o).suffix:
                (self.work / o).touch()
            else:  # a directory output (data/<name>/raw, ground_truth, test_probs, outliers)
                (self.work / o).mkdir(exist_ok=True)
        self.run("--touch", "--forceall", "--cores", "1")

    def write_config(self, cfg: dict) -> None:
        (self.work / "c.yaml").write_text(yaml.safe_dump(cfg))

    def run(self, *args: str) -> str:
        env = dict(
            os.environ,
            PYTHONPATH=str(self.repo / "src"),
            PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        )
        res = subprocess.run(
            [
                SNAKEMAKE,
                *args,
                "--configfile",
                str(self.work / "c.yaml"),
                "-s",
                str(self.repo / "Snakefile"),
                "-d",
                str(self.work),
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=240,
        )
        assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
        return res.stdout + res.stderr

    def planned(self) -> list[tuple[str, str]]:
        """(rule, wildcards) of every job a dry-run schedules, ``all`` left out."""
        out = self.run("-n")
        jobs = re.findall(r"^(?:local)?rule (\w+):\n((?:    .*\n)*)", out, re.M)
        return [(rule, (re.search(r"wildcards: (.*)", body) or [None, ""])[1]) for rule, body in jobs if rule != "all"]


@pytest.fixture(scope="module")
def dag(repo_root, tmp_path_factory) -> Dag:
    return Dag(tmp_path_factory.mktemp("rerun"), repo_root)


@pytest.mark.dag
def test_up_to_date_after_touch(dag):
    assert dag.planned() == []


@pytest.mark.dag
def test_threshold_setting_reruns_only_threshold_and_after(dag):
    dag.write_config({**CONFIG, "threshold": {"value": 0.42}})
    try:
        assert {rule for rule, _ in dag.planned()} == AFTER_THRESHOLD
    finally:
        dag.write_config(CONFIG)


@pytest.mark.dag
def test_outlier_settings_rerun_only_outliers_and_after_never_the_ensemble(dag):
    dag.write_config({**CONFIG, "outliers": {"z_max": 5.5, "action": "flag"}})
    try:
        assert {rule for rule, _ in dag.planned()} == AFTER_THRESHOLD - {"threshold"}
    finally:
        dag.write_config(CONFIG)


@pytest.mark.dag
def test_one_variants_learning_rate_retrains_only_that_variant(dag):
    variants = [dict(CONFIG["variants"][0], lr=3.0e-4), CONFIG["variants"][1]]
    dag.write_config({**CONFIG, "variants": variants})
    try:
        jobs = dag.planned()
    finally:
        dag.write_config(CONFIG)
    assert {rule for rule, _ in jobs} == {"train"} | AFTER_TRAINING
    for rule in ("train", "oof"):
        wildcards = [w for r, w in jobs if r == rule]
        assert len(wildcards) == 2 and all("variant=va" in w for w in wildcards), (rule, wildcards)


def _planned_with(dag: Dag, edits: dict[str, bytes]) -> list[tuple[str, str]]:
    """The dry-run plan while each ``src/carvana_seg/<rel>`` of the copy has ``edits[rel]`` appended (and a newer
    mtime), restored afterwards."""
    saved = {}
    later = time.time() + 5
    for rel, extra in edits.items():
        path = dag.repo / "src" / "carvana_seg" / rel
        saved[path] = (path.read_bytes(), path.stat())
        path.write_bytes(saved[path][0] + extra)
        os.utime(path, (later, later))
    try:
        return dag.planned()
    finally:
        for path, (text, before) in saved.items():
            path.write_bytes(text)
            os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def _modules(dag: Dag) -> list[str]:
    return sorted(
        p.relative_to(dag.repo / "src" / "carvana_seg").as_posix()
        for p in (dag.repo / "src" / "carvana_seg").rglob("*.py")
    )


@pytest.mark.dag
def test_comments_docstrings_and_formatting_in_every_module_plan_nothing(dag):
    """Every module of the package at once: a comment, blank lines and a docstring'd no-op function's docstring
    edit change no fingerprint (tests/pipeline/test_codedeps.py checks each module's fingerprint on its own)."""
    edits = {rel: b"\n\n# a comment added by a test\n" for rel in _modules(dag)}
    assert len(edits) > 40
    assert _planned_with(dag, edits) == []


@pytest.mark.dag
def test_edited_threshold_code_reruns_threshold_and_after_not_training(dag):
    jobs = _planned_with(dag, {"inference/threshold.py": b"\nEDITED = 1\n"})
    assert {rule for rule, _ in jobs} == AFTER_THRESHOLD


@pytest.mark.dag
def test_edited_loss_code_retrains_every_model_but_keeps_the_data_stages(dag):
    jobs = _planned_with(dag, {"training/losses.py": b"\nEDITED = 1\n"})
    assert {rule for rule, _ in jobs} == {"train"} | AFTER_TRAINING
    assert sum(rule == "train" for rule, _ in jobs) == 4


@pytest.mark.dag
def test_a_finished_run_copied_elsewhere_plans_nothing(dag, tmp_path):
    """Moving the project (a bigger disk, a cluster node mounting it elsewhere) keeps every finished job: no
    absolute path is part of what Snakemake compares (mtimes kept, as ``cp -a`` / ``rsync -a`` do)."""
    moved = Dag.__new__(Dag)
    moved.repo, moved.work = tmp_path / "elsewhere" / "repo", tmp_path / "elsewhere" / "work"
    shutil.copytree(dag.repo, moved.repo, symlinks=True)
    shutil.copytree(dag.work, moved.work, symlinks=True)
    (moved.work / "c.yaml").write_text((dag.work / "c.yaml").read_text())
    assert moved.planned() == []


def test_import_scan_follows_the_stage_modules(tmp_path):
    threshold = set(codedeps.stage_sources("threshold"))
    assert {
        "inference/threshold.py",
        "pipeline/config.py",
        "core/metrics.py",
        "core/masks.py",
        "__init__.py",
    } <= threshold
    assert not any(n.startswith("training/") for n in threshold) and "pipeline/cli.py" not in threshold
    train = set(codedeps.stage_sources("train"))
    assert {"training/train.py", "training/losses.py", "models/model.py"} <= train
    assert "inference/threshold.py" not in train and "pipeline/codedeps.py" not in train
    assert "core/masks.py" in codedeps.stage_sources("submission")  # the binarisation convention
    assert "inference/threshold.py" not in codedeps.stage_sources("submission")
    with pytest.raises(KeyError, match="unknown stage"):
        codedeps.stage_sources("nope")


def test_import_scan_handles_relative_and_function_level_imports(tmp_path):
    pkg = tmp_path / "carvana_seg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .sub import b\n\ndef f():\n    from carvana_seg import c\n")
    (pkg / "sub" / "b.py").write_text("from ..d import X\nimport numpy\n")
    (pkg / "c.py").write_text("")
    (pkg / "d.py").write_text("X = 1\n")
    (pkg / "unused.py").write_text("")
    closure = codedeps.module_closure("carvana_seg.a", pkg)
    assert closure == (
        "carvana_seg",
        "carvana_seg.a",
        "carvana_seg.c",
        "carvana_seg.d",
        "carvana_seg.sub",
        "carvana_seg.sub.b",
    )
