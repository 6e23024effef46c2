"""While a Slurm run goes on: a job pending for a reason that cannot clear by itself ends the run with one line.

The preflight (pipeline.preflight) checks every job against the nodes before the first sbatch, but a partition can
go down or be reconfigured while the run waits, and Slurm then keeps a job PENDING (reason ``PartitionDown``,
``PartitionConfig``, ...) for ever while the executor plugin keeps polling in silence. ``Watch``, a daemon thread the
Snakefile's ``onstart`` starts, asks ``squeue`` every ``interval`` seconds for this run's jobs (those whose working
directory is the run's); a job seen pending for such a reason at two polls in a row is logged as an error naming the
job, its rule and the reason, and the run is interrupted (SIGINT: Snakemake cancels its jobs and exits non-zero).
``CARVANA_SEG_SLURM_WATCH_S`` in the submitting shell sets the interval (default 20 s).
"""

from __future__ import annotations

import logging
import math
import os
import signal
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

from carvana_seg.pipeline.errors import ConfigError

log = logging.getLogger(__name__)

# Pending reasons that wait for an administrator, not for resources (squeue's %r; `man squeue`, JOB REASON CODES)
STUCK_REASONS = frozenset(
    {
        "PartitionConfig",
        "PartitionDown",
        "PartitionInactive",
        "PartitionNodeLimit",
        "PartitionTimeLimit",
        "BadConstraints",
        "InvalidAccount",
        "InvalidQOS",
        "QOSMaxCpuPerJobLimit",
        "QOSMaxGRESPerJob",
        "QOSMaxMemoryPerJob",
        "QOSMaxWallDurationPerJobLimit",
    }
)
SQUEUE_FORMAT = "%i|%T|%r|%Z|%k"  # id, state, reason, working directory, comment (the plugin's rule_<name>...)
INTERVAL_S = 20.0
INTERVAL_ENV = "CARVANA_SEG_SLURM_WATCH_S"


def interval_s() -> float:
    """The poll interval: ``CARVANA_SEG_SLURM_WATCH_S`` (seconds, finite and > 0) where it is set, else INTERVAL_S."""
    raw = os.environ.get(INTERVAL_ENV, "").strip()
    if not raw:
        return INTERVAL_S
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not (value > 0 and math.isfinite(value)):
        raise ConfigError(f"{INTERVAL_ENV}={raw!r}: the Slurm watch's poll interval must be a number of seconds > 0")
    return value


def stuck_jobs(squeue_out: str, workdir: str) -> dict[str, str]:
    """{job id: 'rule R: reason'} of this run's pending jobs whose reason cannot clear by itself."""
    found = {}
    for line in squeue_out.splitlines():
        parts = line.split("|")
        if len(parts) < 5:
            continue
        job, state, reason, wd, comment = (p.strip() for p in parts[:5])
        if state == "PENDING" and reason in STUCK_REASONS and os.path.realpath(wd) == os.path.realpath(workdir):
            rule = comment.removeprefix("rule_").split("_wildcards_")[0] or "?"
            found[job] = f"rule {rule}: {reason}"
    return found


def _squeue() -> str:
    res = subprocess.run(
        ["squeue", "-h", "-t", "PENDING", "-o", SQUEUE_FORMAT], capture_output=True, text=True, timeout=60, check=False
    )
    return res.stdout if res.returncode == 0 else ""


class Watch(threading.Thread):
    """Polls ``squeue`` every ``interval`` seconds (default: interval_s()); on a job stuck at two polls in a row,
    logs one error line and calls ``stop``."""

    def __init__(
        self,
        workdir: str | os.PathLike,
        interval: float | None = None,
        query: Callable[[], str] = _squeue,
        stop: Callable[[], None] | None = None,
        report: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(daemon=True, name="carvana-seg-slurm-watch")
        self.workdir, self.query = str(Path(workdir)), query
        self.interval = interval_s() if interval is None else interval
        self.stop_run = stop or (lambda: os.kill(os.getpid(), signal.SIGINT))
        self.report = report or log.error
        self.finished = threading.Event()
        self.message: str | None = None

    def run(self) -> None:
        seen: dict[str, str] = {}
        while not self.finished.wait(self.interval):
            try:
                now = stuck_jobs(self.query(), self.workdir)
            except (OSError, subprocess.SubprocessError):
                continue
            again = {job: why for job, why in now.items() if job in seen}
            if again:
                job, why = sorted(again.items())[0]
                self.message = (
                    f"Slurm job {job} ({why}) is pending for a reason that does not clear by itself: ending the run "
                    "(scontrol show job " + job + " says more; fix the partition or the profile's resources)"
                )
                self.report(self.message)
                self.stop_run()
                return
            seen = now
