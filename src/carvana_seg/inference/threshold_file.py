"""The threshold stage's output format, ``threshold.json``, and its one reader.

A small module of its own, like ``inference.shards``: the stages that read the threshold (outliers, pseudo,
submission, report, predict and serve) import only this, so editing the threshold search reruns none of them.
"""

from __future__ import annotations

import json
from pathlib import Path

from carvana_seg.pipeline.errors import DataError

FILE = "threshold.json"


def read_threshold(path: str | Path) -> dict:
    """The one reader of a ``threshold.json`` (written by ``threshold.run``): its record, with ``threshold`` a float
    in [0, 1]; DataError naming the file when it is missing or is no threshold record."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
        record["threshold"] = float(record["threshold"])
    except FileNotFoundError as exc:
        raise DataError(f"{path}: missing (no threshold file)") from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f'{path}: not a threshold file (expected {{"threshold": <float>}})') from exc
    if not 0.0 <= record["threshold"] <= 1.0:
        raise DataError(f"{path}: threshold {record['threshold']} is outside [0, 1]")
    return record
