"""Shared inference core: device choice, autocast, and flip-TTA probabilities for a batch.

Used by the OOF stage, the streaming test ensemble and ``predict``, so all three compute identical probabilities.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn


def pick_device(spec: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cpu`` always the CPU (allowed on purpose, even on a GPU box).

    ``cuda`` without a usable GPU, and ``auto`` where a GPU is expected (``gpu_expected``: the NVIDIA driver lists
    one, the scheduler or ``pipeline.gpu`` assigned one, or ``CARVANA_SEG_REQUIRE_GPU=1``) but torch sees none, stop
    with one line naming the torch wheel's CUDA and the driver (``gpu_mismatch``): a 1024x1024 training job would
    otherwise crawl on the CPU for days."""
    if spec == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda" if spec == "auto" else spec)
    if spec != "auto" or gpu_expected():
        from carvana_seg.pipeline.errors import ConfigError

        raise ConfigError(gpu_mismatch(spec))
    return torch.device("cpu")


def nvidia_smi() -> tuple[list[str], str | None]:
    """(GPU names, driver version) from ``nvidia-smi``; ``([], None)`` where it is absent or fails."""
    try:
        res = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return [], None
    rows = [[f.strip() for f in line.split(",")] for line in res.stdout.splitlines() if line.strip()]
    if res.returncode != 0 or not rows:
        return [], None
    return [r[0] for r in rows], (rows[0][1] if len(rows[0]) > 1 else None)


def gpu_expected() -> bool:
    """Whether this job was given a GPU: ``CARVANA_SEG_REQUIRE_GPU=1``, a ``CUDA_VISIBLE_DEVICES`` naming a device
    (set by SLURM/Kubernetes or by ``pipeline.gpu.claim_device`` for ``--resources gpu=N``), or ``nvidia-smi``
    listing a GPU. A machine without any NVIDIA driver expects none: there ``--resources gpu=N`` only throttles.
    ``CARVANA_SEG_REQUIRE_GPU=0`` expects none whatever was assigned: a CPU run on a GPU allocation on purpose (the
    real-Slurm test's fake GPU)."""
    flag = os.environ.get("CARVANA_SEG_REQUIRE_GPU", "").strip()
    if flag:
        return flag != "0"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    if visible and visible != "-1" and not visible.startswith("-"):
        return True
    return bool(nvidia_smi()[0])


def gpu_mismatch(spec: str) -> str:
    """The one-line reason why torch sees no GPU although one was asked for (``spec``) or expected."""
    names, driver = nvidia_smi()
    wheel = f"torch {torch.__version__} " + (
        f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "is a CPU-only build"
    )
    seen = (
        f"nvidia-smi lists {len(names)} GPU(s) ({names[0]}) with driver {driver}"
        if names
        else "nvidia-smi lists no GPU (no NVIDIA driver?)"
    )
    asked = (
        f"device {spec!r} requested"
        if spec != "auto"
        else "a GPU is expected (--resources gpu=N, CUDA_VISIBLE_DEVICES or nvidia-smi)"
    )
    return (
        f"{asked} but torch sees no CUDA device: {wheel}; {seen}. Install a torch wheel whose CUDA the driver "
        f"supports (docs/gpu.md), or set device: cpu to run on the CPU on purpose"
    )


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX): only then does CPU autocast pay.

    Measured on a 2-core EPYC with AVX512-BF16 (docs/recipe.md): bf16 autocast plus channels-last trains a resnet18
    U-Net at 192x128 2.1x as fast as fp32 (13.3 against 6.4 images/s on one thread). Without the instructions
    oneDNN emulates bf16 and it is slower than fp32."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def mixed_precision(device: torch.device, amp: bool, amp_cpu: bool) -> bool:
    """Whether to autocast on ``device``: config key ``amp`` on CUDA, ``amp_cpu`` on a CPU with native bf16."""
    if device.type == "cuda":
        return amp
    return device.type == "cpu" and amp_cpu and cpu_has_native_bf16()


def autocast(device: torch.device, enabled: bool = True):
    """bf16 autocast on CUDA where supported (fp16 otherwise) and on a CPU (bf16); a no-op when not ``enabled``.

    Callers decide ``enabled`` with ``mixed_precision``, which turns it on for a CPU only where bf16 is native."""
    if not enabled:
        return contextlib.nullcontext()
    if device.type == "cpu":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    if device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def maybe_compile(model: nn.Module, enabled: bool) -> nn.Module:
    """``torch.compile(model)`` when ``enabled`` (config keys train.compile / predict.compile), else ``model``.

    The compiled module shares its parameters with ``model``: state dicts and checkpoints keep coming from
    ``model``. The first batches of each new input shape pay the compilation (tens of seconds); see
    docs/benchmarks.md for when it pays off."""
    return torch.compile(model) if enabled else model


def to_tensor(batch: np.ndarray, device: torch.device, channels_last: bool = False) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) uint8 tensor on ``device`` (normalisation happens in the model)."""
    t = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2)
    t = t.to(device, non_blocking=True)
    return t.contiguous(memory_format=torch.channels_last) if channels_last else t.contiguous()


@torch.inference_mode()
def predict_probs(
    models: Sequence[nn.Module],
    batch: torch.Tensor,
    tta_hflip: bool = True,
    amp: bool | None = None,
) -> torch.Tensor:
    """Mean sigmoid probability (N, H, W) float32 over ``models`` and, with ``tta_hflip``, the mirrored image.

    ``batch`` is (N, 3, H, W) 0..255 on the models' device. With TTA the image and its flip run as one batch of 2N.
    ``amp=None`` (what the stages use): mixed precision on CUDA only, so CPU predictions stay fp32 (bf16 on a CPU
    is for training, ``train.amp_cpu``) and OOF, test and ``predict`` probabilities come from the same arithmetic.
    ``amp=False`` forces fp32 on CUDA too (``benchmarks/compile_speed.py`` compares the two).
    """
    x = torch.cat([batch, batch.flip(-1)]) if tta_hflip else batch
    n = batch.shape[0]
    total = None
    with autocast(batch.device, batch.device.type == "cuda" if amp is None else amp):
        for model in models:
            p = torch.sigmoid(model(x).float())[:, 0]
            p = (p[:n] + p[n:].flip(-1)) * 0.5 if tta_hflip else p
            total = p if total is None else total + p
    return total / len(models)
