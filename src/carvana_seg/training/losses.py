"""Training loss: BCE with the car's edge weighted up, plus soft Dice.

Carvana is scored by Dice on masks where almost every error sits in a thin band along the car's outline, so the
BCE term gives the pixels within ``boundary_width`` of the edge ``boundary_weight`` times the weight of the others.
The band is computed from the (augmented) target inside the loss, in torch, as dilation minus erosion of the
binarised target (max-pooling), so it costs nothing extra on the GPU and always matches the augmented mask.
Targets are soft coverage 0..1 (the resize cache keeps sub-pixel edge information); BCE and soft Dice both accept
soft targets.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from carvana_seg.settings.train import Loss


def boundary_band(target: torch.Tensor, width: int) -> torch.Tensor:
    """Bool (N, 1, H, W): pixels within ``width`` px (Chebyshev distance) of the edge of ``target >= 0.5``.

    Dilation minus erosion of the binarised target with a (2w+1)^2 square. The image border is not an edge:
    max-pooling pads with -inf, so erosion never eats into a mask that touches the border.
    """
    if width <= 0:
        return torch.zeros_like(target, dtype=torch.bool)
    binary = (target >= 0.5).to(torch.float32)
    k = 2 * width + 1
    dilated = F.max_pool2d(binary, k, stride=1, padding=width)
    eroded = -F.max_pool2d(-binary, k, stride=1, padding=width)
    return (dilated - eroded) > 0


class BceDiceLoss(nn.Module):
    """``bce_weight * boundary-weighted BCE + dice_weight * soft Dice`` on logits (N, 1, H, W), targets 0..1.

    The weighted BCE is normalised by the sum of the weights, so its scale does not depend on how much of the
    image is edge.
    """

    def __init__(
        self,
        bce_weight: float = 1.0,
        dice_weight: float = 1.0,
        boundary_width: int = 3,
        boundary_weight: float = 3.0,
    ) -> None:
        super().__init__()
        import segmentation_models_pytorch as smp

        self.bce_weight = float(bce_weight)
        self.dice_weight = float(dice_weight)
        self.boundary_width = int(boundary_width)
        self.boundary_weight = float(boundary_weight)
        self.dice = smp.losses.DiceLoss(mode="binary", from_logits=True)

    @classmethod
    def from_config(cls, loss: Loss) -> BceDiceLoss:
        """Build from the ``train.loss`` settings (every weight given: the schema holds the defaults)."""
        return cls(
            bce_weight=loss.bce_weight,
            dice_weight=loss.dice_weight,
            boundary_width=loss.boundary_width,
            boundary_weight=loss.boundary_weight,
        )

    def pixel_weights(self, target: torch.Tensor) -> torch.Tensor:
        """BCE weight per pixel: ``boundary_weight`` in the edge band, 1 elsewhere."""
        band = boundary_band(target, self.boundary_width)
        return 1.0 + (self.boundary_weight - 1.0) * band.to(target.dtype)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        target = target.float()
        if logits.shape != target.shape:
            raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} differ in shape")
        loss = logits.new_zeros(())
        if self.bce_weight > 0:
            w = self.pixel_weights(target)
            bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
            loss = loss + self.bce_weight * (bce * w).sum() / w.sum()
        if self.dice_weight > 0:
            loss = loss + self.dice_weight * self.dice(logits, target)
        return loss
