"""Write-then-rename helpers: a stage's output is either complete or absent, never half-written.

Snakemake treats an existing output as done, so every stage writes into a sibling temporary path (named after the
process, so two writers never share one) and renames it into place only once it is complete. A failure or a kill
leaves at most a ``*.tmp-<pid>`` sibling, never a file or directory that looks finished; the next write of the same
output removes such siblings whose process is gone (``sweep``). A write that fails on the file system (full disk,
read-only, no permission) removes its temporary and raises one ``WriteError`` naming the final output and the
cause, never the temporary path.
"""

from __future__ import annotations

import errno
import fnmatch
import logging
import os
import re
import shutil
import signal
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from carvana_seg.pipeline.errors import CarvanaSegError, WriteError

log = logging.getLogger(__name__)

# errno values that mean "this file system will not take the write" rather than a bug or a missing input
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG, errno.EIO})
# names of the temporaries of a final name N: N.tmp-<pid>, .N.tmp-<pid>, .N.old-<pid>, .N.partial-<pid>
TEMP_RE = re.compile(r"^(?P<dot>\.?)(?P<name>.+)\.(?P<kind>tmp|old|partial)-(?P<pid>\d+)$")


def public_path(path: str | os.PathLike | None) -> str:
    """``path`` with every temporary component (``x.tmp-123``, ``.x.partial-123``) replaced by its final name, so
    messages name what the user asked for, not where it was being staged."""
    if path is None:
        return "?"
    parts = []
    for part in Path(path).parts:
        m = TEMP_RE.match(part)
        parts.append(m["name"] if m else part)
    return str(Path(*parts)) if parts else str(path)


# Fault injection for tests/pipeline/test_fault_matrix.py: CARVANA_SEG_KILL_AT=<glob>[:<n>] makes
# the process SIGKILL itself at the n-th (default first) finished temporary of an output whose name matches <glob>,
# just before it would be renamed into place: the worst moment for a kill, everything written, nothing final.
KILL_AT_ENV = "CARVANA_SEG_KILL_AT"
_kill_counts: dict[str, int] = {}


