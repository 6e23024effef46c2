"""Settings of the ``outliers`` section (stage ``outliers``): the outlier-car check and its fixes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal


@dataclass(frozen=True)
class MinSpread:
    """``outliers.min_spread``: floors of the robust spreads, per feature."""

    SECTION: ClassVar[str] = "outliers.min_spread"
    area: float
    components: float
    holes: float
    uncertain: float
    disagreement: float


@dataclass(frozen=True)
class Outliers:
    """``outliers``: z-score limits, feature settings, what a fix does, and the contact sheets."""

    SECTION: ClassVar[str] = "outliers"
    action: Literal["fix", "flag"]
    z_max: float
    z_max_soft: float
    uncertain_lo: float
    uncertain_hi: float
    scale: int
    hole_radius: float
    min_spread: MinSpread
    border_min_px: int
    border_rate_min: float
    repredict: Literal["zoom", "none"]
    zoom_margin: float
    zoom_min_share: float
    fix_variant: bool
    sheets_max: int
    tile_width: int
