"""The DAG through a real Slurm (tests/cluster/conftest.py) with the shipped profile, ``--workflow-profile slurm``.

One tiny synthetic run touches every rule group (data, train, predict, outliers with zoom on the fake GPU,
pseudo-labelling round 2, report) and ends in a validated, scored submission. While it runs, the first training
job is cancelled with ``scancel`` once it has saved an epoch, and the ensemble job's stage process is SIGKILLed
(a node's OOM killer): the profile's ``retries: 1`` resubmits both, training resumes from its saved epoch, and a
rerun then finds nothing to do. Every job is read back with ``scontrol show job`` (MinJobAge keeps finished jobs):
one Slurm job per Snakemake job, with the cpus (``pipeline.resources``), memory, time limit and GPU the profile
asked for. The run is under ``timeout``: the plugin's status queries must never hang a test.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml

from carvana_seg.pipeline import config as cfgmod
from carvana_seg.pipeline import rounds
from carvana_seg.pipeline.resources import rule_threads
from carvana_seg.pipeline.stages import GPU_RULES, LOCAL_RULES
from tests.cluster.slurm_cluster import PARTITION
from tests.cluster.tiny_dag import CONFIG, NAME
from tests.helpers import ROOT, SNAKEMAKE, job_counts

pytestmark = [pytest.mark.slow, pytest.mark.dag, pytest.mark.cluster]

# the whole run, both interruptions and their retries included; CI's budget for this file
RUN_TIMEOUT_S = 900
# The plugin's first squeue check after a submission, and again after each job that ends (it adds 10 s per check
# while none ends). The profile's 10 s suits a real cluster; the tiny jobs here take 5-15 s each, so at 10 s most
# were seen done only at the second check, 30 s after their submission (the log's finish times fell on 10 s
# steps), ~20 times in a row. 2 s sees them at 2 or 14 s. MinJobAge (600 s) stays far above 3x this.
FIRST_STATUS_CHECK_S = 2
TIME_RE = re.compile(r"^(?:(\d+)-)?(\d+):(\d+):(\d+)$")


def _env(work: Path) -> dict[str, str]:
    """The submitting shell's environment (sbatch --export=ALL passes it on) with a fake ``nvidia-smi`` that lists
    one GPU, the node's fake one: a GPU job then sees Slurm's CUDA_VISIBLE_DEVICES=0 and claims nothing itself."""
    bin_dir = work / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "nvidia-smi").write_text("#!/bin/sh\necho 'GPU 0: Fake GPU (UUID: GPU-fake-0)'\n")
    (bin_dir / "nvidia-smi").chmod(0o755)
    # the fake GPU is /dev/null: the jobs take Slurm's GPU path (gres, CUDA_VISIBLE_DEVICES) and run torch on the
    # CPU on purpose, which a real GPU allocation without a usable GPU would refuse (models.runtime.pick_device)
    path = f"{bin_dir}{os.pathsep}{os.environ['PATH']}"
    # the pending watch polls squeue every 5 s instead of 20 (pipeline.slurm_watch): the stuck run ends sooner
    return {**os.environ, "PATH": path, "CARVANA_SEG_REQUIRE_GPU": "0", "CARVANA_SEG_SLURM_WATCH_S": "5"}


def _snakemake(work: Path, *args: str, timeout: int = RUN_TIMEOUT_S) -> list[str]:
    """The command the README gives, under ``timeout`` (SIGTERM, then SIGKILL 30 s later), with squeue polled from
    2 s after each submission (FIRST_STATUS_CHECK_S) instead of the profile's 10."""
    return [
        "timeout",
        "-k",
        "30",
        str(timeout),
        SNAKEMAKE,
        "--workflow-profile",
        "slurm",
        "--slurm-init-seconds-before-status-checks",
        str(FIRST_STATUS_CHECK_S),
        "--configfile",
        str(work / "c.yaml"),
        "-s",
        str(ROOT / "Snakefile"),
        "-d",
        str(work),
        *args,
    ]


