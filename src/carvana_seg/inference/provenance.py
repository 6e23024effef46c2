"""What a run's models were trained on, for whoever serves them: the data source (synthetic, local, kaggle), how
many training cars and photos, their photo size, and the networks' input sizes.

A newcomer who drops a real photo on the demo's models gets the studio wall back as "car": those models only ever saw
synthetic cars. ``serve`` (``/v1/model``, the page header, its start-up line) and ``bundle`` say so from this record.

Read from files every finished run already has, so that no stage reruns for it: ``results/<name>/data_validation.json``
(cars, photos, sizes: the validate stage's summary) and ``data/<name>/fetch.json`` (the ``data`` section the fetch
stage ran with: its ``source``), found beside the run's working directory. A results tree copied without its
``data/`` says ``source: unknown``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)
SOURCES = ("synthetic", "local", "kaggle")
SYNTHETIC_NOTICE = (
    "These models were trained only on synthetic cars: on a real photo they will get the studio wall and floor "
    "wrong. For real photos, train on real data (config/sample.yaml, or the competition config) and serve that run."
)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _fetch_manifest(results: Path, raw: str | None) -> dict | None:
    """``data/<name>/fetch.json`` of the run: beside its raw directory as recorded (relative to the working
    directory the run had, tried from here and from the results tree's grandparent), else by the run's name."""
    candidates = []
    if raw:
        candidates.append(results.parent.parent / Path(raw).parent / "fetch.json")  # never the cwd: another run's
    candidates.append(results.parent.parent / "data" / results.name / "fetch.json")
    return next((m for m in map(_read_json, candidates) if m is not None), None)


def _common_size(counts: dict | None) -> str | None:
    """The most common ``WxH`` of a validate summary's size counts (``{"1918x1280": 5088}``)."""
    if not counts:
        return None
    return max(counts.items(), key=lambda kv: kv[1])[0]


def trained_on(results: str | Path, network_sizes: list[tuple[int, int]] | None = None) -> dict:
    """The provenance record of ``results`` (see the module docstring); ``notice`` is set for synthetic data."""
    results = Path(results)
    summary = _read_json(results / "data_validation.json") or {}
    fetch = _fetch_manifest(results, summary.get("raw")) or {}
    source = (fetch.get("data") or {}).get("source")
    source = source if source in SOURCES else "unknown"
    record = {
        "source": source,
        "train_cars": summary.get("n_cars_train"),
        "train_photos": summary.get("n_train"),
        "photo_size": _common_size((summary.get("sizes") or {}).get("train")),
        "network_sizes": [f"{w}x{h}" for w, h in sorted(set(network_sizes or []))],
        "notice": SYNTHETIC_NOTICE if source == "synthetic" else None,
    }
    if not summary:
        log.warning("%s: no data_validation.json: what the models were trained on is unknown", results)
    return record


def describe(record: dict, oof_dice: float | None) -> str:
    """One line for a log or a page header: ``synthetic data: 3 cars, 48 photos of 480x320, OOF Dice 0.9812``."""
    parts = [f"{record['source']} data"]
    if record.get("train_cars") is not None:
        parts.append(f"{record['train_cars']} cars, {record['train_photos']} photos")
        if record.get("photo_size"):
            parts[-1] += f" of {record['photo_size']}"
    if oof_dice is not None:
        parts.append(f"OOF Dice {oof_dice:.4f}")
    return ": ".join(parts[:1]) + (": " + ", ".join(parts[1:]) if parts[1:] else "")
