"""Settings of the ``train`` section (stage ``train``): device, precision, loader, schedule, loss, augmentation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal


@dataclass(frozen=True)
class Loss:
    """``train.loss``: BCE and soft-Dice weights, and the up-weighted edge band of the BCE."""

    SECTION: ClassVar[str] = "train.loss"
    bce_weight: float
    dice_weight: float
    boundary_width: int
    boundary_weight: float


@dataclass(frozen=True)
class Augment:
    """``train.augment``: HSV shifts, shift/scale, horizontal flip (``training/augment.py``)."""

    SECTION: ClassVar[str] = "train.augment"
    hue_shift: float
    sat_shift: float
    val_shift: float
    shift: float
    scale: float
    aspect: float
    hflip: float
    border_mode: Literal["constant", "reflect"]
    probability: float


@dataclass(frozen=True)
class Train:
    """``train``: everything about a training run that is not the variant's own."""

    SECTION: ClassVar[str] = "train"
    device: Literal["auto", "cpu", "cuda"]
    amp: bool
    amp_cpu: bool
    channels_last: bool
    num_workers: int
    max_nonfinite_steps: int
    sync_every_steps: int
    state_every_epochs: int
    state_every_seconds: float | None
    val_max_images: int | None
    early_stopping_patience: int
    scheduler_factor: float
    scheduler_patience: int
    weight_decay: float
    optimizer: Literal["rmsprop", "adamw"]
    schedule: Literal["plateau", "onecycle", "cosine"]
    warmup_share: float
    compile: bool
    tensorboard_images: int
    loss: Loss
    augment: Augment
