"""What a run was trained on (inference/provenance.py), from the files every finished run has."""

from __future__ import annotations

import json
from pathlib import Path

from carvana_seg.inference import provenance


def run_tree(root: Path, source: str | None) -> Path:
    """A working directory with results/demo/data_validation.json and (unless None) data/demo/fetch.json."""
    results = root / "results" / "demo"
    results.mkdir(parents=True)
    summary = {"raw": "data/demo/raw", "n_train": 48, "n_cars_train": 3, "sizes": {"train": {"480x320": 48}}}
    (results / "data_validation.json").write_text(json.dumps(summary))
    if source is not None:
        (root / "data" / "demo").mkdir(parents=True)
        (root / "data" / "demo" / "fetch.json").write_text(json.dumps({"data": {"source": source}, "summary": {}}))
    return results


def test_a_synthetic_run_says_so_and_a_real_one_does_not(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the run's raw path is relative to its working directory elsewhere
    record = provenance.trained_on(run_tree(tmp_path / "a", "synthetic"), [(64, 32), (64, 32), (96, 64)])
    assert record == {
        "source": "synthetic",
        "train_cars": 3,
        "train_photos": 48,
        "photo_size": "480x320",
        "network_sizes": ["64x32", "96x64"],
        "notice": provenance.SYNTHETIC_NOTICE,
    }
    assert provenance.describe(record, 0.98123) == "synthetic data: 3 cars, 48 photos of 480x320, OOF Dice 0.9812"
    real = provenance.trained_on(run_tree(tmp_path / "b", "local"))
    assert real["source"] == "local" and real["notice"] is None


def test_a_results_tree_without_its_data_is_unknown_not_synthetic(tmp_path):
    record = provenance.trained_on(run_tree(tmp_path, None))
    assert record["source"] == "unknown" and record["notice"] is None and record["train_cars"] == 3
    empty = provenance.trained_on(tmp_path / "nothing")
    assert empty["source"] == "unknown" and empty["train_photos"] is None
    assert provenance.describe(empty, None) == "unknown data"
