"""Shared inference core: device choice, autocast, and flip-TTA probabilities for a batch.

Used by the OOF stage, the streaming test ensemble and ``predict``, so all three compute identical probabilities.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn


def pick_device(spec: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cuda" and not torch.cuda.is_available():
        from carvana_seg.pipeline.errors import ConfigError

        raise ConfigError("config key 'train.device': 'cuda' requested but no CUDA device is available")
    return torch.device(spec)


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
