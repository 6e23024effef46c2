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

from tests.serve.helpers import REDUCED_DEMO, run_reduced


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
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as r:
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
        proc = subprocess.Popen(
            [sys.executable, "-m", "carvana_seg", "serve", "--port", str(port), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
        )
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
