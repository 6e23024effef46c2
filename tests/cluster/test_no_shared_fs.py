"""No undeclared reads: the tiny DAG (every rule group) without a shared filesystem gives the plain run's submission.

``--shared-fs-usage none --default-storage-provider fs --default-storage-prefix <tmp>`` (snakemake-storage-plugin-fs,
what the Kubernetes profile uses): every declared input is copied in from the storage before its job and every
declared output sent back after it, and the local copies are removed once no job needs them. A rule that read a
file it does not declare (a directory param, a glob of results/) would find nothing there and fail; one that wrote
a file it does not declare would leave it in the working directory, which this test checks is empty of data and
results but for the two documented job-local trees (training's resume state and its TensorBoard curves).

That run is also preempted: once the store (the storage prefix, pipeline.state_location) holds the first train job's
second epoch, the job's process is SIGKILLed and the job-local state deleted, as if its node were gone. Snakemake's
retry (``--retries 1``) then resumes from the store, after the second epoch, to the unkilled plain run's model.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml

from tests.cluster.tiny_dag import CONFIG, NAME, submission_rows
from tests.helpers import ROOT, SNAKEMAKE

pytestmark = [pytest.mark.slow, pytest.mark.dag, pytest.mark.cluster]

STORAGE_FLAGS = ("--shared-fs-usage", "none", "--default-storage-provider", "fs", "--default-storage-prefix")
JOB_LOCAL = {"state", "tensorboard"}  # train.smk: {rdir}/state/ and tensorboard/, never read by another rule


def _start(work: Path, *extra: str) -> subprocess.Popen:
    """The tiny DAG in ``work`` (``--cores 2``, no GPU), started in the background: its output goes to files beside
    the working directory (pipes could fill while another run is waited for)."""
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
    with open(work.parent / f"{work.name}.out", "w") as out:  # the child keeps its own descriptor
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**env, "CARVANA_SEG_FAKE_GPUS": "0"})


def _finish(proc: subprocess.Popen, work: Path) -> tuple[int, str]:
    """Waits for a run of _start: (its exit status, its output)."""
    return proc.wait(), (work.parent / f"{work.name}.out").read_text()


class Preempter(threading.Thread):
    """SIGKILLs the round-one fold-0 train job of the run in ``work`` once the store holds its second epoch, and
    deletes its job-local state and TensorBoard run: the retried job finds them only in the store."""

    def __init__(self, work: Path, storage: Path) -> None:
        super().__init__(daemon=True)
        self.work, self.done, self.killed = work, threading.Event(), ""
        self.stored_log = storage / "results" / NAME / "state" / "v" / "fold0" / "train.log"

    def _train_pid(self) -> int | None:
        for proc in Path("/proc").iterdir():
            try:
                cmd = (proc / "cmdline").read_bytes().split(b"\0")
                if b"carvana_seg" in cmd and b"train" in cmd and Path(os.readlink(proc / "cwd")) == self.work:
                    return int(proc.name)
            except (OSError, ValueError):
                continue
        return None

    def run(self) -> None:
        while not self.done.is_set() and not self.killed:
            text = self.stored_log.read_text() if self.stored_log.is_file() else ""
            if "epoch 2/" in text and (pid := self._train_pid()):
                os.kill(pid, signal.SIGKILL)
                for local in ("state", "tensorboard"):
                    shutil.rmtree(self.work / "results" / NAME / local, ignore_errors=True)
                self.killed = f"pid {pid}, the store's log then:\n{text}"
            time.sleep(0.05)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path, Path]:
    if shutil.which("rsync") is None:
        pytest.skip("snakemake-storage-plugin-fs copies with rsync, which is not installed (apt-get install rsync)")
    pytest.importorskip("snakemake_storage_plugin_fs")
    plain, isolated, storage = (tmp_path_factory.mktemp(n) for n in ("plain", "isolated", "storage"))
    # The two runs are independent (their own working directories; the preempter finds its train job by its
    # working directory), so they run side by side: on 2 cores this overlaps one run's storage copies and
    # process starts with the other's computing.
    plain_run = _start(plain)
    preempter = Preempter(isolated, storage)
    preempter.start()
    isolated_run = _start(isolated, *STORAGE_FLAGS, str(storage), "--retries", "1")
    rc, out = _finish(isolated_run, isolated)
    preempter.done.set()
    preempter.join(timeout=10)
    plain_rc, plain_out = _finish(plain_run, plain)
    assert plain_rc == 0, plain_out[-4000:]
    assert rc == 0, out[-6000:]
    assert preempter.killed, "the train job was never preempted"
    return plain, isolated, storage


def test_the_run_without_a_shared_filesystem_gives_the_plain_runs_submission(runs):
    plain, _, storage = runs
    for name in ("submission.csv.gz", "submission_round1.csv.gz"):
        a, b = plain / "results" / NAME / name, storage / "results" / NAME / name
        assert submission_rows(a) == submission_rows(b), name
    assert (storage / "results" / NAME / "report" / "stage_times.csv").read_text().count("\n") > 5


def test_the_preempted_train_job_resumed_on_an_empty_node_to_the_unkilled_runs_model(runs):
    plain, _, storage = runs
    log = (storage / "results" / NAME / "logs" / "train" / "v_fold0.log").read_text()
    _, pulled, retry = log.partition("resume file(s) from the state store")  # the retry's first line
    resumed = re.search(r"resuming from epoch (\d+)", retry)
    assert pulled and resumed and int(resumed[1]) >= 3, log[-3000:]  # after the second epoch, not from zero
    model = Path("results") / NAME / "models" / "v" / "fold0" / "best.pt"
    a, b = (torch.load(d / model, weights_only=True) for d in (storage, plain))
    assert a["epoch"] == b["epoch"] and a["val_dice"] == b["val_dice"]
    for k in b["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k


def test_nothing_but_job_local_state_is_left_in_the_working_directory(runs):
    _, isolated, _ = runs
    assert not (isolated / "data").exists(), sorted(p.name for p in (isolated / "data").iterdir())
    results = isolated / "results"
    left = [p.relative_to(results) for p in results.rglob("*") if p.is_file()] if results.exists() else []
    assert left, "no job-local training state at all: did training run?"
    stray = [str(p) for p in left if not JOB_LOCAL & set(p.parts)]  # {rdir}/state/..., tensorboard/...
    assert not stray, stray


def test_the_ensembles_shards_went_through_the_state_store(runs):
    """Without a shared filesystem the ensemble's resume directory is job-local too: its shards also go to the store
    as they finish (inference/shard_store.py), and that copy is removed once the output is complete."""
    _, _, storage = runs
    res = storage / "results" / NAME
    log = (res / "logs" / "ensemble.log").read_text()
    assert f"removed the finished shards' copy {storage}/results/{NAME}/test_probs.resume" in log, log[-2000:]
    assert not (res / "test_probs.resume").exists()
