"""Preflight against a Slurm cluster: a job that no node of its partition can ever run stops the run before sbatch.

``sbatch`` accepts a job that asks for more CPUs, memory, GPUs or time than any node of its partition has; it then
stays PENDING (reason ``PartitionConfig`` and the like) and the run waits for ever without a line. Before the first
submission the Snakefile's ``onstart`` (workflow/rules/common.smk) hands every job to run to ``check``, with what
``sinfo`` reports per node (``read_sinfo``). The first job no node can run raises one ``ConfigError`` naming the
rule, what it asks for and the largest node there. ``make plan PROFILE=slurm`` runs the same check on the config.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass

from carvana_seg.pipeline.errors import ConfigError

SINFO_FORMAT = "%P|%c|%m|%G|%l|%a"  # partition, CPUs, memory (MB), gres, time limit, availability; one node a row


@dataclass(frozen=True)
class Ask:
    """What one job asks Slurm for (as the slurm executor plugin computes it)."""

    rule: str
    cpus: int
    mem_mb: int
    gpus: int
    minutes: int
    partition: str | None  # None: the cluster's default partition

    def describe(self) -> str:
        gpus = f", {self.gpus} GPU" if self.gpus else ""
        return f"{self.cpus} CPUs, {self.mem_mb} MB{gpus}, {self.minutes} min"


@dataclass(frozen=True)
class Node:
    """One node row of ``sinfo -N``."""

    partition: str
    default: bool
    cpus: int
    mem_mb: int
    gpus: int
    max_minutes: float  # inf: no limit
    up: bool

    def describe(self) -> str:
        limit = "no time limit" if math.isinf(self.max_minutes) else f"time limit {int(self.max_minutes)} min"
        return f"{self.cpus} CPUs, {self.mem_mb} MB, {self.gpus} GPU, {limit}"

    def fits(self, ask: Ask) -> bool:
        return (
            ask.cpus <= self.cpus
            and ask.mem_mb <= self.mem_mb
            and ask.gpus <= self.gpus
            and ask.minutes <= self.max_minutes
        )


def minutes(limit: str) -> float:
    """A Slurm time limit in minutes: ``infinite``, ``M``, ``M:S``, ``H:M:S``, ``D-H``, ``D-H:M``, ``D-H:M:S``."""
    text = limit.strip().lower()
    if text in ("infinite", "unlimited", "n/a", ""):
        return math.inf
    try:
        days, _, rest = text.rpartition("-")
        parts = [int(x) for x in rest.split(":")]
        if days:
            h, m, sec = (parts + [0, 0])[:3]
        else:
            h, m, sec = {1: [0, *parts, 0], 2: [0, *parts], 3: parts}[len(parts)]
        return int(days or 0) * 1440 + h * 60 + m + sec / 60
    except (ValueError, KeyError) as exc:
        raise ValueError(f"unreadable Slurm time limit {limit!r}") from exc


def _gpus(gres: str) -> int:
    """GPUs in a gres string such as ``gpu:1``, ``gpu:a100:4(S:0-1)``, ``(null)``."""
    total = 0
    for part in gres.split(","):
        m = re.match(r"gpu(?::[\w.-]+)?:(\d+)", part.strip())
        total += int(m[1]) if m else 0
    return total


def parse_sinfo(text: str) -> list[Node]:
    """The node rows of ``sinfo -h -N -o SINFO_FORMAT``."""
    nodes = []
    for line in text.splitlines():
        if not line.strip():
            continue
        part, cpus, mem, gres, limit, avail = line.split("|")
        nodes.append(
            Node(
                partition=part.rstrip("*"),
                default=part.endswith("*"),
                cpus=int(cpus),
                mem_mb=int(re.sub(r"\D.*", "", mem) or 0),
                gpus=_gpus(gres),
                max_minutes=minutes(limit),
                up=avail.strip().lower() == "up",
            )
        )
    return nodes


def read_sinfo() -> list[Node]:
    """This cluster's nodes, from ``sinfo``; a clear error where it cannot be asked."""
    if shutil.which("sinfo") is None:
        raise ConfigError("the Slurm profile needs `sinfo` on this host to check the jobs against the cluster")
    res = subprocess.run(
        ["sinfo", "-h", "-N", "-o", SINFO_FORMAT], capture_output=True, text=True, timeout=60, check=False
    )
    if res.returncode != 0:
        raise ConfigError(f"sinfo failed ({res.returncode}): {res.stderr.strip()[:300]}")
    return parse_sinfo(res.stdout)


def check(asks: Iterable[Ask], nodes: list[Node]) -> None:
    """Raise one ConfigError for the first job that no up node of its partition can ever run."""
    for ask in asks:
        where = [n for n in nodes if (n.partition == ask.partition if ask.partition else n.default)]
        name = ask.partition or (f"the default partition ({where[0].partition})" if where else "the default partition")
        if not where:
            known = ", ".join(sorted({n.partition for n in nodes})) or "none"
            raise ConfigError(f"rule {ask.rule}: partition {name} does not exist on this cluster (partitions: {known})")
        up = [n for n in where if n.up]
        if not up:
            raise ConfigError(f"rule {ask.rule}: partition {name} is down on every node: no job of it can start")
        if not any(n.fits(ask) for n in up):
            largest = max(up, key=lambda n: (n.cpus, n.mem_mb, n.gpus, n.max_minutes))
            raise ConfigError(
                f"rule {ask.rule} asks for {ask.describe()} on {name}; the largest node there has "
                f"{largest.describe()}: no node can ever run it (Slurm would keep it PENDING with reason "
                "PartitionConfig). Lower the rule's threads or the profile's set-resources, or pick another partition."
            )


def ask_of_job(job) -> Ask:  # noqa: ANN001 - a Snakemake job
    """What the slurm executor plugin submits for ``job``: cpus_per_task or the job's threads, mem_mb, gpu, runtime."""
    res = job.resources
    cpus = res.get("cpus_per_task") or job.threads
    gpus = res.get("gpu") or 0
    return Ask(
        rule=job.rule.name,
        cpus=int(cpus),
        mem_mb=int(res.get("mem_mb") or 0),
        gpus=int(gpus) if str(gpus).isdigit() else 0,
        minutes=int(res.get("runtime") or 0),
        partition=res.get("slurm_partition") or None,
    )


def asks_from_profile(config: dict, profile: dict, rules: Iterable[str]) -> list[Ask]:
    """What each of ``rules`` will ask for under a Slurm profile (its ``default-resources`` and ``set-resources``)
    with this config's threads: ``make plan PROFILE=slurm``, before any DAG is built."""
    from carvana_seg.pipeline.resources import threads

    default = profile.get("default-resources") or {}
    asks = []
    for rule in rules:
        res = {**default, **(profile.get("set-resources") or {}).get(rule, {})}
        asks.append(
            Ask(
                rule=rule,
                cpus=int(res.get("cpus_per_task") or threads(config, rule)),
                mem_mb=int(res.get("mem_mb") or 0),
                gpus=int(res.get("gpu") or 0),
                minutes=int(res.get("runtime") or 0),
                partition=res.get("slurm_partition") or None,
            )
        )
    return asks
