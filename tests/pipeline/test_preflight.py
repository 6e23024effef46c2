"""The Slurm preflight (pipeline.preflight) and the pending watch (pipeline.slurm_watch) on sinfo/squeue text; the
real Slurm runs them in tests/cluster/test_slurm.py."""

from __future__ import annotations

import math
import threading

import pytest
import yaml

from carvana_seg.pipeline import preflight, slurm_watch
from carvana_seg.pipeline.errors import ConfigError
from carvana_seg.pipeline.resources import threads
from tests.helpers import ROOT, tiny_config

SINFO = """cpu*|64|256000|(null)|1-00:00:00|up
cpu*|32|128000|(null)|1-00:00:00|up
gpu|32|512000|gpu:a100:4(S:0-1)|2-00:00:00|up
gpu|16|512000|gpu:a100:2|2-00:00:00|up
old|8|16000|(null)|infinite|down
"""


@pytest.mark.parametrize(
    ("limit", "want"),
    [("infinite", math.inf), ("30", 30), ("30:30", 30.5), ("2:00:00", 120), ("1-12", 2160), ("1-00:30:00", 1470)],
)
def test_slurm_time_limits_in_minutes(limit, want):
    assert preflight.minutes(limit) == want


def test_sinfo_rows_become_nodes():
    nodes = preflight.parse_sinfo(SINFO)
    assert [(n.partition, n.default, n.cpus, n.gpus, n.up) for n in nodes] == [
        ("cpu", True, 64, 0, True),
        ("cpu", True, 32, 0, True),
        ("gpu", False, 32, 4, True),
        ("gpu", False, 16, 2, True),
        ("old", False, 8, 0, False),
    ]
    assert nodes[2].max_minutes == 2880 and math.isinf(nodes[4].max_minutes)


def _ask(**kw) -> preflight.Ask:
    base = {"rule": "train", "cpus": 4, "mem_mb": 32000, "gpus": 1, "minutes": 720, "partition": "gpu"}
    return preflight.Ask(**{**base, **kw})


def test_jobs_that_fit_some_node_pass():
    nodes = preflight.parse_sinfo(SINFO)
    preflight.check([_ask(), _ask(gpus=4, cpus=32), _ask(rule="folds", gpus=0, partition=None, cpus=64)], nodes)


@pytest.mark.parametrize(
    ("ask", "message"),
    [
        (
            _ask(cpus=33),
            "rule train asks for 33 CPUs, 32000 MB, 1 GPU, 720 min on gpu; the largest node there has 32 CPUs, "
            "512000 MB, 4 GPU, time limit 2880 min: no node can ever run it",
        ),
        (_ask(gpus=5), "rule train asks for 4 CPUs, 32000 MB, 5 GPU, 720 min on gpu"),
        (_ask(minutes=3000), "3000 min on gpu"),
        (_ask(mem_mb=600000), "600000 MB"),
        (_ask(rule="oof", gpus=1, partition=None), "rule oof asks for 4 CPUs, 32000 MB, 1 GPU, 720 min on the default"),
        (
            _ask(partition="nope"),
            "rule train: partition nope does not exist on this cluster (partitions: cpu, gpu, old)",
        ),
        (_ask(partition="old", gpus=0), "rule train: partition old is down on every node"),
    ],
)
def test_a_job_no_node_can_run_is_one_error_naming_the_rule_and_the_largest_node(ask, message):
    with pytest.raises(ConfigError) as err:
        preflight.check([_ask(rule="ok", gpus=0, cpus=1, partition="cpu"), ask], preflight.parse_sinfo(SINFO))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_the_shipped_slurm_profile_asks_what_the_config_and_profile_say():
    profile = yaml.safe_load((ROOT / "profiles" / "slurm" / "profile.yaml").read_text())
    config = tiny_config(num_workers=3)
    asks = {a.rule: a for a in preflight.asks_from_profile(config, profile, ["train", "folds"])}
    assert asks["train"] == preflight.Ask("train", threads(config, "train"), 32000, 1, 720, None)
    assert asks["train"].cpus == 4  # num_workers + 1
    assert asks["folds"] == preflight.Ask("folds", 1, 8000, 0, 60, None)


SQUEUE = """101|PENDING|PartitionDown|/work/run|rule_train_wildcards_results/x_v_0
102|PENDING|Resources|/work/run|rule_oof_wildcards_results/x_v_0
103|PENDING|PartitionConfig|/elsewhere|rule_train_wildcards_y
104|RUNNING|None|/work/run|rule_folds
"""


def test_only_this_runs_jobs_pending_for_a_reason_that_cannot_clear_are_stuck():
    assert slurm_watch.stuck_jobs(SQUEUE, "/work/run") == {"101": "rule train: PartitionDown"}


def test_the_watch_ends_the_run_on_a_job_stuck_at_two_polls_in_a_row_only():
    answers = iter([SQUEUE, SQUEUE.replace("PartitionDown", "Priority"), SQUEUE, SQUEUE] + [""] * 100)
    stopped, lines = threading.Event(), []
    watch = slurm_watch.Watch(
        "/work/run", interval=0.01, query=lambda: next(answers), stop=stopped.set, report=lines.append
    )
    watch.start()
    assert stopped.wait(5)
    watch.join(5)
    assert len(lines) == 1 and lines[0].startswith("Slurm job 101 (rule train: PartitionDown) is pending for a reason")


def test_the_watch_interval_comes_from_the_environment_and_a_bad_value_names_the_variable(monkeypatch):
    monkeypatch.delenv(slurm_watch.INTERVAL_ENV, raising=False)
    assert slurm_watch.Watch("/work/run").interval == slurm_watch.INTERVAL_S == 20.0
    monkeypatch.setenv(slurm_watch.INTERVAL_ENV, "2.5")
    assert slurm_watch.Watch("/work/run").interval == 2.5
    assert slurm_watch.Watch("/work/run", interval=7).interval == 7  # an explicit interval wins
    for bad in ("0", "-1", "soon", "nan", "inf"):
        monkeypatch.setenv(slurm_watch.INTERVAL_ENV, bad)
        with pytest.raises(ConfigError, match=f"CARVANA_SEG_SLURM_WATCH_S={bad!r}"):
            slurm_watch.Watch("/work/run")
