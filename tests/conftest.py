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
