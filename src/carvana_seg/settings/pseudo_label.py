"""Settings of the ``pseudo_label`` section (stage ``pseudo``; the rounds themselves are planned by the workflow)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal


@dataclass(frozen=True)
class PseudoLabel:
    """``pseudo_label``: rounds, which variants retrain, how many test images are selected and how."""

    SECTION: ClassVar[str] = "pseudo_label"
    enabled: bool
    rounds: int
    variants: tuple[str, ...] | None
    select_share: float
    select_count: int | None
    confidence_lo: float
    confidence_hi: float
    init: Literal["round1", "previous", "scratch"]
    epochs: int | None
    lr: float | None
