"""The resume state of one ``train`` job: what a saved state must match to be resumed, and saving and loading it.

After every epoch the whole state (weights, optimizer, scheduler, grad scaler, best weights, early-stopping counter,
metrics so far, RNG states, config) goes atomically to ``<state-dir>/last.pt``, as plain data only (loadable with
``weights_only=True``). A later run resumes from it when its config, fold split, caches, extra layouts, init
weights and training code (``codedeps`` fingerprint: comments and docstrings do not count) equal the current ones.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from carvana_seg.core import layout
from carvana_seg.models import model as modelmod
from carvana_seg.pipeline import staging

log = logging.getLogger(__name__)

STATE_FILE = "last.pt"
STATE_FORMAT = 2  # 2: loadable with weights_only=True


@dataclass
class Progress:
    """Where a training run stands after its last finished epoch: the resume state apart from the live objects."""

    epoch: int = 0
    best_dice: float = -1.0
    best_epoch: int = 0
    best_model: dict | None = None
    bad_epochs: int = 0
    rows: list[dict] = field(default_factory=list)
    nonfinite_total: int = 0

    @classmethod
    def from_state(cls, state: dict) -> Progress:
        return cls(**{name: state[name] for name in cls.__dataclass_fields__})

    def as_dict(self) -> dict:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


def identity(cfg: dict, fold: int, train_ids: list[str], val_ids: list[str], extra: dict | None = None) -> dict:
    """What a saved state must match to be resumed: the validated slice (minus the ensemble weight) and the split;
    with ``extra`` (extra layouts' ids and mask digests, init weights' digest) those too."""
    c = copy.deepcopy(cfg)
    del c["variant"]["weight"]  # ensemble weight does not change training
    # nor how it runs, what it shows or how often it is saved: a saved state still resumes
    for key in ("compile", "tensorboard_images", "state_every_epochs", "state_every_seconds"):
        del c["train"][key]
    digest = hashlib.sha256("\n".join(train_ids + ["|"] + val_ids).encode()).hexdigest()[:16]
    out = {"cfg": c, "fold": fold, "split": digest}
    if extra:
        out["extra"] = extra
    return out


def file_digest(path: str | os.PathLike) -> str:
    """The first 16 hex digits of the file's SHA-256."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()[:16]


def extra_identity(extra_layouts: list[str], init_from: str | None) -> dict:
    """Extra layouts (ids, and the digest of their train_masks.csv: every mask as RLE) and the init checkpoint's."""
    out: dict = {}
    if extra_layouts:
        out["layouts"] = [
            {
                "ids": hashlib.sha256("\n".join(layout.list_ids(Path(d) / layout.TRAIN_DIR)).encode()).hexdigest()[:16],
                "masks": file_digest(Path(d) / layout.TRAIN_MASKS_CSV),
            }
            for d in extra_layouts
        ]
    if init_from:
        out["init"] = file_digest(init_from)
    return out


def sampled_digest(path: str | os.PathLike, samples: int = 32, chunk: int = 1 << 16) -> str:
    """The SHA-256 (16 hex digits) of a file's size and ``samples`` evenly spaced ``chunk``-byte pieces: a rebuilt
    cache at another size, method or from other photos differs in nearly every piece, and reading 2 MB of a 16 GB
    cache is instant. Content, not mtime: a storage provider's copy of the same cache (S3 sets no mtime) matches."""
    size = os.path.getsize(path)
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as fh:
        for i in range(samples):
            fh.seek(max(0, (size - chunk) * i // max(samples - 1, 1)))
            h.update(fh.read(chunk))
    return h.hexdigest()[:16]


def input_identity(cache_dir: str | os.PathLike) -> dict:
    """The main cache's content (``sampled_digest``: a rebuilt cache restarts training, a copy of it does not) and
    the training code's fingerprint (``codedeps``, the ``code`` param of the rule), so a rerun that Snakemake
    triggers by a code or input change retrains instead of returning a stale state; comments and docstrings do not
    count."""
    from carvana_seg.pipeline import codedeps

    files = {n: sampled_digest(Path(cache_dir) / n) for n in ("images.npy", "masks.npy", "ids.txt")}
    return {"cache": files, "code": codedeps.stage_fingerprint("train")}


def _diff(a: object, b: object, prefix: str = "") -> list[str]:
    """Dotted keys where two nested dicts differ (for the 'starting from zero because ...' message)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in _diff(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [prefix.rstrip(".") or "<value>"]


def rng_state() -> dict:
    """Every RNG's state as tensors and plain data (numpy's key array as a tensor), loadable with weights_only."""
    name, key, pos, has_gauss, gauss = np.random.get_state()
    numpy_state = (name, torch.from_numpy(key.astype(np.int64)), int(pos), int(has_gauss), float(gauss))
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    name, key, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, key.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_state(obj: dict, path: Path) -> None:
    """Write the resume state durably through ``staging``: a full disk is one WriteError naming ``path``, and
    leaves no temporary (torch writing to a file would raise its own RuntimeError mid-file instead)."""
    staging.write_bytes(path, modelmod.to_bytes(obj), durable=True)


def load_state(state_dir: Path, identity: dict) -> dict | None:
    """The saved state if it belongs to this config and split, else None (with the reason logged)."""
    path = state_dir / STATE_FILE
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # plain data only, see rng_state
    except Exception as exc:  # a state we cannot read is no reason to fail: retrain
        log.warning("ignoring unreadable state %s (%s); starting from epoch 1", path, exc)
        return None
    if state.get("format") != STATE_FORMAT or state.get("identity") != identity:
        old = state.get("identity", {})
        why = [f"cfg.{k}" for k in _diff(old.get("cfg"), identity["cfg"])]
        why += [k for k in ("fold", "split", "extra", "cache", "code") if old.get(k) != identity.get(k)]
        why += ["state format"] if state.get("format") != STATE_FORMAT else []
        log.info("state in %s is from a different setup (changed: %s); starting from epoch 1", path, ", ".join(why))
        return None
    return state
