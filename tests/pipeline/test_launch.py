"""The documented launches run real jobs (not dry runs): a tiny DAG (fetch, validate, folds, resize) through
``.venv/bin/snakemake`` from a shell whose PATH lacks the environment, through an activated environment, and with
the CPU workflow profile named as the README names it. Every job runs ``python -m carvana_seg``: it must be the
package of the environment Snakemake runs from (carvana_seg.pipeline.launch)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from carvana_seg.pipeline import launch
from tests.helpers import ROOT

BIN = Path(sys.executable).parent
TINY = {
    "name": "launch",
    "data": {
        "source": "synthetic",
        "synthetic": {"n_train_cars": 3, "n_test_cars": 1, "n_outlier_cars": 0, "width": 96, "height": 64},
    },
    "folds": {"k": 3},
    "resize": {"workers": 1},
    "variants": [{"name": "v", "width": 64, "height": 64}],
}
TARGETS = ["results/launch/folds.csv", "data/launch/cache/64x64/images.npy"]
BARE_PATH = os.pathsep.join(p for p in ("/usr/local/bin", "/usr/bin", "/bin") if Path(p).is_dir())


def _run(cmd: list[str], workdir: Path, env: dict) -> subprocess.CompletedProcess:
    (workdir / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    args = [*cmd, "--cores", "all", "--configfile", "tiny.yaml", "-s", str(ROOT / "Snakefile"), *TARGETS]
    return subprocess.run(args, cwd=workdir, env=env, capture_output=True, text=True, timeout=300)


def _clean_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "CONDA_PREFIX")}
    env.update(extra)
    return env


def _check(res: subprocess.CompletedProcess, workdir: Path) -> None:
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    assert "No module named carvana_seg" not in out
    for target in TARGETS:
        assert (workdir / target).stat().st_size > 0, target


@pytest.mark.dag
@pytest.mark.slow
def test_venv_snakemake_from_a_shell_without_the_venv_on_path(tmp_path):
    env = _clean_env(PATH=BARE_PATH)
    assert subprocess.run(["sh", "-c", "command -v snakemake"], env=env, capture_output=True).returncode != 0
    _check(_run([str(BIN / "snakemake"), "--resources", "gpu=1"], tmp_path, env), tmp_path)


@pytest.mark.dag
@pytest.mark.slow
def test_snakemake_in_an_activated_environment_with_the_cpu_profile_by_name(tmp_path):
    env = _clean_env(PATH=os.pathsep.join([str(BIN), BARE_PATH]), VIRTUAL_ENV=str(BIN.parent))
    res = _run(["snakemake", "--workflow-profile", "cpu"], tmp_path, env)
    _check(res, tmp_path)
    assert "profiles/cpu" in res.stdout + res.stderr  # Snakemake names the workflow profile it uses


def test_jobs_get_this_interpreter_first_on_path(tmp_path):
    env = {"PATH": os.pathsep.join(["/usr/bin", str(BIN), "/bin"])}
    launch.prepare_job_environment(tmp_path, env)
    assert env["PATH"].split(os.pathsep) == [str(BIN), "/usr/bin", "/bin"]
    assert env["CARVANA_SEG_SRC"] == str(tmp_path.resolve())


def test_conda_environment_installs_the_package_itself(tmp_path):
    """--software-deployment-method conda: conda's channels are unreachable here, so run the post-deploy script
    Snakemake runs after creating the environment, with a stand-in ``python`` that records what it is asked."""
    script = ROOT / "environment.post-deploy.sh"
    assert os.access(script, os.X_OK)
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "python").write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/args\n')
    (fake / "python").chmod(0o755)
    env = {"PATH": os.pathsep.join([str(fake), BARE_PATH]), "CARVANA_SEG_SRC": str(ROOT)}
    res = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "args").read_text().split() == [
        "-m",
        "pip",
        "install",
        "--no-deps",
        "--no-build-isolation",
        "-e",
        str(ROOT),
    ]
    unset = subprocess.run(["bash", str(script)], env={"PATH": env["PATH"]}, capture_output=True, text=True)
    assert unset.returncode != 0 and "CARVANA_SEG_SRC" in unset.stderr
    rules = "".join(p.read_text() for p in (ROOT / "workflow" / "rules").glob("*.smk"))
    assert "conda:\n        ENV" in rules and (ROOT / "environment.yml").is_file()
