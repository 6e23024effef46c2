"""The test ensemble's shard resume: when a shard is finished, which run a shard directory belongs to, and a copy of
the finished shards in the state store, so that a retry on another node resumes at the first missing shard.

``ensemble`` writes its shards into ``test_probs.resume/``, not an output, so that a killed job keeps them and the
rerun computes only the missing ones. ``shards_meta.json`` records the run hash (``ensemble.run_hash``); another
hash discards every shard. Without a shared filesystem that directory stays on the node that ran the job (issue 31).
With a store (the same as training's: ``training.state_store``, ``pipeline.state_location``) the job

- first discards local shards of another run hash (``prepare_dir``), then pulls the stored shards of its hash that
  it lacks and pushes the ones the store lacks; a store holding another hash's shards (retrained models, another
  test set) is emptied first, so a stale shard is never taken for a finished one;
- pushes each shard pair as it completes, the variant masks before the shard (the shard marks the pair complete),
  each under a temporary name renamed into place;
- removes the store's copy once every shard is done and renamed into the ``test_probs/`` output.

At the competition's scale a shard is 1,024 of the 100,064 test photos, so a preemption then costs at most one
shard's work (1 % of the pass) instead of everything computed before it.
"""

from __future__ import annotations

import json
import logging
import uuid
import zipfile
from pathlib import Path

import numpy as np

from carvana_seg.inference import variant_masks
from carvana_seg.pipeline import staging
from carvana_seg.training.state_store import StateStore

log = logging.getLogger(__name__)
META = "shards_meta.json"


def shard_name(k: int) -> str:
    """File name of shard ``k``."""
    return f"shard_{k:05d}.npz"


def shard_complete(path: Path, ids: list[str]) -> bool:
    """Whether ``path`` is a finished shard holding exactly ``ids`` (reads only the zip directory)."""
    try:
        with np.load(path) as npz:
            return sorted(npz.files) == sorted(ids)
    except (OSError, ValueError, zipfile.BadZipFile):
        return False


def prepare_dir(out_dir: Path, digest: str) -> None:
    """Create ``out_dir``; discard temporaries, and every shard when ``shards_meta.json`` has another hash."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for tmp in out_dir.glob("*.tmp*"):
        tmp.unlink()
    meta = out_dir / META
    old = json.loads(meta.read_text()).get("hash") if meta.is_file() else None
    if old != digest:
        for p in sorted(out_dir.glob("shard_*.npz")) + sorted(out_dir.glob("variants_*.npz")):
            log.info("discarding stale %s (hash %s, now %s)", p, old, digest)
            p.unlink()
        meta.write_text(json.dumps({"hash": digest}) + "\n")


def _is_shard_file(name: str) -> bool:
    return name.endswith(".npz") and name.startswith(("shard_", "variants_"))


def pull(store: StateStore, work: Path, digest: str) -> int:
    """Sync ``work`` (already through ``prepare_dir``: every local shard is of run ``digest``) with the store: the
    store's shards of ``digest`` that ``work`` lacks come down; local shards the store lacks go up; a store of
    another hash is emptied and gets this run's ``shards_meta.json``. Returns how many files came down."""
    remote = store.remote(work)
    stored = None
    if store.fs.isfile(f"{remote}/{META}"):
        stored = json.loads(store.fs.cat_file(f"{remote}/{META}")).get("hash")
    names = sorted(p.rsplit("/", 1)[-1] for p in store.fs.ls(remote, detail=False)) if stored is not None else []
    if stored != digest:
        stale = [n for n in names if _is_shard_file(n) or ".partial-" in n]
        for name in stale:
            store.fs.rm_file(f"{remote}/{name}")
        if stale:
            log.info("state store: discarded %d shard file(s) of hash %s (now %s)", len(stale), stored, digest)
        push(store, work, [META])
        names = []
    got = 0
    for name in filter(_is_shard_file, names):
        if not (work / name).is_file():  # a local file of the same hash is the same shard
            with staging.staged_file(work / name) as tmp:  # streamed: a competition shard is tens of MB
                store.fs.get_file(f"{remote}/{name}", str(tmp))
            got += 1
    local = sorted(p.name for p in work.glob("*.npz") if _is_shard_file(p.name) and p.name not in names)
    ordered = [n for n in local if n.startswith("variants_")] + [n for n in local if n.startswith("shard_")]
    push(store, work, ordered)  # the variant masks before the shards, which mark each pair complete
    if got:
        log.info("pulled %d shard file(s) from the state store %s", got, store.url)
    return got


def clear(store: StateStore, work: Path) -> None:
    """Remove the store's copy once the shards are complete and renamed into the stage's output."""
    remote = store.remote(work)
    if store.fs.exists(remote):
        store.fs.rm(remote, recursive=True)
        log.info("state store: removed the finished shards' copy %s", remote)


def push(store: StateStore, work: Path, names: list[str]) -> None:
    """Upload ``names`` from ``work`` in order, each under a temporary name renamed into place."""
    remote = store.remote(work)
    store.fs.makedirs(remote, exist_ok=True)
    for name in names:
        tmp = f"{remote}/{name}.partial-{uuid.uuid4().hex[:8]}"
        store.fs.put_file(str(work / name), tmp)
        store.fs.mv(tmp, f"{remote}/{name}")


def push_shard(store: StateStore, work: Path, k: int) -> None:
    """Upload shard ``k``'s pair: its variant masks first, then the shard, which marks the pair complete."""
    push(store, work, [variant_masks.file_name(k), shard_name(k)])
