"""Write-then-rename helpers: a stage's output is either complete or absent, never half-written.

Snakemake treats an existing output as done, so every stage writes into a sibling temporary path (named after the
process, so two writers never share one) and renames it into place only once it is complete. A failure or a kill
leaves at most a ``*.tmp-<pid>`` sibling, never a file or directory that looks finished.
"""

from __future__ import annotations

import os
import shutil
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np


def remove(path: Path) -> None:
    """Remove a file, a symlink or a directory tree (symlinks inside are unlinked, never followed)."""
    path = Path(path)
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def replace_dir(staging: Path, out: Path) -> None:
    """Rename the finished ``staging`` directory to ``out``, replacing whatever ``out`` was (file, link or tree).

    The old ``out`` is renamed aside before the new one goes in and removed afterwards, so ``out`` is at every
    moment either the old complete tree or the new complete one."""
    staging, out = Path(staging), Path(out)
    if out.exists() or out.is_symlink():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        os.replace(staging, out)
        remove(old)
    else:
        os.replace(staging, out)


@contextmanager
def staged_dir(out_dir: Path) -> Iterator[Path]:
    """Yield an empty staging directory beside ``out_dir``; on success it becomes ``out_dir``, on error it goes."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f"{out_dir.name}.tmp-{os.getpid()}")
    remove(tmp)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        replace_dir(tmp, out_dir)
    except BaseException:
        remove(tmp)
        raise


@contextmanager
def staged_file(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write; on success it is renamed to ``path``, on error removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with staged_file(path) as tmp:
        tmp.write_text(text)


def write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with staged_file(path) as tmp:
        tmp.write_bytes(data)


# zlib level of every npz the pipeline streams (OOF maps, test-probability shards, per-variant masks), chosen by
# benchmarks/npz_compression.py (docs/benchmarks.md): against numpy's default 6, level 3 writes 2x faster
# (5.3 vs 10.5 ms per 1918x1280 map shaped like a trained model's, 12 vs 27 ms on the demo's noisier maps) for
# 1.2-1.6x the bytes (33 vs 21 kB per map; ~3.3 GB for the 100,064 test images). The writer shares the
# ensemble's process with decoding and the model feed, so CPU time counts more than disk space here.
NPZ_COMPRESSLEVEL = 3


class NpzWriter:
    """Stream arrays one at a time into an npz that ``np.load`` reads like ``np.savez_compressed``'s.

    Entries go to ``<name>.tmp-<pid>``; ``close()`` (or leaving the ``with`` block normally) renames it to
    ``path``, ``abort()`` (or an exception) removes it. Nothing holds more than the array being written."""

    def __init__(self, path: str | os.PathLike, compresslevel: int = NPZ_COMPRESSLEVEL) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f"{self.path.name}.tmp-{os.getpid()}")
        self._zip = zipfile.ZipFile(self.tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=compresslevel,
                                    allowZip64=True)

    def add(self, key: str, array: np.ndarray) -> None:
        with self._zip.open(f"{key}.npy", "w", force_zip64=True) as fh:
            np.lib.format.write_array(fh, np.ascontiguousarray(array), allow_pickle=False)

    def close(self) -> None:
        self._zip.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self._zip.close()
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> "NpzWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
