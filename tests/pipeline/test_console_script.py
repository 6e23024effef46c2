"""The ``carvana-seg`` console script of pyproject.toml is installed, points at the real CLI and runs a stage."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from importlib import import_module
from pathlib import Path

import numpy as np

from carvana_seg.core import rle
from tests.helpers import ROOT

SCRIPT = Path(sys.executable).with_name("carvana-seg")
REINSTALL = f"reinstall the package: {Path(sys.executable).with_name('pip')} install --no-deps -e {ROOT}"


def test_the_entry_point_names_the_cli_main():
    target = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]["carvana-seg"]
    module, _, func = target.partition(":")
    assert getattr(import_module(module), func) is import_module("carvana_seg.pipeline.cli").main


def test_carvana_seg_help_lists_the_stages():
    assert SCRIPT.is_file(), f"{SCRIPT} is missing: {REINSTALL}"
    res = subprocess.run([str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "score" in res.stdout and "plan" in res.stdout and "report-figures" in res.stdout


def test_carvana_seg_runs_a_stage(tmp_path):
    """``carvana-seg score``: the cheapest stage (no torch), end to end through the installed script."""
    assert SCRIPT.is_file(), f"{SCRIPT} is missing: {REINSTALL}"
    truth = np.zeros((4, 6), dtype=np.uint8)
    truth[1:3, 1:5] = 1
    pred = truth.copy()
    pred[1, 1] = 0  # Dice 2*7/(8+7)
    for name, mask in (("truth.csv", truth), ("sub.csv", pred)):
        (tmp_path / name).write_text(f"img,rle_mask\ncar_01.jpg,{rle.encode(mask)}\n")
    out = tmp_path / "score.json"
    res = subprocess.run(
        [
            str(SCRIPT),
            "score",
            "--submission",
            str(tmp_path / "sub.csv"),
            "--truth",
            str(tmp_path / "truth.csv"),
            "--size",
            "6x4",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert abs(json.loads(out.read_text())["mean_dice"] - 14 / 15) < 1e-9
    bad = subprocess.run(
        [
            str(SCRIPT),
            "score",
            "--submission",
            str(tmp_path / "nope.csv"),
            "--truth",
            str(tmp_path / "truth.csv"),
            "--size",
            "6x4",
            "--out",
            str(tmp_path / "x.json"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error:") and "nope.csv" in bad.stderr
