"""The model half of every ensemble prediction: one batch of photos, already at each variant's size, through every
variant's fold models with flip-TTA, on the runtime path of the test ensemble.

The test ensemble (``stream.iter_probs``), ``predict`` and the server (``inference.service``) all call
``variant_probs``: (N, H, W, 3) uint8 stacks go to the device as they are and are permuted to NCHW there, i.e. a
channels-last view, the memory layout the ensemble has always fed the models, so every consumer runs the same
arithmetic and gets the same probabilities bit for bit. It lives in a module of its own (no ``ensemble`` import)
so that ``service`` can import ``ensemble`` and ``ensemble`` this without a cycle.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch

from carvana_seg.models import runtime


class HasModels(Protocol):
    models: list[torch.nn.Module]


def device_probs(
    variants: Sequence[HasModels],
    slot: Sequence[int],
    stacks: Sequence[torch.Tensor],
    device: torch.device,
    tta_hflip: bool,
) -> list[torch.Tensor]:
    """Each variant's mean probability (N, h, w) float32 over its folds (and flips), still on ``device``.

    ``stacks[k]`` is an (N, H, W, 3) uint8 tensor at one network size; variant ``i`` reads ``stacks[slot[i]]``.
    The test ensemble keeps these on a GPU for its device-side upsampling and mean (``maps.device_maps``)."""
    cuda = device.type == "cuda"
    xs = [s.to(device, non_blocking=cuda).permute(0, 3, 1, 2) for s in stacks]
    return [runtime.predict_probs(v.models, xs[k], tta_hflip).float() for v, k in zip(variants, slot)]


def variant_probs(
    variants: Sequence[HasModels],
    slot: Sequence[int],
    stacks: Sequence[torch.Tensor],
    device: torch.device,
    tta_hflip: bool,
) -> list[np.ndarray]:
    """``device_probs`` as numpy arrays on the CPU (what ``finalize`` takes)."""
    return [p.cpu().numpy() for p in device_probs(variants, slot, stacks, device, tta_hflip)]
