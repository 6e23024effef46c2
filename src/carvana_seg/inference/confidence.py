"""How sure the ensemble is of one photo's mask, from its own probability map: a predicted Dice.

``predicted_dice`` is the Dice between the binarised mask ``M`` and the probability map ``p`` taken as the chance
that each pixel is car: ``2 sum(M p) / (sum(M) + sum(p))``. Were the probabilities calibrated it would be the
expected Dice against the truth; an uncertain band around the body (a dark bumper on a dark floor, an open pickup
bed, wheels against their shadow) lowers it in proportion to its area against the car's. ``uncertain_share`` is the
simpler share of the mask's area whose probability lies between 0.1 and 0.9, kept beside it for the measurement in
docs/serve.md (how well each ranks the out-of-fold photos of the real sample by their true Dice).

Every answer of ``serve`` carries the predicted Dice (``X-Confidence``, and ``confidence`` in ``format=json``), so a
user can send the doubtful photos to a person. Both work on the uint8 maps (``round(p * 255)``) the ensemble
stores, in one pass each, a few ms for a 1918x1280 photo.
"""

from __future__ import annotations

import numpy as np

LOW, HIGH = 26, 229  # uint8 levels of p = 0.1 and 0.9


def predicted_dice(prob_u8: np.ndarray, mask: np.ndarray) -> float:
    """``2 sum(M p) / (sum(M) + sum(p))`` with ``p = prob_u8 / 255``; 1.0 for an empty map and an empty mask."""
    p_sum = float(prob_u8.sum(dtype=np.int64)) / 255.0
    m_sum = float(np.count_nonzero(mask))
    if p_sum + m_sum == 0.0:
        return 1.0
    inside = float(prob_u8[mask.astype(bool)].sum(dtype=np.int64)) / 255.0
    return 2.0 * inside / (m_sum + p_sum)


def uncertain_share(prob_u8: np.ndarray, mask: np.ndarray) -> float:
    """Pixels with ``0.1 < p < 0.9`` per mask pixel (0 for a confident map; grows with the uncertain band)."""
    uncertain = np.count_nonzero((prob_u8 > LOW) & (prob_u8 < HIGH))
    return float(uncertain) / max(1, int(np.count_nonzero(mask)))
