"""Planned next to measured, for the HTML report: the plan's jobs and device-hours per stage beside the jobs and
wall hours of the run's benchmark TSVs (``report_tables.stage_times``, every round summed).

The plan is made for the device the run used (``device_row`` of the ensemble's device string), so a CPU demo is
compared with the measured CPU row and a GPU run with its GPU row (an assumption until measured).
"""

from __future__ import annotations

import re

import pandas as pd

from carvana_seg.plan.throughput import DEVICES

# benchmark file stems (report_tables.stage_of) that differ from their rule's name
BENCH_TO_RULE = {"resize": "resize_cache", "validate": "validate_data"}
COLUMNS = ["stage", "planned_jobs", "measured_jobs", "planned_hours", "measured_hours", "planned_disk_gb"]


def device_row(device: str) -> str:
    """The throughput-table row of a device string such as ``cuda (NVIDIA H100 80GB HBM3)``; ``cpu`` otherwise."""
    text = device.lower()
    return next((name for name in DEVICES if name != "cpu" and name in text), "cpu")


def compare(plan: dict, measured: list[pd.DataFrame]) -> pd.DataFrame:
    """One row per planned stage: planned jobs, hours (model stages only) and disk; measured jobs and hours."""
    runs = pd.concat([m for m in measured if not m.empty] or [pd.DataFrame(columns=["stage", "jobs", "total_s"])])
    rule = runs["stage"].map(lambda s: re.sub(r"_round\d+$", "", s))  # submission_round1.tsv: a submission job
    runs = runs.assign(stage=rule.map(lambda s: BENCH_TO_RULE.get(s, s)))
    got = runs.groupby("stage").agg(jobs=("jobs", "sum"), s=("total_s", "sum"))
    rows = []
    for s in plan["stages"]:
        if s["rule"] == "all":
            continue
        m = got.loc[s["rule"]] if s["rule"] in got.index else None
        rows.append(
            {
                "stage": s["rule"],
                "planned_jobs": s["jobs"],
                "measured_jobs": int(m["jobs"]) if m is not None else None,
                "planned_hours": round(s["hours"], 4) if s["gpu"] else None,
                "measured_hours": round(float(m["s"]) / 3600, 4) if m is not None else None,
                "planned_disk_gb": round(s["disk"] / 1e9, 3),
            }
        )
    return pd.DataFrame(rows, columns=COLUMNS)
