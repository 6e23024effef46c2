"""pipeline.failed_logs: the Snakefile's onerror puts each failed job's one-line error on the console."""

from __future__ import annotations

import subprocess

import pytest
import yaml

from carvana_seg.pipeline.failed_logs import failed_job_errors
from tests.helpers import ROOT, SNAKEMAKE

SNAKEMAKE_LOG = """\
Error in rule fetch:
    jobid: 6
    log: results/x/logs/fetch.log (check log file(s) for error details)
Error in rule train:
    log: results/x/logs/train/a.log, results/x/logs/train/b.log (check log file(s) for error details)
Error in rule fetch:
    log: results/x/logs/fetch.log (check log file(s) for error details)
Error in rule oof:
    log: results/x/logs/missing.log (check log file(s) for error details)
"""


def test_each_failed_jobs_last_error_line_once_in_order(tmp_path):
    logs = tmp_path / "results" / "x" / "logs"
    (logs / "train").mkdir(parents=True)
    (logs / "fetch.log").write_text("INFO fetching\nerror: first\nmore\nerror: Kaggle credentials not found\n")
    (logs / "train" / "a.log").write_text("epoch 1/4\nTraceback (most recent call last):\n")  # no error line
    (logs / "train" / "b.log").write_text("error: cannot write best.pt: No space left on device\n")
    (tmp_path / "snakemake.log").write_text(SNAKEMAKE_LOG)
    assert failed_job_errors(tmp_path / "snakemake.log", tmp_path) == [
        "results/x/logs/fetch.log: error: Kaggle credentials not found",
        "results/x/logs/train/b.log: error: cannot write best.pt: No space left on device",
    ]
    assert failed_job_errors([str(tmp_path / "snakemake.log")], tmp_path) == failed_job_errors(
        tmp_path / "snakemake.log", tmp_path
    )  # onerror's `log` is a list of Snakemake's log files
    assert failed_job_errors(tmp_path / "absent.log", tmp_path) == []


@pytest.mark.dag
def test_a_run_without_kaggle_credentials_says_so_on_the_console(tmp_path):
    """The competition's data source with no credentials anywhere: the fetch job fails, and the console (not only
    its log) carries the one line that says what to do."""
    variant = {"name": "v", "encoder": "resnet18", "width": 32, "height": 32, "batch_size": 8, "epochs": 1, "lr": 1e-3}
    config = {"name": "nocred", "data": {"source": "kaggle"}, "variants": [variant]}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    home = tmp_path / "home"
    home.mkdir()
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "KAGGLE_CONFIG_DIR": str(home / ".kaggle")}
    res = subprocess.run(
        [SNAKEMAKE, "results/nocred/data_validation.json", "--cores", "1", "-s", str(ROOT / "Snakefile")]
        + ["-d", str(tmp_path), "--configfile", str(tmp_path / "c.yaml")],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    out = res.stdout + res.stderr
    assert res.returncode != 0
    assert "results/nocred/logs/fetch.log: error: Kaggle credentials not found" in out, out[-3000:]
    assert not (tmp_path / "data" / "nocred" / "raw").exists()  # nothing half-fetched left looking complete
