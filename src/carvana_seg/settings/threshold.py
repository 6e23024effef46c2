"""Settings of the ``threshold`` section (stage ``threshold``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True)
class Threshold:
    """``threshold``: a fixed value, or the coarse grid step of the search on the OOF predictions."""

    SECTION: ClassVar[str] = "threshold"
    value: float | None
    coarse_step: float
