"""benchmarks/confidence.py still runs on a finished run's OOF predictions (the reduced demo's) and prints its table;
what it measured on the real sample is in docs/serve.md."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.dag]


def test_the_confidence_benchmark_ranks_the_oof_photos(demo_run):
    raw = demo_run.parents[1] / "data" / "serve" / "raw"
    res = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "confidence.py"), "--models", str(demo_run), "--raw", str(raw)],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT / "src")),
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [line for line in res.stdout.splitlines() if line.startswith(("| predicted Dice", "| uncertain", "| soft"))]
    assert len(rows) == 3, res.stdout
    rho = float(rows[0].split("|")[2])
    assert -1.0 <= rho <= 1.0
    assert res.stdout.startswith("16 OOF photos")  # fold 0 of three (folds.use): one car of 16 views
