"""Settings of the ``data`` section (stages ``fetch`` and ``validate``): where ``data/<name>/raw`` comes from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal


@dataclass(frozen=True)
class Synthetic:
    """``data.synthetic``: size and seed of the embedded synthetic set."""

    SECTION: ClassVar[str] = "data.synthetic"
    n_train_cars: int
    n_test_cars: int
    n_outlier_cars: int
    width: int
    height: int
    jpeg_quality: int
    seed: int


@dataclass(frozen=True)
class Data:
    """``data``: the source and how strictly its copy is checked."""

    SECTION: ClassVar[str] = "data"
    source: Literal["kaggle", "local", "synthetic"]
    path: str | None
    hq: bool
    competition: str
    include_test: bool
    partial: bool
    strict: bool
    synthetic: Synthetic