def jobs(slurm) -> list[dict[str, str]]:
    """Every job slurmctld still knows (``scontrol show job -o``), as {field: value}."""
    out = slurm.run("scontrol", "show", "job", "-o").stdout
    rows = []
    for line in out.splitlines():
        if line.startswith("JobId="):
            rows.append(dict(re.findall(r"(\w[\w/:]*)=(\S*)", line)))
    return rows


def _rule(job: dict[str, str]) -> str:
    m = re.match(r"rule_(\w+?)(?:_wildcards_|$)", job.get("Comment", ""))
    return m[1] if m else ""


def _minutes(limit: str) -> int:
    d, h, m, s = TIME_RE.match(limit).groups()
    return int(d or 0) * 1440 + int(h) * 60 + int(m) + (int(s) > 0)


class Interrupter(threading.Thread):
    """Cancels the first training job once it has saved an epoch, then SIGKILLs the ensemble job's stage process."""

    def __init__(self, slurm, work: Path) -> None:
        super().__init__(daemon=True)
        self.slurm, self.work, self.done = slurm, work, threading.Event()
        self.cancelled: str | None = None
        self.killed: str | None = None
        self.notes: list[str] = []

    def _running(self, rule: str) -> str | None:
        for j in jobs(self.slurm):
            if _rule(j) == rule and j.get("JobState") == "RUNNING":
                return j["JobId"]
        return None

    def run(self) -> None:
        state = self.work / "results" / NAME / "state" / "v" / "fold0" / "last.pt"
        while not self.done.is_set() and (self.cancelled is None or self.killed is None):
            if self.cancelled is None:
                job = self._running("train")
                if job and state.is_file():
                    self.slurm.run("scancel", job)
                    self.cancelled = job
            elif self.killed is None:
                job = self._running("ensemble")
                if job:
                    self._kill_stage(job)
            time.sleep(0.2)

    def _kill_stage(self, job: str) -> None:
        pids = self.slurm.run("scontrol", "listpids", job).stdout.split()
        for pid in (p for p in pids if p.isdigit()):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"carvana_seg" in cmdline and b"ensemble" in cmdline:
                os.kill(int(pid), signal.SIGKILL)
                self.killed = job
                self.notes.append(f"SIGKILLed pid {pid} of Slurm job {job}")
                return


@pytest.fixture(scope="module")
def cluster_run(slurm, tmp_path_factory):
    """The interrupted run (retried by the profile) and a rerun: (workdir, run output, rerun output, interrupter)."""
    work = tmp_path_factory.mktemp("slurm-run")
    (work / "c.yaml").write_text(yaml.safe_dump(CONFIG))
    interrupter = Interrupter(slurm, work)
    interrupter.start()
    start = time.monotonic()
    res = subprocess.run(_snakemake(work), check=False, capture_output=True, text=True, cwd=work, env=_env(work))
    interrupter.done.set()
    interrupter.join(timeout=10)
    out = res.stdout + res.stderr
    assert res.returncode == 0, (
        f"rc={res.returncode} after {time.monotonic() - start:.0f} s\n{out[-6000:]}\n{slurm.logs()}"
    )
    rerun = subprocess.run(
        _snakemake(work, timeout=300), check=False, capture_output=True, text=True, cwd=work, env=_env(work)
    )
    assert rerun.returncode == 0, (rerun.stdout + rerun.stderr)[-3000:]
    return work, out, rerun.stdout + rerun.stderr, interrupter


def test_the_dag_ends_in_a_validated_scored_submission(cluster_run):
    work, out, _, _ = cluster_run
    results = work / "results" / NAME
    log = (results / "logs" / "submission.log").read_text()
    assert "(validated)" in log, log
    score = json.loads((results / "test_score.json").read_text())
    assert 0.0 < score["mean_dice"] <= 1.0, score
    assert (results / "pseudo_gain.json").is_file() and (results / "report" / "stage_times.csv").is_file()
    counts = job_counts(out)
    assert {"train", "oof", "ensemble", "outliers", "pseudo_labels", "pseudo_gain", "report_figures"} <= set(counts)


