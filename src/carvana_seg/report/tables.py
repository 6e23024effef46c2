"""Tables behind the report figures: time per stage from Snakemake's benchmark TSVs, pseudo-labelling rounds.

Pseudo-labelling files (all optional; a run without them gets a note instead of a figure). A round's directory
is ``results/<name>`` for round 1 and ``results/<name>/round<r>`` after (``carvana_seg.pipeline.rounds.round_dir``):

- ``<round dir>/pseudo_labels.csv``: the test images considered for pseudo-labels from that round's ensemble, one
  row each, columns ``img``, ``confidence`` (in [0, 1]; ``score`` is accepted instead) and ``selected`` (bool or
  0/1; without it every row counts as selected). Other columns are ignored.
- ``<round dir>/pseudo_gain.json`` (rounds >= 2) with numeric keys naming Dice (``oof_dice``, ``dice_before``,
  ``test_dice``, ...), or ``results/<name>/pseudo_gain.json`` with ``{"rounds": [{"round": r, <dice keys>}]}``.

Each reader takes ``files``: the files it may read (the rule's declared inputs). Given, nothing is globbed and a
file not in it counts as absent, so the stage reads only what Snakemake declared (and moved, without a shared
filesystem); None (direct use) looks at the directories.
"""

from __future__ import annotations

import html
import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from carvana_seg.pipeline.rounds import round_dirs  # re-exported: the report reads rounds through it

SIZE_SUFFIX = re.compile(r"_\d+x\d+$")
STAGE_COLUMNS = ["stage", "jobs", "total_s", "max_s", "cpu_s", "max_rss_mb", "mean_load"]


Files = Iterable[str | Path] | None


def normalize_files(files: Files) -> set[str] | None:
    return None if files is None else {os.path.normpath(f) for f in files}


def may_read(path: Path, files: set[str] | None) -> bool:
    """Whether ``path`` may be read: listed in ``files``, or (files None) an existing file."""
    return path.is_file() if files is None else os.path.normpath(path) in files


def stage_of(tsv: Path, bench_dir: Path) -> str:
    """Stage of a benchmark file: ``train/<v>_fold0.tsv`` -> train, ``resize_96x64.tsv`` -> resize."""
    rel = tsv.relative_to(bench_dir)
    if len(rel.parts) > 1:
        return rel.parts[0]
    return SIZE_SUFFIX.sub("", tsv.stem)


def stage_times(bench_dir: Path, exclude: set[str] | frozenset[str] = frozenset(), files: Files = None) -> pd.DataFrame:
    """One row per stage: jobs, summed and longest wall seconds, CPU seconds, peak RSS (MB), mean load. ``files``:
    the TSVs under ``bench_dir`` to read (the others are ignored); None: every ``*.tsv`` below it."""
    bench_dir = Path(bench_dir)
    rows = []
    if files is None:
        tsvs = sorted(bench_dir.rglob("*.tsv")) if bench_dir.is_dir() else []
    else:
        root = os.path.normpath(bench_dir) + os.sep
        tsvs = sorted(Path(f) for f in normalize_files(files) if f.startswith(root) and f.endswith(".tsv"))
    for tsv in tsvs:
        stage = stage_of(tsv, bench_dir)
        if stage in exclude:
            continue
        df = pd.read_csv(tsv, sep="\t").apply(pd.to_numeric, errors="coerce")  # '-' (not measured) -> NaN
        if df.empty or "s" not in df:
            continue
        mean = df.mean(numeric_only=True)  # repeated benchmarks: their mean
        rows.append(
            {
                "stage": stage,
                "s": mean.get("s"),
                "cpu_time": mean.get("cpu_time"),
                "max_rss": mean.get("max_rss"),
                "mean_load": mean.get("mean_load"),
            }
        )
    if not rows:
        return pd.DataFrame(columns=STAGE_COLUMNS)
    jobs = pd.DataFrame(rows)
    table = (
        jobs.groupby("stage")
        .agg(
            jobs=("s", "size"),
            total_s=("s", "sum"),
            max_s=("s", "max"),
            cpu_s=("cpu_time", "sum"),
            max_rss_mb=("max_rss", "max"),
            mean_load=("mean_load", "mean"),
        )
        .reset_index()
    )
    return table.sort_values(["total_s", "stage"], ascending=[False, True], ignore_index=True)[STAGE_COLUMNS].round(2)


def pseudo_rounds(results: Path, files: Files = None) -> list[dict[str, Any]]:
    """Each round with a ``pseudo_labels.csv``: round, confidence (Series or None), n_images, n_selected."""
    rounds, files = [], normalize_files(files)
    for r, d in round_dirs(results, files):
        labels = d / "pseudo_labels.csv"
        if not may_read(labels, files):
            continue
        df = pd.read_csv(labels)
        col = next((c for c in ("confidence", "score") if c in df.columns), None)
        selected = df["selected"].astype(str).str.lower().isin(["1", "1.0", "true"]) if "selected" in df else None
        rounds.append(
            {
                "round": r,
                "confidence": pd.to_numeric(df[col], errors="coerce").dropna() if col else None,
                "n_images": len(df),
                "n_selected": int(selected.sum()) if selected is not None else len(df),
            }
        )
    return rounds


def _dice_keys(record: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in record.items()
        if "dice" in k and isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def dice_by_round(results: Path, files: Files = None) -> pd.DataFrame:
    """Dice figures per round (index: round; columns: every numeric key with 'dice' in its name) from the rounds'
    ``pseudo_gain.json`` and from a top-level ``results/<name>/pseudo_gain.json`` listing ``{"rounds": [...]}``."""
    rows: dict[int, dict[str, float]] = {}
    files = normalize_files(files)
    for r, d in round_dirs(results, files):
        gain = d / "pseudo_gain.json"
        if r > 1 and may_read(gain, files):
            rows.setdefault(r, {}).update(_dice_keys(json.loads(gain.read_text())))
    top = Path(results) / "pseudo_gain.json"
    if may_read(top, files):
        record = json.loads(top.read_text())
        for entry in record.get("rounds", []) if isinstance(record, dict) else []:
            if isinstance(entry, dict) and isinstance(entry.get("round"), int):
                rows.setdefault(entry["round"], {}).update(_dice_keys(entry))
    return pd.DataFrame.from_dict(rows, orient="index").sort_index()


def html_page(title: str, body: str) -> str:
    """A small self-contained HTML page (the report shows it in a frame)."""
    style = (
        "body{font-family:sans-serif;font-size:13px;margin:1em}table{border-collapse:collapse}"
        "th,td{padding:2px 8px;border-bottom:1px solid #ddd;text-align:right}th{background:#f3f3f3}"
    )
    return (
        f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body><h3>{html.escape(title)}</h3>\n{body}\n</body></html>\n"
    )
