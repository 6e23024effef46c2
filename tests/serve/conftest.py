"""Fixtures of the serve tests: a reduced demo run (the demo DAG on fewer, smaller cars for one epoch, edge
refinement on) and ``python -m carvana_seg serve`` subprocesses on free loopback ports."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from tests.helpers import ROOT, snakemake

# config/demo.yaml with 3 training cars (one per fold), 2 test cars (one an outlier), 480x320 photos, one epoch
# per model, and the guided-filter edge refinement on: every stage the served mask must reproduce runs (two
# variants of different sizes and their weights, the outlier check, the submission). The pseudo-label round is
# off to halve the DAG (about 3.5 minutes with it on a loaded 2-core machine); the round choice of the final
# ensemble is tested on its own (tests/inference/test_predict_export.py, tests/serve/test_service.py).
REDUCED_DEMO = {
    "name": "serve",
    "data": {"synthetic": {"n_train_cars": 3, "n_test_cars": 2, "n_outlier_cars": 1, "width": 480, "height": 320}},
    "predict": {"edge_refine": {"method": "guided", "radius": 4, "eps": 1.0e-3, "scale": 2}},
    "pseudo_label": {"enabled": False},
}


def run_reduced(workdir: Path, override: dict, base: Path = ROOT / "config" / "demo.yaml") -> Path:
    """Run ``base`` + ``override`` up to its submission in ``workdir``; return ``results/<name>``."""
    cfg = yaml.safe_load(base.read_text())
    variants = [dict(v, epochs=1) for v in override.get("variants", cfg["variants"])]
    (workdir / "override.yaml").write_text(yaml.safe_dump({**override, "variants": variants}))
    name = override.get("name", cfg["name"])
    res = snakemake(ROOT, workdir, f"results/{name}/submission.csv.gz", "--cores", "2", "--workflow-profile", "cpu",
                    "--configfile", str(base), str(workdir / "override.yaml"), timeout=1200)
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    return workdir / "results" / name


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``results/serve`` of the reduced demo (about 2 minutes on 2 cores); its raw photos in ``data/serve/raw``."""
    return run_reduced(tmp_path_factory.mktemp("demo"), REDUCED_DEMO)


def free_port() -> int:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    """Poll ``url`` until it answers 200; fail with the server's output if it exits or never gets ready."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited with {proc.returncode}: {proc.stdout.read()[-3000:]}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        time.sleep(0.3)
    raise AssertionError(f"{url} not ready after {timeout} s")


@pytest.fixture(scope="session")
def start_server() -> Iterator[Callable[..., str]]:
    """Start ``python -m carvana_seg serve ARGS`` on a free loopback port; return its base URL once ready."""
    procs: list[subprocess.Popen] = []

    def start(*args: str, env: dict | None = None) -> str:
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "carvana_seg", "serve", "--port", str(port), *args],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        wait_ready(url + "/healthz", proc)
        return url

    yield start
    for proc in procs:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=20)
        if proc.poll() is None:
            proc.kill()
