"""Settings of the ``folds`` section (stages ``folds``, ``threshold``, ``ensemble``): the grouped K-fold split."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True)
class Folds:
    """``folds``: how many folds, their seed and stratification, and which of them are trained."""

    SECTION: ClassVar[str] = "folds"
    k: int
    seed: int
    stratify_by_area: bool
    use: tuple[int, ...] | None
