"""The ensemble's output shards: where a manifest says they are, robust to a results tree moved elsewhere.

Read by the submission, the outlier check and pseudo-labelling, so it is a small module of its own."""

from __future__ import annotations

import json
import os
from pathlib import Path

from carvana_seg.pipeline.errors import DataError


def shard_paths(manifest: str | os.PathLike) -> list[Path]:
    """The shard files listed by an ensemble manifest, in order: ``shard_dir`` as the ensemble was given it (the
    working directory), else ``shard_dir_rel`` beside the manifest (a results tree moved or mounted elsewhere)."""
    manifest = Path(manifest)
    record = json.loads(manifest.read_text())
    shard_dir = Path(record["shard_dir"])
    if not shard_dir.is_dir():
        shard_dir = manifest.parent / record.get("shard_dir_rel", record["shard_dir"])
    paths = [shard_dir / s["file"] for s in record["shards"]]
    for p in paths:
        if not p.is_file():
            raise DataError(f"{manifest}: shard {p} is missing; rerun the ensemble stage")
    return paths
