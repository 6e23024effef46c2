"""Threads and GPUs of each rule, from the config: a job asks the scheduler (local cores, SLURM's CPUs per task,
a pod's CPU request) for as many cores as the processes it starts.

- ``resize_cache``, ``fetch``, ``validate_data``: ``resize.workers`` processes (the data stages' pools);
- ``train``: ``train.num_workers`` DataLoader workers + the main process;
- ``ensemble``: ``predict.workers`` decode workers + the main process (the model feed and the shard writer);
  ``outliers`` the same with repredict: zoom (it re-predicts), else ``predict.workers`` for its feature pool;
- ``threshold``, ``submission``, ``pseudo_labels``, ``pseudo_gain``: ``predict.workers`` (pools over the shards);
- ``oof``: 2 (torch's CPU threads; it starts no workers); everything else 1.

A model job's ``--threads`` is its whole CPU budget: torch gets what its workers leave (at least one thread), so
the CPU profile's ``set-threads`` of 1 keeps torch single-threaded. GPUs: one per job of a GPU rule
(``stages.GPU_RULES``), ``outliers`` only when its zoom re-prediction is on.
"""

from __future__ import annotations

from carvana_seg.pipeline.stages import GPU_RULES


def zoom(config: dict) -> bool:
    """Whether the outlier check re-predicts (repredict: zoom): the only case in which it runs models."""
    return config["outliers"]["action"] == "fix" and config["outliers"]["repredict"] == "zoom"


def rule_threads(config: dict) -> dict[str, int]:
    """rule -> threads (module docstring); rules not listed take 1."""
    data, pred = config["resize"]["workers"], max(1, config["predict"]["workers"])
    out = {rule: data for rule in ("fetch", "validate_data", "resize_cache")}
    out.update({rule: pred for rule in ("threshold", "submission", "pseudo_labels", "pseudo_gain")})
    out.update(
        train=config["train"]["num_workers"] + 1, ensemble=pred + 1, oof=2, outliers=pred + 1 if zoom(config) else pred
    )
    return out


def threads(config: dict, rule: str) -> int:
    return rule_threads(config).get(rule, 1)


def gpus(config: dict, rule: str) -> int:
    """GPUs a job of ``rule`` asks for: 1 for a GPU rule (``outliers`` only with zoom), else 0."""
    if rule not in GPU_RULES:
        return 0
    return int(zoom(config)) if rule == "outliers" else 1


def torch_threads(budget: int, workers: int) -> int:
    """torch's CPU threads in a job of ``budget`` threads that also runs ``workers`` worker processes."""
    return max(1, int(budget) - int(workers))