def test_each_job_ran_as_its_own_slurm_job_with_the_profiles_resources(slurm, cluster_run):
    work, out, _, _ = cluster_run
    profile = yaml.safe_load((ROOT / "profiles" / "slurm" / "profile.yaml").read_text())
    config = cfgmod.resolve(CONFIG)
    threads = rule_threads(config)
    done = [j for j in jobs(slurm) if j.get("JobState") == "COMPLETED" and str(work) == j.get("WorkDir")]
    per_rule: dict[str, int] = {}
    for j in done:
        rule = _rule(j)
        assert rule and rule not in LOCAL_RULES, j.get("Comment")
        per_rule[rule] = per_rule.get(rule, 0) + 1
        want = {**profile["default-resources"], **profile["set-resources"].get(rule, {})}
        assert int(j["NumCPUs"]) == threads.get(rule, 1), (rule, j["NumCPUs"])
        assert j["MinMemoryNode"] == f"{want['mem_mb']}M", (rule, j["MinMemoryNode"])
        assert _minutes(j["TimeLimit"]) == want["runtime"], (rule, j["TimeLimit"])
        gres = j.get("TresPerJob", "")
        assert (gres == "gres:gpu:1") == (rule in GPU_RULES), (rule, gres)
        assert j["Partition"] == "ci"
    counts = job_counts(out)  # Snakemake's job stats: every job of a cluster rule is one completed Slurm job
    assert per_rule == {r: n for r, n in counts.items() if r not in LOCAL_RULES and r != "all"}, (per_rule, counts)


def test_gpu_jobs_saw_the_fake_gpu_that_slurm_assigned(cluster_run):
    work, *_ = cluster_run
    logs = work / "results" / NAME / "logs"
    for log in (logs / "train" / "v_fold0.log", logs / "oof" / "v_fold0.log", logs / "outliers.log"):
        text = log.read_text()
        assert "CUDA_VISIBLE_DEVICES='0' set by the environment or scheduler: one device, claiming nothing" in text, (
            f"{log}:\n{text[-2000:]}"
        )


def test_a_cancelled_and_a_killed_job_are_retried_and_a_rerun_finds_nothing_to_do(slurm, cluster_run):
    work, out, rerun, interrupter = cluster_run
    assert interrupter.cancelled and interrupter.killed, (interrupter.cancelled, interrupter.killed, out[-3000:])
    states = {j["JobId"]: j["JobState"] for j in jobs(slurm)}
    assert states[interrupter.cancelled] == "CANCELLED" and states[interrupter.killed] == "FAILED", states
    train_log = (work / "results" / NAME / "logs" / "train" / "v_fold0.log").read_text()
    assert "resuming from epoch" in train_log, train_log  # the retry continued from the saved epoch
    assert "Nothing to be done" in rerun, rerun[-2000:]


