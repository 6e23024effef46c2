"""Settings of the ``resize`` section (stage ``resize``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True)
class Resize:
    """``resize``: processes that build the resize cache."""

    SECTION: ClassVar[str] = "resize"
    workers: int
