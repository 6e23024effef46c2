"""A train job's resume state where a retried job on another node finds it: a copy at a path or fsspec URL.

On a shared filesystem the state directory (``<rdir>/state/<variant>/fold<k>``, deliberately not an output) survives
a killed job, and the retry resumes from it. Without one (``--shared-fs-usage none``: the Kubernetes profile, a
storage-provider run) that directory stays on the node that ran the job, and a retry elsewhere would start again at
epoch 1: at the competition's scale up to 12 GPU-hours per preemption, per model. With a store (the top-level config
key ``state_store``, or the run's default storage prefix: ``pipeline.state_location``) the job

- pulls the state (``last.pt``, ``train.log``) and its TensorBoard run before it looks for a state to resume, and
- pushes them after every state it saves: each file goes up under a temporary name and is then renamed, so the
  store holds the last complete epoch whatever moment the job is killed at.

The store wins over a local state: it is written after every local save, so it is never older unless an upload
failed (then the local copy is used). Keys mirror the working directory's paths: ``<store>/results/<name>/state/...``.
"""

from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from carvana_seg.pipeline import staging
from carvana_seg.pipeline.errors import ConfigError
from carvana_seg.training.state import STATE_FILE
from carvana_seg.training.state_log import LOG_FILE

log = logging.getLogger(__name__)

STATE_FILES = (STATE_FILE, LOG_FILE)  # last.pt first: a log without its state is never used


def _key(path: str | os.PathLike) -> str:
    """The store key of a job-local path: the working-directory path as given, without a leading slash."""
    return Path(path).as_posix().lstrip("/")


@dataclass
class StateStore:
    """The store at ``url`` (a path or an fsspec URL such as ``s3://bucket/prefix``)."""

    url: str

    def __post_init__(self) -> None:
        import fsspec

        try:
            self.fs, self.root = fsspec.core.url_to_fs(self.url)
        except (ImportError, ValueError) as exc:  # an unknown protocol, or its fsspec package missing (s3fs, gcsfs)
            raise ConfigError(f"state_store '{self.url}': {exc}") from exc
        self.root = self.root.rstrip("/")

    def remote(self, local: str | os.PathLike) -> str:
        return f"{self.root}/{_key(local)}"

    def pull(self, state_dir: Path, tensorboard: str | None) -> int:
        """Copy the stored state (and TensorBoard files) into the job-local paths; return how many files came."""
        got = 0
        if self.fs.isfile(f"{self.remote(state_dir)}/{STATE_FILE}"):
            for name in STATE_FILES:
                got += self._get(f"{self.remote(state_dir)}/{name}", state_dir / name)
        if tensorboard and self.fs.isdir(self.remote(tensorboard)):
            for path in self.fs.find(self.remote(tensorboard)):
                rel = path[len(self.remote(tensorboard)) + 1 :]
                got += self._get(path, Path(tensorboard) / rel)
        if got:
            log.info("pulled %d resume file(s) from the state store %s", got, self.url)
        return got

    def push(self, state_dir: Path, tensorboard: str | None) -> None:
        """Upload the state files, then the TensorBoard files that are new or have grown."""
        for name in STATE_FILES:
            if (state_dir / name).is_file():
                self._put(state_dir / name, f"{self.remote(state_dir)}/{name}")
        if not tensorboard or not Path(tensorboard).is_dir():
            return
        for path in sorted(p for p in Path(tensorboard).rglob("*") if p.is_file()):
            target = f"{self.remote(tensorboard)}/{path.relative_to(tensorboard).as_posix()}"
            if not self.fs.exists(target) or self.fs.size(target) != path.stat().st_size:
                self._put(path, target)

    def _get(self, remote: str, local: Path) -> int:
        staging.write_bytes(local, self.fs.cat_file(remote))
        return 1

    def _put(self, local: Path, remote: str) -> None:
        parent = remote.rsplit("/", 1)[0]
        self.fs.makedirs(parent, exist_ok=True)
        tmp = f"{remote}.partial-{uuid.uuid4().hex[:8]}"
        self.fs.put_file(str(local), tmp)
        self.fs.mv(tmp, remote)


def open_store(url: str | None) -> StateStore | None:
    """The store at ``url``, or None when the job keeps its state only where it runs."""
    return StateStore(url) if url else None
