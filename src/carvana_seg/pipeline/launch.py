"""What the workflow sets up before any job starts, so that every documented way of launching it runs this package.

Every rule runs ``python -m carvana_seg <stage>``. That ``python`` must be the one of the environment Snakemake
itself runs from (it imported carvana_seg to build the DAG), whatever the user's PATH says: ``.venv/bin/snakemake``
from a plain shell, a cluster job started by an executor plugin, a Makefile. Jobs inherit the Snakemake process's
environment, so putting that interpreter's directory first on PATH fixes it at the root. With
``--software-deployment-method conda`` a job's own environment is activated in front of it, and that wins; its
``environment.post-deploy.sh`` installs this package from ``CARVANA_SEG_SRC``, the checkout exported here.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def prepare_job_environment(basedir: str | os.PathLike, environ: dict | None = None) -> None:
    """Put this interpreter's directory first on PATH and export CARVANA_SEG_SRC (the project checkout)."""
    env = os.environ if environ is None else environ
    bindir = str(Path(sys.executable).parent)
    rest = [p for p in env.get("PATH", "").split(os.pathsep) if p and p != bindir]
    env["PATH"] = os.pathsep.join([bindir, *rest])
    env["CARVANA_SEG_SRC"] = str(Path(basedir).resolve())
