"""Settings of the ``predict`` section (stages ``oof``, ``ensemble``, ``outliers``): how models predict."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal


@dataclass(frozen=True)
class EdgeRefine:
    """``predict.edge_refine``: the full-resolution guided filter of the probabilities (``inference/refine.py``)."""

    SECTION: ClassVar[str] = "predict.edge_refine"
    method: Literal["none", "guided"]
    radius: int
    eps: float
    scale: int
    band: float


@dataclass(frozen=True)
class Predict:
    """``predict``: flip-TTA, batch and worker counts, shard size, edge refinement, torch.compile."""

    SECTION: ClassVar[str] = "predict"
    tta_hflip: bool
    batch_size: int
    workers: int
    shard_size: int
    edge_refine: EdgeRefine
    compile: bool
