"""The per-photo confidence (inference/confidence.py): a predicted Dice from the ensemble's own probability map."""

from __future__ import annotations

import numpy as np

from carvana_seg.inference.confidence import predicted_dice, soft_dice, uncertain_share


def car(band: int, level: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """A 100x200 map: a sure car rectangle, ``band`` px of probability ``level`` around it, sure background."""
    u8 = np.zeros((100, 200), np.uint8)
    u8[30 - band : 70 + band, 50 - band : 150 + band] = level
    u8[30:70, 50:150] = 255
    return u8, u8 >= 128


def test_a_sure_map_is_one_and_an_uncertain_band_lowers_it_in_proportion():
    sure, mask = car(0)
    assert predicted_dice(sure, mask) == 1.0 and uncertain_share(sure, mask) == 0.0
    narrow, wide = (predicted_dice(*car(b)) for b in (2, 8))
    assert 1.0 > narrow > wide > 0.8
    assert wide == 1 - uncertain_share(*car(8)) / 4  # each uncertain pixel wrong half the time, 1 / (2 |M|) each
    assert uncertain_share(*car(8)) > uncertain_share(*car(2)) > 0
    faint = car(8, level=100)  # below the threshold: outside the mask, still uncertain
    assert predicted_dice(*faint) < 1.0 and uncertain_share(*faint) > 0


def test_edges_empty_and_a_map_the_model_does_not_believe():
    empty = np.zeros((10, 10), np.uint8)
    assert predicted_dice(empty, empty.astype(bool)) == 1.0  # nothing there, and sure of it
    half = np.full((10, 10), 128, np.uint8)  # an untrained network: 0.5 everywhere
    assert predicted_dice(half, np.zeros((10, 10), bool)) == 0.0  # all unsure, nothing kept
    assert predicted_dice(half, half >= 128) == 0.75  # all unsure, all kept: 1 - 1 / 4
    assert 0.6 < soft_dice(half, half >= 128) < 0.7  # 2 * 50.2 / (100 + 50.2), the measured alternative
    assert soft_dice(empty, empty.astype(bool)) == 1.0
