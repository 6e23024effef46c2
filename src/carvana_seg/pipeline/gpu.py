"""One GPU per job on a multi-GPU box: each GPU stage claims a free device itself.

Snakemake's ``--resources gpu=N`` only *counts* GPU jobs; it never tells a job which device to use. So every GPU
stage calls ``claim_device()`` before torch touches CUDA: it takes an exclusive, non-blocking ``flock`` on
``<lock_dir>/gpu<i>.lock`` for the first free ``i`` and sets ``CUDA_VISIBLE_DEVICES=<i>``. The lock's file
descriptor stays open for the life of the process, so the kernel releases the device when the job ends, fails or
is killed (even by SIGKILL); a stale lock file on disk is harmless, only a held lock counts.

A scheduler that assigns devices itself (SLURM ``--gpus``, Kubernetes, a user's own ``CUDA_VISIBLE_DEVICES``)
is respected: nothing is claimed. Without GPUs (no ``nvidia-smi``) nothing is claimed either and torch runs on CPU.

Environment: ``CARVANA_SEG_GPU_LOCK_DIR`` (lock directory, default ``/tmp/carvana-seg-gpu-locks``),
``CARVANA_SEG_FAKE_GPUS`` (device count, for tests without GPUs), ``CARVANA_SEG_GPU_WAIT`` (seconds to wait for
a free device, default 86400).
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path

from carvana_seg.pipeline.errors import CarvanaSegError

DEFAULT_LOCK_DIR = "/tmp/carvana-seg-gpu-locks"
_HELD: dict[str, int] = {}  # "device" -> index and "fd" -> descriptor of this process's claim (never closed)


def _say(message: str) -> None:
    """One line on stderr (the job's log): the CLI claims a device before logging is configured."""
    print(f"carvana_seg.pipeline.gpu: {message}", file=sys.stderr, flush=True)


def default_lock_dir() -> Path:
    """``$CARVANA_SEG_GPU_LOCK_DIR`` or ``/tmp/carvana-seg-gpu-locks``."""
    return Path(os.environ.get("CARVANA_SEG_GPU_LOCK_DIR") or DEFAULT_LOCK_DIR)


def count_devices() -> int:
    """GPUs in this machine: ``$CARVANA_SEG_FAKE_GPUS``, else the ``GPU <i>:`` lines of ``nvidia-smi -L``, else 0."""
    fake = os.environ.get("CARVANA_SEG_FAKE_GPUS")
    if fake is not None and fake.strip():
        try:
            return max(0, int(fake))
        except ValueError as exc:
            raise CarvanaSegError(f"CARVANA_SEG_FAKE_GPUS must be an integer, got {fake!r}") from exc
    try:
        res = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return 0
    if res.returncode != 0:
        return 0
    return sum(1 for line in res.stdout.splitlines() if line.startswith("GPU "))


def wants_gpu(argv: list[str]) -> bool:
    """Whether a stage's command line may use a GPU: not for ``--help`` nor for ``--device cpu``."""
    if {"-h", "--help", "--device=cpu"} & set(argv):
        return False
    return not any(a == "--device" and b == "cpu" for a, b in zip(argv, argv[1:]))


def _try_lock(path: Path) -> int | None:
    """An open descriptor holding an exclusive flock on ``path``, or None when another process holds it."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise CarvanaSegError(f"{path}: cannot open the GPU lock file ({exc}); set CARVANA_SEG_GPU_LOCK_DIR") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())  # for people inspecting the lock directory
    return fd


def claim_device(
    n_devices: int | None = None,
    lock_dir: Path | None = None,
    timeout: float | None = None,
    poll: float = 1.0,
) -> int | None:
    """Claim a free GPU for this process and expose only it through ``CUDA_VISIBLE_DEVICES``.

    Returns the claimed device index, or None when nothing was claimed (a scheduler already set
    ``CUDA_VISIBLE_DEVICES``, or there is no GPU). Waits while every device is held by another job and raises
    ``CarvanaSegError`` after ``timeout`` seconds. Calling it again in the same process returns the same device.
    """
    if "device" in _HELD:
        return _HELD["device"]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        _say(f"CUDA_VISIBLE_DEVICES={visible!r} set by the environment or scheduler; claiming no device")
        return None
    n = count_devices() if n_devices is None else n_devices
    if n <= 0:
        return None
    lock_dir = Path(lock_dir) if lock_dir is not None else default_lock_dir()
    try:
        lock_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CarvanaSegError(f"{lock_dir}: cannot create the GPU lock directory ({exc})") from exc
    if timeout is None:
        try:
            timeout = float(os.environ.get("CARVANA_SEG_GPU_WAIT", 86400))
        except ValueError as exc:
            raise CarvanaSegError(f"CARVANA_SEG_GPU_WAIT must be a number of seconds: {exc}") from exc
    start, warned = time.monotonic(), False
    while True:
        for i in range(n):
            fd = _try_lock(lock_dir / f"gpu{i}.lock")
            if fd is not None:
                _HELD.update(device=i, fd=fd)
                os.environ["CUDA_VISIBLE_DEVICES"] = str(i)
                _say(f"claimed GPU {i} of {n} (lock {lock_dir / f'gpu{i}.lock'}, held until this process exits)")
                return i
        waited = time.monotonic() - start
        if waited >= timeout:
            raise CarvanaSegError(
                f"all {n} GPUs are claimed by other jobs (locks in {lock_dir}) after waiting {waited:.0f} s; "
                f"is --resources gpu=N larger than the {n} GPUs of this machine?"
            )
        if not warned:
            _say(f"all {n} GPUs are busy (locks in {lock_dir}); waiting up to {timeout:.0f} s for one to be released")
            warned = True
        time.sleep(min(poll, max(timeout - waited, 0.0)))
