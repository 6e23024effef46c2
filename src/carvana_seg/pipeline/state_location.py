"""Where training's resume state lives in each way of running the workflow (docs/cluster.md, "Where state lives").

- A shared filesystem (a workstation, the Slurm profile): the job-local state directory, which survives a killed job
  because it is no output; a retry on any node sees it. Nothing else is needed.
- No shared filesystem, with a default storage provider (the Kubernetes profile, ``--shared-fs-usage none
  --default-storage-provider fs|s3|gcs ...``): the state also goes to the storage prefix, under the same paths as
  the working directory (``<prefix>/results/<name>/state/...``), where a retried job on another node finds it.
- The top-level config key ``state_store`` (a path or fsspec URL) overrides both.
- No shared filesystem and no storage prefix nor ``state_store``: the state stays on each node, and the run says so
  once at its start (``warning``), never silently.

The store reaches the train command in the environment (``ENV_VAR``, set where the Snakefile is parsed, which every
job's own Snakemake does too), outside its params, so choosing or moving it never reruns a job.
"""

from __future__ import annotations

import os
from collections.abc import Collection

ENV_VAR = "CARVANA_SEG_STATE_STORE"  # train's --state-store default (training/train.py)

NO_STORE_WARNING = (
    "without a shared filesystem, training's resume state stays on the node that ran each train job: a retried "
    "job on another node starts again at epoch 1. Set the config key state_store to a path or fsspec URL every "
    "node reaches (or run with --default-storage-prefix) to resume anywhere (docs/cluster.md)."
)


def resolve(configured: str | None, storage_prefix: str | None, shared_io: bool) -> str | None:
    """The state store's URL for this run: ``state_store`` when set; else, without a shared filesystem, the default
    storage prefix; else None (the job-local state directory only)."""
    if configured:
        return configured
    if not shared_io and storage_prefix:
        return storage_prefix
    return None


def warning(store: str | None, shared_io: bool) -> str | None:
    """The start-of-run line when a retried job could not find its state, else None."""
    return NO_STORE_WARNING if store is None and not shared_io else None


def from_workflow(configured: str | None, storage_settings: object) -> tuple[str | None, bool]:
    """(store, shared_io) from Snakemake's storage settings (``workflow.storage_settings``): shared I/O unless
    ``--shared-fs-usage`` leaves out ``input-output``."""
    usage: Collection = getattr(storage_settings, "shared_fs_usage", ()) or ()
    shared_io = any(getattr(u, "name", str(u)).upper().replace("-", "_") == "INPUT_OUTPUT" for u in usage)
    prefix = getattr(storage_settings, "default_storage_prefix", None)
    provider = getattr(storage_settings, "default_storage_provider", None)
    return resolve(configured, prefix if provider else None, shared_io), shared_io


def export(store: str | None, environ: dict | None = None) -> None:
    """Set (or clear) ``ENV_VAR`` for the jobs this process starts."""
    env = os.environ if environ is None else environ
    if store:
        env[ENV_VAR] = store
    else:
        env.pop(ENV_VAR, None)
