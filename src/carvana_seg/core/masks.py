"""THE binarisation convention of the project: probabilities travel as uint8 (``round(p * 255)``), a pixel is car
iff its stored level is at least ``level(threshold)``. Shared by threshold search, submission, pseudo-labels,
outlier checks and predict, so it lives in a tiny module of its own that rarely changes."""

from __future__ import annotations

import numpy as np


def level(threshold: float) -> int:
    """The uint8 level of a threshold in [0, 1]: ``round(t * 255)``, halves rounded up."""
    return int(np.floor(float(threshold) * 255.0 + 0.5))


def binarize(prob_u8: np.ndarray, threshold: float) -> np.ndarray:
    """THE binarisation convention (threshold search, submission, score): car iff ``prob_u8 >= level(t)``.

    So ``t = 0`` marks every pixel as car and ``t = 1`` only pixels stored as 255.
    """
    return np.asarray(prob_u8) >= level(threshold)
