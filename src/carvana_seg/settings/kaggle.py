"""Settings of the ``kaggle`` section (stage ``submit``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True)
class Kaggle:
    """``kaggle``: the prefix of the submission message."""

    SECTION: ClassVar[str] = "kaggle"
    message: str
