"""Settings of one ``variants`` entry (stage ``train`` as ``variant``; ``threshold``, ``ensemble``, ``outliers``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

Arch = Literal["Unet", "UnetPlusPlus", "FPN", "Linknet", "PSPNet", "DeepLabV3Plus", "MAnet", "PAN"]


@dataclass(frozen=True)
class Variant:
    """One model of the ensemble: architecture, encoder, network size, training length and ensemble weight."""

    SECTION: ClassVar[str] = "variants"
    name: str
    arch: Arch
    encoder: str
    encoder_weights: str | None
    width: int
    height: int
    batch_size: int
    epochs: int
    lr: float
    weight: float
