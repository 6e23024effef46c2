"""The benchmark scripts still run (tiny sizes) and print their tables; no timing is asserted here.

Speed and memory goals live in ``benchmarks/`` and ``docs/benchmarks.md``; this only keeps the scripts from rotting
when the library changes under them (they import stage code such as ``train_step`` and ``NpzWriter``).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.slow  # every test runs a benchmark script in its own process


def _run(script: str, *args: str, timeout: int = 240) -> str:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")
    res = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout


def test_rle_benchmark_checks_outputs_and_prints_speedups():
    out = _run("rle.py", "--n", "2")
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith(("encode", "decode"))}
    assert set(rows) == {"encode", "decode"} and all(r[-1].endswith("x") for r in rows.values())


def test_npz_compression_benchmark_round_trips_every_level():
    out = _run("npz_compression.py", "--n", "2", "--levels", "1", "3")
    assert [line.split()[0] for line in out.splitlines()[2:]] == ["1", "3"]


def test_train_speed_benchmark_reports_data_share():
    out = _run(
        "train_speed.py",
        "--size",
        "64x64",
        "--batch-size",
        "2",
        "--steps",
        "2",
        "--repeats",
        "1",
        "--images",
        "8",
        "--threads",
        "1",
    )
    row = out.splitlines()[-1].split()
    assert row[0] == "unet_r18_a@64x64" and row[1] == "64x64" and row[2] == "2"
    loader, model, pipeline, share = (float(v) for v in row[4:8])
    assert loader > 0 and model > 0 and pipeline > 0 and 0 <= share < 1


def test_compile_speed_benchmark_prints_its_table():
    # eager only: compiling takes minutes on a loaded CPU (the GPU/CPU numbers are in docs/benchmarks.md)
    out = _run(
        "compile_speed.py", "--size", "64x64", "--batch-size", "2", "--steps", "1", "--threads", "1", "--modes", "eager"
    )
    row = out.splitlines()[-1].split()
    assert row[0] == "eager" and all(float(v) > 0 for v in row[1:4])


def test_outlier_ops_benchmark_finds_the_same_masks():
    out = _run("outlier_ops.py", "--width", "320", "--height", "200", "--repeat", "1")
    rows = [line.split() for line in out.splitlines()[2:]]
    assert len(rows) == 2 and all(r[-1] == "True" for r in rows)


def test_test_time_benchmark_prints_the_ratio():
    out = _run(
        "test_time.py",
        "--n",
        "1",
        "--width",
        "192",
        "--height",
        "128",
        "--folds",
        "1",
        "--batch-size",
        "2",
        "--threads",
        "1",
        "--multiples",
        "1",
        "2",
        "8",
        "--repeats",
        "2",
    )
    last = out.splitlines()[-1]  # "pipeline/model-only: 0.912 (median of 2 paired passes; 0.901, 0.923)"
    assert last.startswith("pipeline/model-only: ") and "median of 2 paired passes" in last
    ratios = [float(r) for r in last.split("; ")[1].rstrip(")").split(", ")]
    assert len(ratios) == 2 and float(last.split()[1]) == pytest.approx(
        sorted(ratios)[0] / 2 + sorted(ratios)[1] / 2, abs=1e-3
    )
    assert all(r > 0 for r in ratios)


def test_edge_refine_benchmark_prints_gain_and_cost(tmp_path):
    import numpy as np

    from carvana_seg.core import layout
    from carvana_seg.core.images import read_mask
    from tests.helpers import make_layout

    raw = make_layout(tmp_path / "raw", n_cars=1, w=96, h=64)
    ids = [p.stem for p in sorted((raw / layout.TRAIN_DIR).glob("*.jpg"))][:3]
    maps = {i: (read_mask(raw / layout.MASK_DIR / layout.mask_file(i)) * 255).astype(np.uint8) for i in ids}
    np.savez(tmp_path / "fold0.npz", **maps)
    out = _run(
        "edge_refine.py",
        "--raw",
        str(raw),
        "--oof",
        str(tmp_path / "fold0.npz"),
        "--n",
        "3",
        "--settings",
        "4:1e-3:2",
        "2:1e-4:1",
    )
    rows = [line.split() for line in out.splitlines()[1:]]
    assert [r[0] for r in rows] == ["4:1e-3:2", "2:1e-4:1"] and all(r[1] == "3" for r in rows)


def test_serve_load_benchmark_prints_its_table(tmp_path):
    from tests.serve.helpers import tiny_run

    run = tiny_run(tmp_path / "tiny")
    out = _run(
        "serve_load.py",
        "--models",
        str(run),
        "--backends",
        "torch",
        "--concurrency",
        "1",
        "2",
        "--requests",
        "3",
        "--rss-requests",
        "5",
        "9",
        "--width",
        "320",
        "--height",
        "192",
        "--threads",
        "1",
    )
    lines = out.splitlines()
    rows = [line.split() for line in lines if line.startswith("tiny ")]
    assert [r[2] for r in rows[:2]] == ["1", "2"] and all(r[3] == "3" and r[-1] == "0" for r in rows[:2]), out
    assert float(rows[0][6]) > 0 and float(rows[0][7]) > 0  # images/s and the ratio to Service.prob alone
    assert len(rows) == 3 and rows[2][1] == "torch" and float(rows[2][-1]) > 0  # the peak-RSS row


def test_encode_benchmark_rows_decode_to_the_same_pixels():
    out = _run("encode.py", "--repeats", "1")
    png = [line for line in out.splitlines() if line.startswith("| RGBA PNG encode")]
    assert len(png) >= 2 and all("the same pixels" in row for row in png), out  # before (OpenCV) and now (fpng)
    assert any(line.startswith("| JPEG decode | opencv") for line in out.splitlines())
