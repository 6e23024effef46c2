"""Model cost per image: FLOPs from ``torch.utils.flop_counter.FlopCounterMode`` and the parameter count.

The model is built on the ``meta`` device: no weights are allocated and nothing is computed, so counting a
U-Net at 1280x1280 takes a second on any machine. FLOPs are counted as the flop counter does (a multiply-add is
2 FLOPs): forward for prediction, forward + backward (about 3x) for a training step.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

BYTES_PER_PARAM = 4  # float32 checkpoints


@dataclass(frozen=True)
class ModelCost:
    params: int
    forward: float  # FLOPs per image
    train: float  # forward + backward FLOPs per image (the loss's own FLOPs left out)


@cache
def _count(arch: str, encoder: str, width: int, height: int) -> ModelCost:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from carvana_seg.models.model import build_model

    with torch.device("meta"):
        model = build_model(arch, encoder, None, "plan")
        x = torch.zeros(2, 3, height, width)  # 2: batch norm in training mode needs more than one value
        with FlopCounterMode(display=False) as fwd:
            model(x)
        with FlopCounterMode(display=False) as both:
            model(x).sum().backward()
    return ModelCost(sum(p.numel() for p in model.parameters()), fwd.get_total_flops() / 2, both.get_total_flops() / 2)


def model_cost(variant: dict) -> ModelCost:
    """FLOPs per image at the variant's own size, and its parameters (a ``variants`` entry of a resolved config)."""
    return _count(variant["arch"], variant["encoder"], int(variant["width"]), int(variant["height"]))
