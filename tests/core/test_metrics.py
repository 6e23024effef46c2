"""Dice as Kaggle scored Carvana."""

from __future__ import annotations

import numpy as np
import pytest

from carvana_seg.core.metrics import dice, dice_from_counts


def test_both_empty_is_one():
    z = np.zeros((4, 4), np.uint8)
    assert dice(z, z) == 1.0


def test_one_empty_is_zero():
    z = np.zeros((4, 4), np.uint8)
    o = np.ones((4, 4), np.uint8)
    assert dice(z, o) == 0.0
    assert dice(o, z) == 0.0


def test_partial_overlap_value():
    a = np.zeros((2, 4), np.uint8)
    b = np.zeros((2, 4), np.uint8)
    a[0, :] = 1  # 4 px
    b[0, :2] = 1  # 2 px, both inside a
    assert dice(a, b) == pytest.approx(2 * 2 / 6)


def test_nonbinary_values_count_as_foreground():
    a = np.array([[0, 255]], np.uint8)
    b = np.array([[0, 1]], np.uint8)
    assert dice(a, b) == 1.0


def test_shape_mismatch_raises():
    with pytest.raises(ValueError):
        dice(np.zeros((2, 2)), np.zeros((2, 3)))


def test_mean_and_counts_agree():
    rng = np.random.default_rng(0)
    pairs = [(rng.integers(0, 2, (8, 8)), rng.integers(0, 2, (8, 8))) for _ in range(5)] + [
        (np.zeros((8, 8)), np.zeros((8, 8)))
    ]
    inter = [int(np.logical_and(p, t).sum()) for p, t in pairs]
    ps = [int(p.sum()) for p, _ in pairs]
    ts = [int(t.sum()) for _, t in pairs]
    assert np.mean(dice_from_counts(inter, ps, ts)) == pytest.approx(np.mean([dice(p, t) for p, t in pairs]))
