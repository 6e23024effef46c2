"""Dice as Kaggle scored Carvana: per image 2|A∩B| / (|A|+|B|), 1 when both are empty; mean over images."""

from __future__ import annotations

import numpy as np


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two binary masks of the same shape (nonzero = foreground)."""
    if pred.shape != truth.shape:
        raise ValueError(f"shape mismatch: {pred.shape} vs {truth.shape}")
    p = np.asarray(pred) != 0
    t = np.asarray(truth) != 0
    total = int(p.sum()) + int(t.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(p, t).sum()) / total


def dice_from_counts(intersection: np.ndarray, pred_sum: np.ndarray, truth_sum: np.ndarray) -> np.ndarray:
    """Vectorised Dice from counts, with the both-empty case = 1 (used by threshold search on histograms)."""
    intersection = np.asarray(intersection, dtype=np.float64)
    total = np.asarray(pred_sum, dtype=np.float64) + np.asarray(truth_sum, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(total > 0, 2.0 * intersection / np.maximum(total, 1), 1.0)
    return out
