"""The training log kept beside the resume state, so a resumed job's log still holds the earlier epochs' lines.

Snakemake's ``log:`` file is written with ``> {log}``, which truncates it when the job is rerun, so the lines of a
killed run would be lost. The train stage therefore also appends every log record to ``<state-dir>/train.log``
(the state dir survives a failed or killed job) and, when it resumes, first replays that file into its own output,
marked as earlier. A run that starts from zero truncates it: the log then describes only the run that made the
model.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

LOG_FILE = "train.log"
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"  # the CLI's format


def attach(state_dir: Path, resumed: bool) -> logging.Handler:
    """Replay the earlier runs' log when ``resumed`` (else start it afresh) and copy every further record there."""
    path = Path(state_dir) / LOG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    if resumed and path.is_file():
        earlier = path.read_text(errors="replace")
        sys.stderr.write(f"--- earlier run(s) of this job, replayed from {path} ---\n{earlier}--- resumed run ---\n")
        sys.stderr.flush()
    handler = logging.FileHandler(path, mode="a" if resumed else "w", encoding="utf-8")
    handler.setFormatter(logging.Formatter(FORMAT))
    logging.getLogger().addHandler(handler)
    return handler


def detach(handler: logging.Handler) -> None:
    logging.getLogger().removeHandler(handler)
    handler.close()
