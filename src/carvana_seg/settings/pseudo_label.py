"""Settings of the ``pseudo_label`` section (stage ``pseudo``; the rounds themselves are planned by the workflow)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Literal

from carvana_seg.pipeline.errors import ConfigError
from carvana_seg.settings.build import build


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


@dataclass(frozen=True)
class PseudoSelection:
    """The part of ``pseudo_label`` the ``pseudo`` stage reads: which test images become the next round's training
    data. The stage's slice carries only these keys (``pipeline.rounds.pseudo_slice``), so changing ``rounds`` or
    ``epochs`` never reruns the selection, and its record (``round<r>/pseudo_labels.json``) holds exactly these
    values: none of the section's other keys, which the slice does not carry and so would read as defaults."""

    SECTION: ClassVar[str] = "pseudo_label"
    SUBSET: ClassVar[bool] = True  # a subset of its section's keys (tests/settings/test_settings.py)
    select_share: float
    select_count: int | None
    confidence_lo: float
    confidence_hi: float

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        """The section keys this object holds, in order."""
        return tuple(f.name for f in fields(cls))

    @classmethod
    def of(cls, section: Mapping[str, Any]) -> PseudoSelection:
        """From a validated ``pseudo_label`` section or the stage's slice of it (the other keys are ignored)."""
        missing = [k for k in cls.keys() if k not in section]
        if missing:
            raise ConfigError(f"config key 'pseudo_label': missing {missing} (validate the slice first)")
        return build(cls, {k: section[k] for k in cls.keys()})
