"""No undeclared reads: the tiny DAG (every rule group) without a shared filesystem gives the plain run's submission.

``--shared-fs-usage none --default-storage-provider fs --default-storage-prefix <tmp>`` (snakemake-storage-plugin-fs,
what the Kubernetes profile uses): every declared input is copied in from the storage before its job and every
declared output sent back after it, and the local copies are removed once no job needs them. A rule that read a
file it does not declare (a directory param, a glob of results/) would find nothing there and fail; one that wrote
a file it does not declare would leave it in the working directory, which this test checks is empty of data and
results but for the two documented job-local trees (training's resume state and its TensorBoard curves).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.cluster.tiny_dag import CONFIG, NAME, submission_rows
from tests.helpers import ROOT, SNAKEMAKE

pytestmark = [pytest.mark.slow, pytest.mark.dag, pytest.mark.cluster]

STORAGE_FLAGS = ("--shared-fs-usage", "none", "--default-storage-provider", "fs", "--default-storage-prefix")
JOB_LOCAL = {"state", "tensorboard"}  # train.smk: {rdir}/state/ and tensorboard/, never read by another rule


def _run(work: Path, *extra: str) -> subprocess.CompletedProcess:
    (work / "c.yaml").write_text(yaml.safe_dump(CONFIG))
    cmd = [
        "timeout",
        "-k",
        "30",
        "900",
        SNAKEMAKE,
        "--cores",
        "2",
        "--configfile",
        str(work / "c.yaml"),
        "-s",
        str(ROOT / "Snakefile"),
        "-d",
        str(work),
        *extra,
    ]
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    return subprocess.run(cmd, check=False, capture_output=True, text=True, env={**env, "CARVANA_SEG_FAKE_GPUS": "0"})


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path, Path]:
    if shutil.which("rsync") is None:
        pytest.skip("snakemake-storage-plugin-fs copies with rsync, which is not installed (apt-get install rsync)")
    pytest.importorskip("snakemake_storage_plugin_fs")
    plain, isolated, storage = (tmp_path_factory.mktemp(n) for n in ("plain", "isolated", "storage"))
    res = _run(plain)
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    res = _run(isolated, *STORAGE_FLAGS, str(storage))
    assert res.returncode == 0, (res.stdout + res.stderr)[-6000:]
    return plain, isolated, storage


def test_the_run_without_a_shared_filesystem_gives_the_plain_runs_submission(runs):
    plain, _, storage = runs
    for name in ("submission.csv.gz", "submission_round1.csv.gz"):
        a, b = plain / "results" / NAME / name, storage / "results" / NAME / name
        assert submission_rows(a) == submission_rows(b), name
    assert (storage / "results" / NAME / "report" / "stage_times.csv").read_text().count("\n") > 5


def test_nothing_but_job_local_state_is_left_in_the_working_directory(runs):
    _, isolated, _ = runs
    assert not (isolated / "data").exists(), sorted(p.name for p in (isolated / "data").iterdir())
    results = isolated / "results"
    left = [p.relative_to(results) for p in results.rglob("*") if p.is_file()] if results.exists() else []
    assert left, "no job-local training state at all: did training run?"
    stray = [str(p) for p in left if not JOB_LOCAL & set(p.parts)]  # {rdir}/state/..., tensorboard/...
    assert not stray, stray
