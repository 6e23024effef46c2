"""carvana_seg.pipeline.pool: the same map/imap in processes or in-process, whichever is cheaper."""

from __future__ import annotations

import os

from carvana_seg.pipeline.pool import Serial, worker_pool


def _pid_square(x: int) -> tuple[int, int]:
    return os.getpid(), x * x


def test_one_worker_or_few_jobs_run_in_process():
    for workers, n_jobs, min_jobs in ((1, 10, 2), (4, 1, 2), (4, 5, 9)):
        with worker_pool(workers, n_jobs, min_jobs=min_jobs) as pool:
            assert isinstance(pool, Serial)
            out = pool.map(_pid_square, range(n_jobs))
        assert {pid for pid, _ in out} == {os.getpid()} and [v for _, v in out] == [i * i for i in range(n_jobs)]


def test_several_workers_run_in_other_processes_in_order():
    with worker_pool(2, 6) as pool:
        assert not isinstance(pool, Serial)
        out = list(pool.imap(_pid_square, range(6)))
    assert [v for _, v in out] == [i * i for i in range(6)] and os.getpid() not in {pid for pid, _ in out}


def test_a_spawn_context_runs_in_fresh_processes():
    with worker_pool(2, 4, context="spawn") as pool:
        assert not isinstance(pool, Serial)
        out = pool.map(_pid_square, range(4))
    assert [v for _, v in out] == [0, 1, 4, 9] and os.getpid() not in {pid for pid, _ in out}


def test_no_stage_starts_processes_of_its_own():
    """pool.py is the one place a process pool is made (resize_cache, validate, synthetic and the rest use it)."""
    from tests.helpers import ROOT

    src = ROOT / "src" / "carvana_seg"
    own = [
        str(p.relative_to(src))
        for p in src.rglob("*.py")
        if p.name != "pool.py" and ("multiprocessing" in p.read_text() or "ProcessPoolExecutor" in p.read_text())
    ]
    assert own == []
