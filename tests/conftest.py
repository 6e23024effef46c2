"""Shared fixtures: paths, the real Carvana sample (skipped when absent), tiny Kaggle layouts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Before anything loads torch (libgomp reads it once): OpenMP threads that wait passively, as every stage process
# already runs (pipeline/cli.py). The two xdist workers share 2 cores, and a worker's torch threads spinning while
# they wait took CPU from the other worker's DAG run.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from tests.helpers import ROOT, SHARED_SAMPLE, make_layout  # noqa: E402


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def real_sample() -> Path:
    """The real Carvana files in ../shared/carvana-sample; the test is skipped when they are absent."""
    if not (SHARED_SAMPLE / "train_masks.csv").is_file():
        pytest.skip(f"real Carvana sample not found at {SHARED_SAMPLE} (only present beside the project checkout)")
    return SHARED_SAMPLE


@pytest.fixture
def tiny_layout(tmp_path: Path) -> Path:
    return make_layout(tmp_path / "raw")


os.environ.setdefault("PYTHONHASHSEED", "0")


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny raw layout, folds.csv and resize caches for training tests (tests.helpers.build_tiny_cache)."""
    from tests.helpers import build_tiny_cache

    return build_tiny_cache(tmp_path_factory.mktemp("tiny"))


# pytest-xdist (`make test` runs two workers): the unit of work is a test file, so a module fixture (a file's DAG
# run) is built once, by the worker that runs the whole file; tests/serve is one unit, as its files share the
# session's reduced demo run (tests/serve/conftest.py). A marker-based `--dist loadgroup` does not group under
# pytest 9.2 (xdist 3.8 appends the group to ``item._nodeid``, which pytest 9.2 no longer reads), hence this
# scheduler, which decides the units whatever `--dist` says.
SHARED_DIRS = ("tests/serve/",)
# The units that take minutes, longest first (seconds under `make test`, docs/testing.md). They are handed out
# before all others: xdist's own order (most tests first) handed out the rehearsal and gpu-check last, and one
# worker then ran them alone while the other sat idle. The Slurm file mostly waits on squeue, so starting it first
# overlaps its waits with the other worker's computing. A unit not listed follows in xdist's order; a stale list
# only costs minutes, never a result.
LONG_UNITS = (
    "tests/cluster/test_slurm.py",
    "tests/pipeline/test_rehearse.py",
    "tests/serve/",
    "tests/test_gpu_check.py",
    "tests/cluster/test_no_shared_fs.py",
)


def unit_of(nodeid: str) -> str:
    """The work unit of a test id: its file, or its directory where that is one of SHARED_DIRS."""
    path = nodeid.split("::", 1)[0]
    return next((d for d in SHARED_DIRS if path.startswith(d)), path)


def unit_order(nodeids: list[str]) -> list[int]:
    """Positions of the test ids with LONG_UNITS' tests first, in that order, then the rest by their unit's test
    count, most first (xdist's own order), each unit's tests in collection order."""
    units: dict[str, list[int]] = {}
    for i, nodeid in enumerate(nodeids):
        units.setdefault(unit_of(nodeid), []).append(i)
    rank = {u: i for i, u in enumerate(LONG_UNITS)}
    ordered = sorted(units, key=lambda u: (rank.get(u, len(rank)), 0 if u in rank else -len(units[u])))
    return [i for u in ordered for i in units[u]]


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under xdist, each worker orders its collection by unit_order: xdist's scheduler hands out the units in the
    order the workers collected them (FileScheduling turns its own reordering off). A one-process run keeps
    pytest's order."""
    if hasattr(config, "workerinput"):
        items[:] = [items[i] for i in unit_order([item.nodeid for item in items])]


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):  # noqa: ANN201 - xdist's scheduler type
    """One work unit per test file, or per directory of SHARED_DIRS, the long ones handed out first."""
    from xdist.scheduler import LoadScopeScheduling

    class FileScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return unit_of(nodeid)

    config.option.loadscopereorder = False  # hand the units out in the workers' order (unit_order)
    return FileScheduling(config, log)
