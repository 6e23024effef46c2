"""After a failed run: each failed job's own one-line error, on the console.

A stage that fails prints one ``error: ...`` line (pipeline.cli), but into its job's log file; Snakemake's console
shows only the log's path ("check log file(s) for error details"), so a newcomer without Kaggle credentials saw a
``CalledProcessError`` and a path. The Snakefile's ``onerror`` hands Snakemake's own log to ``failed_job_errors``
and prints what it returns: one line per failed job, naming its log.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

# Snakemake's "Error in rule ..." block names the job's log(s) on this line
LOG_LINE = re.compile(r"^\s*log: (.+?) \(check log file\(s\) for error details\)\s*$", re.M)
ERROR_PREFIX = "error: "


def failed_job_errors(snakemake_logs: str | Path | Iterable[str | Path], workdir: str | Path = ".") -> list[str]:
    """``<job log>: error: ...`` for each failed job whose log holds a stage's error line (the last one), in the
    order Snakemake reported them, each log once; nothing for a job that failed without one. ``snakemake_logs`` is
    what ``onerror`` gets as ``log``: Snakemake 9 passes a list of its log files."""
    paths = [snakemake_logs] if isinstance(snakemake_logs, str | Path) else list(snakemake_logs)
    text = ""
    for path in paths:
        try:
            text += Path(path).read_text(errors="replace")
        except OSError:
            continue
    found: list[str] = []
    seen: set[str] = set()
    for match in LOG_LINE.finditer(text):
        for name in (n.strip() for n in match[1].split(",")):
            if not name or name in seen:
                continue
            seen.add(name)
            path = Path(workdir) / name
            try:
                lines = path.read_text(errors="replace").splitlines()
            except OSError:
                continue
            errors = [line for line in lines if line.startswith(ERROR_PREFIX)]
            if errors:
                found.append(f"{name}: {errors[-1]}")
    return found
