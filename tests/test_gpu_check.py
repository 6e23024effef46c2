"""``make gpu-check`` at toy sizes on the CPU: every step runs in its own capped process and lands in the JSON and
the Markdown table, so the script cannot rot before a GPU box runs it for real (docs/gpu.md)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers import ROOT


@pytest.mark.dag
@pytest.mark.slow
def test_gpu_check_runs_every_step_at_toy_sizes(tmp_path):
    res = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--toy", "--out", str(tmp_path), "--budget", "900"],
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    r = json.loads((tmp_path / "gpu_check.json").read_text())
    assert r["toy"] and r["env"]["status"] == "ok" and r["env"]["torch"]
    train = {(t["size"], t["mode"]): t for t in r["train"] if t["status"] == "ok"}
    assert len(train) == len(r["train"]) == 6, [t for t in r["train"] if t["status"] != "ok"]
    assert {m for s, m in train if s == "64x64"} == {"fp32/tf32", "bf16", "bf16+cl", "bf16+cl+compile"}
    assert all(t["images_per_s"] > 0 and t["batch"] == 2 for t in train.values())
    assert [m["size"] for m in r["memory"]] == ["64x64", "96x64", "80x80"]
    assert all(m["largest_batch"] is None and "no CUDA" in m["why"] for m in r["memory"])
    e = r["ensemble"]
    assert e["status"] == "ok" and e["pipeline_images_per_s"] > 0 and 0 < e["ratio"] < 2, e
    d = r["dag"]
    assert d["status"] == "ok" and d["device"] == "cpu" and d["amp"] == "off" and d["claimed"] is None, d
    md = (tmp_path / "gpu_check.md").read_text()
    assert (
        md.count("| train ") == 6 and "| tiny DAG --resources gpu=1 | claimed / device / amp | none / cpu / off |" in md
    )
    assert r["seconds"] < 900
