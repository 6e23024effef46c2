"""A real single-node Slurm for the tests: write the configs, start munged, slurmctld and slurmd, stop them by pid.

Checked on Debian 12 with Slurm 22.05 (``apt-get install --no-install-recommends slurmctld slurmd slurm-client
munge``), as root, without systemd or cgroups:

- the config must be ``/etc/slurm/slurm.conf``: the job-step plugin drops ``SLURM_CONF``, so a job started with
  another config fails with ``Could not establish a configuration source``;
- ``proctrack/linuxproc``, ``task/none``, ``select/cons_tres``, ``accounting_storage/none``, ``SlurmUser=root``;
- one fake GPU: ``GresTypes=gpu``, ``Gres=gpu:1`` on the node, ``gres.conf`` naming ``/dev/null``; Slurm then sets
  ``CUDA_VISIBLE_DEVICES=0`` in a job that asked for it;
- ``MinJobAge`` keeps a finished job in ``scontrol show job`` (no slurmdbd: no ``sacct``) long enough to read it
  back, and longer than 3x Snakemake's first status check (the plugin's status command is ``squeue`` then).

The node's memory is declared (``SlurmdParameters=config_overrides``) rather than measured, and memory is not a
consumable resource (``CR_Core``): the shipped profile's per-rule ``mem_mb`` (32 GB for train) are then accepted and
recorded as asked on a small CI machine, which is what the test checks.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

SLURM_CONF = Path("/etc/slurm/slurm.conf")
GRES_CONF = Path("/etc/slurm/gres.conf")
MARKER = "# written by carvana-seg tests/cluster (safe to delete)"
BINARIES = ("munged", "slurmctld", "slurmd", "sinfo", "sbatch", "squeue", "scontrol", "scancel")
PARTITION = "ci"
NODE_MEMORY_MB = 65536
MIN_JOB_AGE_S = 600


def missing_binaries() -> list[str]:
    """The Slurm and munge programs this machine lacks (the tests skip naming them)."""
    return [b for b in BINARIES if shutil.which(b) is None and not Path("/usr/sbin", b).exists()]


def _exe(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def slurm_conf(node: str, cpus: int, state: Path) -> str:
    """The one-node cluster's slurm.conf."""
    return f"""{MARKER}
ClusterName=carvana-ci
SlurmctldHost={node}
SlurmUser=root
AuthType=auth/munge
StateSaveLocation={state}/ctld
SlurmdSpoolDir={state}/d
SlurmctldPidFile={state}/slurmctld.pid
SlurmdPidFile={state}/slurmd.pid
SlurmctldLogFile={state}/slurmctld.log
SlurmdLogFile={state}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
SlurmdParameters=config_overrides
ReturnToService=2
MinJobAge={MIN_JOB_AGE_S}
KillWait=5
InactiveLimit=0
SchedulerType=sched/backfill
GresTypes=gpu
NodeName={node} CPUs={cpus} RealMemory={NODE_MEMORY_MB} Gres=gpu:1 State=UNKNOWN
PartitionName={PARTITION} Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


@dataclass
class SlurmCluster:
    """The running daemons (stopped by pid in ``stop``) and where their state and logs are."""

    state: Path
    node: str
    cpus: int
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def run(self, *cmd: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run([_exe(cmd[0]), *cmd[1:]], check=False, capture_output=True, text=True, timeout=timeout)

    def logs(self) -> str:
        """The last lines of each daemon's log, for a failing assertion."""
        out = []
        for name in ("slurmctld.log", "slurmd.log", "munged.log"):
            p = self.state / name
            if p.is_file():
                out.append(f"--- {name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-30:]))
        return "\n".join(out)

    def start(self, timeout: float = 60) -> None:
        """Write the configs, start munged, slurmctld and slurmd; return once ``sinfo`` says the node is idle."""
        for d in ("ctld", "d", "munge"):
            (self.state / d).mkdir(parents=True, exist_ok=True)
        SLURM_CONF.parent.mkdir(parents=True, exist_ok=True)
        SLURM_CONF.write_text(slurm_conf(self.node, self.cpus, self.state))
        GRES_CONF.write_text(f"{MARKER}\nNodeName={self.node} Name=gpu File=/dev/null\n")
        key = self.state / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        sock_dir = self.state / "munge" / "run"
        sock_dir.mkdir(exist_ok=True)
        sock_dir.chmod(0o755)
        socket_path = Path("/run/munge/munge.socket.2")  # where the Slurm clients look for it
        socket_path.parent.mkdir(parents=True, exist_ok=True)
        socket_path.parent.chmod(0o755)
        self._spawn(
            "munged",
            "munged",
            "-F",
            "--force",
            f"--key-file={key}",
            f"--socket={socket_path}",
            f"--pid-file={self.state / 'munge' / 'munged.pid'}",
            f"--seed-file={self.state / 'munge' / 'seed'}",
            f"--log-file={self.state / 'munged.log'}",
        )
        self._wait(lambda: socket_path.exists(), timeout, "munged's socket")
        self._spawn("slurmctld", "slurmctld", "-D", "-i")
        self._wait(lambda: self.run("scontrol", "ping").stdout.count("UP") > 0, timeout, "slurmctld")
        self._spawn("slurmd", "slurmd", "-D")
        self._wait(self.idle, timeout, f"node {self.node} idle in sinfo")

    def _spawn(self, name: str, *cmd: str) -> None:
        log = open(self.state / f"{name}.stdout", "wb")  # noqa: SIM115 - kept open for the daemon's life
        self.procs[name] = subprocess.Popen(
            [_exe(cmd[0]), *cmd[1:]],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def _wait(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            dead = [n for n, p in self.procs.items() if p.poll() is not None]
            if dead:
                raise RuntimeError(f"{', '.join(dead)} exited while waiting for {what}\n{self.logs()}")
            try:
                if ready():
                    return
            except (OSError, subprocess.SubprocessError):
                pass
            time.sleep(0.5)
        raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}\n{self.logs()}")

    def idle(self) -> bool:
        res = self.run("sinfo", "-h", "-N", "-o", "%t")
        return res.returncode == 0 and res.stdout.split() == ["idle"]

    def stop(self) -> None:
        """Cancel what is left, then stop each daemon this object started, by its pid (slurmd first)."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            self.run("scancel", "--full", "--user=root", "--quiet")
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.procs.get(name)
            if proc is None or proc.poll() is not None:
                continue
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        for conf in (SLURM_CONF, GRES_CONF):
            if conf.is_file() and conf.read_text().startswith(MARKER):
                conf.unlink()


def foreign_config() -> str | None:
    """Why this machine's Slurm must be left alone (a config or daemon the tests did not start), or None."""
    for conf in (SLURM_CONF, GRES_CONF):
        if conf.is_file() and not conf.read_text().startswith(MARKER):
            return f"{conf} exists and was not written by these tests: refusing to replace a site's Slurm config"
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", 6817)) == 0:
            return "something already listens on slurmctld's port 6817: a Slurm these tests did not start"
    return None


def make_cluster(state: Path) -> SlurmCluster:
    return SlurmCluster(state=state, node=socket.gethostname().split(".")[0], cpus=os.cpu_count() or 1)
