"""Shared fixtures: paths, the real Carvana sample (skipped when absent), tiny Kaggle layouts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import ROOT, SHARED_SAMPLE, make_layout


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


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):  # noqa: ANN201 - xdist's scheduler type
    """One work unit per test file, or per directory of SHARED_DIRS."""
    from xdist.scheduler import LoadScopeScheduling

    class FileScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return next((d for d in SHARED_DIRS if path.startswith(d)), path)

    return FileScheduling(config, log)
