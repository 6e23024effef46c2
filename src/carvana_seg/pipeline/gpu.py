"""One GPU per job on a multi-GPU box: each GPU stage claims a free device itself.

Snakemake's ``--resources gpu=N`` only *counts* GPU jobs; it never tells a job which device to use. So every GPU
stage calls ``claim_device()`` before torch touches CUDA: it takes an exclusive, non-blocking ``flock`` on
``<lock_dir>/gpu<id>.lock`` for the first free device ``id`` and sets ``CUDA_VISIBLE_DEVICES=<id>``. The lock's
file descriptor stays open for the life of the process, so the kernel releases the device when the job ends, fails
or is killed (even by SIGKILL); a stale lock file on disk is harmless, only a held lock counts.

The devices to choose from are every GPU ``nvidia-smi -L`` lists, or, when ``CUDA_VISIBLE_DEVICES`` is inherited
(a user's ``CUDA_VISIBLE_DEVICES=4,5,6,7 snakemake --resources gpu=4``, a multi-GPU SLURM allocation), the devices
of that visible set: each job takes one of them. ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` is set so that CUDA numbers the
devices as ``nvidia-smi`` does and a lock names the same physical GPU for every job. A visible set of one device (a
scheduler that gave the job its GPU: SLURM ``--gpus=1``, Kubernetes) or of none (``""``, ``-1``) is respected as it
is: nothing is claimed. Without GPUs (no ``nvidia-smi``) nothing is claimed either and torch runs on CPU.

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


def visible_set() -> list[str] | None:
    """The inherited ``CUDA_VISIBLE_DEVICES`` entries (indices or ``GPU-<uuid>``), or None when it is unset. CUDA
    ignores the entries from the first invalid one (``-1``) on, so they are cut there too."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return None
    out = []
    for entry in (e.strip() for e in visible.split(",")):
        if not entry or entry.startswith("-"):
            break
        out.append(entry)
    return out


def candidates(n_devices: int | None = None) -> tuple[list[str], str]:
    """(device ids this process may claim, where they come from): the inherited visible set, else ``0..n-1``."""
    n = count_devices() if n_devices is None else n_devices
    if n <= 0:
        return [], "no GPU"
    visible = visible_set()
    if visible is None:
        return [str(i) for i in range(n)], f"{n} GPUs"
    return visible, f"CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']!r}"


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

    Returns the claimed device index (its position in the visible set for a ``GPU-<uuid>`` entry), or None when
    nothing was claimed (a scheduler already gave the job one device, or there is no GPU). Waits while every
    device is held by another job and raises ``CarvanaSegError`` after ``timeout`` seconds. Calling it again in the
    same process returns the same device.
    """
    if "device" in _HELD:
        return _HELD["device"]
    devices, source = candidates(n_devices)
    if not devices:
        return None
    os.environ["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"  # CUDA's numbering = nvidia-smi's = the lock files'
    if len(devices) == 1 and source.startswith("CUDA_VISIBLE_DEVICES"):
        _say(f"{source} set by the environment or scheduler: one device, claiming nothing")
        return None
    n = len(devices)
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
        for pos, dev in enumerate(devices):
            fd = _try_lock(lock_dir / f"gpu{dev}.lock")
            if fd is not None:
                index = int(dev) if dev.isdigit() else pos
                _HELD.update(device=index, fd=fd)
                os.environ["CUDA_VISIBLE_DEVICES"] = dev
                _say(
                    f"claimed GPU {dev} of {source} (lock {lock_dir / f'gpu{dev}.lock'}, held until this process exits)"
                )
                return index
        waited = time.monotonic() - start
        if waited >= timeout:
            raise CarvanaSegError(
                f"all {n} GPUs are claimed by other jobs ({source}; locks in {lock_dir}) after waiting {waited:.0f} s; "
                f"is --resources gpu=N larger than the {n} GPUs this job may use?"
            )
        if not warned:
            _say(f"all {n} GPUs are busy (locks in {lock_dir}); waiting up to {timeout:.0f} s for one to be released")
            warned = True
        time.sleep(min(poll, max(timeout - waited, 0.0)))