def _fault_point(final: Path) -> None:
    spec = os.environ.get(KILL_AT_ENV)
    if not spec:
        return
    pattern, _, nth = spec.partition(":")
    if fnmatch.fnmatch(final.name, pattern):
        _kill_counts[pattern] = _kill_counts.get(pattern, 0) + 1
        if _kill_counts[pattern] == int(nth or 1):
            os.kill(os.getpid(), signal.SIGKILL)


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (another user's counts as alive)."""
    if pid == os.getpid():
        return False  # our own leftover: we are about to write this output afresh
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep(*outputs: str | os.PathLike) -> list[Path]:
    """Remove the temporaries of ``outputs`` left by killed runs (their pid no longer exists); return them.

    Only siblings named after these very outputs are considered, and a live process's temporary is kept, so a
    concurrent job writing another output (or the same one) loses nothing."""
    removed = []
    for out in map(Path, outputs):
        if not out.parent.is_dir():
            continue
        for p in out.parent.iterdir():
            m = TEMP_RE.match(p.name)
            if m and out.name in (m["name"], m["dot"] + m["name"]) and not _alive(int(m["pid"])):
                log.info("removing %s, left by a killed run (pid %s)", p, m["pid"])
                remove(p)
                removed.append(p)
    return removed


def _concerns(exc: OSError, paths: tuple[Path, ...]) -> bool:
    """Whether ``exc`` was raised writing one of ``paths`` (or inside it, or creating a folder above it)."""
    if exc.filename is None:
        return True  # write()/close() on an open file: no name, the file being written
    name = os.path.abspath(exc.filename)
    for p in map(os.path.abspath, paths):
        if name == p or name.startswith(p + os.sep) or p.startswith(name + os.sep):
            return True
    return False


@contextmanager
def write_errors(final: str | os.PathLike, *temporaries: str | os.PathLike) -> Iterator[None]:
    """Turn a file-system refusal while writing ``final`` (or its ``temporaries``) into one ``WriteError`` naming
    ``final``; a ``CarvanaSegError`` that names a temporary is re-raised naming ``final`` instead."""
    final = Path(final)
    try:
        yield
    except OSError as exc:
        if exc.errno in WRITE_ERRNOS and _concerns(exc, (final, *map(Path, temporaries))):
            raise WriteError(f"cannot write {public_path(final)}: {os.strerror(exc.errno)}") from None
        raise
    except CarvanaSegError as exc:
        text = str(exc)
        for tmp in temporaries:
            text = text.replace(str(tmp), str(final))
        if text != str(exc):
            raise type(exc)(text) from None
        raise


def remove(path: Path) -> None:
    """Remove a file, a symlink or a directory tree (symlinks inside are unlinked, never followed)."""
    path = Path(path)
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def discard(path: Path) -> None:
    """Remove a temporary after a failure, never raising: on a read-only file system even removing a file that was
    never created fails (EROFS), and that must not hide the error being reported."""
    try:
        remove(path)
    except OSError as exc:
        if Path(path).exists() or os.path.islink(path):
            log.warning("could not remove %s (%s)", path, exc.strerror)


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
    with scratch_dir(out_dir) as tmp:  # its write_errors also covers the rename below
        yield tmp
        _fault_point(out_dir)
        replace_dir(tmp, out_dir)


@contextmanager
def staged_file(path: Path, sweep_stale: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write; on success it is renamed to ``path``, on error removed.

    ``sweep_stale=False`` skips listing the folder for a killed run's temporaries: for the many small files
    written into a staged directory (which is swept as a whole), where one listing per file would cost O(n^2)."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        with write_errors(path, tmp):
            path.parent.mkdir(parents=True, exist_ok=True)
            if sweep_stale:
                sweep(path)
            yield tmp
            _fault_point(path)
            os.replace(tmp, path)
    except BaseException:
        discard(tmp)
        raise


@contextmanager
def scratch_dir(path: Path) -> Iterator[Path]:
    """A private working directory ``<path>.tmp-<pid>`` (a killed run's is swept by the next), always removed."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        with write_errors(path, tmp):
            sweep(path)
            remove(tmp)
            tmp.mkdir(parents=True)
            yield tmp
    finally:
        discard(tmp)


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with staged_file(path) as tmp:
        tmp.write_text(text)


def write_bytes(path: Path, data: bytes, durable: bool = False, sweep_stale: bool = True) -> None:
    """Write ``data`` to ``path`` atomically; ``durable`` also syncs it to disk before the rename (resume state
    that must survive a power loss); ``sweep_stale`` as in ``staged_file``."""
    with staged_file(path, sweep_stale) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())


def preallocate(path: str | os.PathLike) -> None:
    """Reserve the disk blocks of a file already sized (a fresh ``np.lib.format.open_memmap``): a full disk then
    fails here with ENOSPC instead of killing the process with SIGBUS when a page of the memmap is written."""
    fd = os.open(path, os.O_RDWR)
    try:
        size = os.fstat(fd).st_size
        if size:
            os.posix_fallocate(fd, 0, size)
    finally:
        os.close(fd)


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
        self.tmp = self.path.with_name(f"{self.path.name}.tmp-{os.getpid()}")
        self._zip = None
        with self._guard():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            sweep(self.path)
            self._zip = zipfile.ZipFile(
                self.tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=compresslevel, allowZip64=True
            )

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """On a file-system refusal: remove the temporary, raise a WriteError naming ``path``."""
        try:
            with write_errors(self.path, self.tmp):
                yield
        except WriteError:
            self.abort()
            raise

    def add(self, key: str, array: np.ndarray) -> None:
        with self._guard(), self._zip.open(f"{key}.npy", "w", force_zip64=True) as fh:
            np.lib.format.write_array(fh, np.ascontiguousarray(array), allow_pickle=False)

    def close(self) -> None:
        with self._guard():
            self._zip.close()
            _fault_point(self.path)
            os.replace(self.tmp, self.path)

    def abort(self) -> None:
        try:
            if self._zip is not None:
                self._zip.close()
        except (OSError, ValueError):
            pass  # closing writes the zip directory, which a full disk refuses; the file goes anyway
        discard(self.tmp)

    def __enter__(self) -> NpzWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
