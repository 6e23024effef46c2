"""The session's real one-node Slurm (tests/cluster/slurm_cluster.py), skipped where it cannot run here."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.cluster.slurm_cluster import SlurmCluster, foreign_config, make_cluster, missing_binaries


@pytest.fixture(scope="session")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    """munged, slurmctld and slurmd started for the session (node idle), stopped by pid at its end."""
    missing = missing_binaries()
    if missing:
        pytest.skip(
            f"Slurm is not installed ({', '.join(missing)} missing): apt-get install -y "
            "--no-install-recommends slurmctld slurmd slurm-client munge (.ci/run does)"
        )
    if os.geteuid() != 0:
        pytest.skip("the real-Slurm test starts slurmctld and slurmd as root (SlurmUser=root, /etc/slurm): run as root")
    reason = foreign_config()
    if reason:
        pytest.skip(reason)
    cluster = make_cluster(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