def test_the_cancelled_train_job_ended_with_the_model_of_an_unkilled_run(cluster_run, tmp_path):
    """The same train job (round one, fold 0), run again uninterrupted on the run's own folds and cache with the
    same threads, writes a best.pt equal tensor for tensor to the one the cancelled and resumed Slurm job wrote."""
    work, *_ = cluster_run
    config = cfgmod.resolve(CONFIG)
    res = work / "results" / NAME
    cmd = [str(Path(SNAKEMAKE).parent / "python"), "-m", "carvana_seg", "train"]
    cmd += ["--cfg", cfgmod.to_json(rounds.train_slice(config, "v", 1)), "--variant", "v", "--fold", "0"]
    cmd += ["--folds", str(res / "folds.csv"), "--cache", str(work / "data" / NAME / "cache" / "64x64")]
    cmd += ["--out-model", str(tmp_path / "best.pt"), "--out-metrics", str(tmp_path / "metrics.csv")]
    cmd += ["--state-dir", str(tmp_path / "state"), "--threads", str(rule_threads(config)["train"])]
    run = subprocess.run(cmd, check=False, capture_output=True, text=True, env=_env(work), timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    a = torch.load(res / "models" / "v" / "fold0" / "best.pt", weights_only=True)
    b = torch.load(tmp_path / "best.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] and a["val_dice"] == b["val_dice"]
    for k in b["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k


def test_a_job_no_node_can_run_stops_the_run_before_any_sbatch_with_one_line(slurm, tmp_path):
    """train.num_workers = the node's CPUs: the train rule asks for one CPU more than the only node has. sbatch
    would accept it and Slurm keep it PENDING (PartitionConfig) for ever; the preflight stops the run first."""
    config = {**CONFIG, "name": "toobig", "train": {**CONFIG["train"], "num_workers": slurm.cpus}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    start = time.monotonic()
    res = subprocess.run(
        _snakemake(tmp_path, timeout=300), check=False, capture_output=True, text=True, cwd=tmp_path, env=_env(tmp_path)
    )
    out = res.stdout + res.stderr
    assert res.returncode not in (0, 124, 137) and time.monotonic() - start < 300, (res.returncode, out[-3000:])
    want = f"rule train asks for {slurm.cpus + 1} CPUs, 32000 MB, 1 GPU, 720 min on the default partition (ci); "
    want += f"the largest node there has {slurm.cpus} CPUs, 65536 MB, 1 GPU, no time limit: no node can ever run it"
    assert want in out, out[-3000:]
    assert not [j for j in jobs(slurm) if j.get("WorkDir") == str(tmp_path)], "a job was submitted before the check"
    # `make plan PROFILE=slurm` runs the same check on the config alone
    plan = subprocess.run(
        [str(Path(SNAKEMAKE).parent / "python"), "-m", "carvana_seg", "plan", "--configfile", str(tmp_path / "c.yaml")]
        + ["--profile", str(ROOT / "profiles" / "slurm")],
        check=False,
        capture_output=True,
        text=True,
        env=_env(tmp_path),
    )
    assert plan.returncode == 2 and want in plan.stderr, (plan.returncode, plan.stdout[-2000:], plan.stderr[-2000:])
    fits = {**CONFIG, "name": "fits"}
    (tmp_path / "fits.yaml").write_text(yaml.safe_dump(fits))
    plan = subprocess.run(
        [
            str(Path(SNAKEMAKE).parent / "python"),
            "-m",
            "carvana_seg",
            "plan",
            "--configfile",
            str(tmp_path / "fits.yaml"),
        ]
        + ["--profile", str(ROOT / "profiles" / "slurm")],
        check=False,
        capture_output=True,
        text=True,
        env=_env(tmp_path),
    )
    assert plan.returncode == 0 and "fits a node of its partition" in plan.stdout, plan.stdout[-2000:] + plan.stderr


def test_a_job_stuck_pending_after_the_preflight_ends_the_run_within_minutes(slurm, tmp_path):
    """The partition goes down once the run's first job is queued: every later job stays PENDING (PartitionDown),
    which Slurm never clears by itself; the watch ends the run with one line naming the job and the reason."""
    config = {**CONFIG, "name": "stuck"}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))

    def down_after_first_job() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if [j for j in jobs(slurm) if j.get("WorkDir") == str(tmp_path)]:
                slurm.run("scontrol", "update", f"PartitionName={PARTITION}", "State=DOWN")
                return
            time.sleep(0.2)

    admin = threading.Thread(target=down_after_first_job, daemon=True)
    admin.start()
    start = time.monotonic()
    try:
        res = subprocess.run(
            _snakemake(tmp_path, timeout=300),
            check=False,
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=_env(tmp_path),
        )
    finally:
        admin.join(timeout=5)
        slurm.run("scontrol", "update", f"PartitionName={PARTITION}", "State=UP")
        for j in jobs(slurm):
            if j.get("WorkDir") == str(tmp_path) and j.get("JobState") in ("PENDING", "RUNNING"):
                slurm.run("scancel", j["JobId"])
    took, out = time.monotonic() - start, res.stdout + res.stderr
    assert res.returncode not in (0, 124, 137) and took < 300, (res.returncode, took, out[-3000:])
    stuck = re.search(r"Slurm job (\d+) \(rule (\w+): PartitionDown\) is pending for a reason that does not clear", out)
    assert stuck, out[-3000:]
    assert {j["JobId"]: j["JobState"] for j in jobs(slurm)}[stuck[1]] == "CANCELLED"  # the run cancelled it
