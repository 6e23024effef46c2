"""Per-image features of a predicted test mask, for the outlier checks (``outliers``), and the mask fix.

A Carvana car is one solid silhouette that never touches the top or bottom of the photo, whose area follows the
turntable angle, and that every ensemble member segments alike. Each feature measures one way a prediction can
break that: area, stray components and holes (on a 1/``scale`` copy of the mask, for speed), the share of
uncertain pixels (probability strictly between ``lo`` and ``hi``, counted on the stored uint8 levels), pixels on
each edge of the photo, and the Dice between the variants' own masks (``variant_masks``).

Real cars do have holes: the gaps behind running boards, spoilers and roof racks (147 of 384 masks of the real
sample, inscribed radius up to 17 px at 1918x1280). A failed prediction leaves wide holes. So holes count, and
are filled, only when the largest disc that fits in them has a radius of at least ``min_radius`` pixels.
``largest_component`` + ``fill_holes`` are the cheap, safe fix. The largest component comes from scikit-image
(``measure.label``); the holes from OpenCV (flood fill, distance transform), twice as fast as a ``regionprops``
version, and ``morphology.remove_small_holes`` fills by area, not by width (benchmarks/outlier_ops.py).
"""

from __future__ import annotations

import math
from itertools import combinations

import cv2
import numpy as np
from skimage import measure

from carvana_seg.core.masks import level
from carvana_seg.core.metrics import dice
from carvana_seg.inference import variant_masks

SIDES = ("top", "bottom", "left", "right")


def shrink(mask: np.ndarray, scale: int) -> np.ndarray:
    """A binary mask at 1/``scale`` size (area average >= 1/2), for the component and hole counts."""
    if scale == 1:
        return np.asarray(mask) != 0
    hs, ws = variant_masks.small_shape(mask.shape, scale)
    small = cv2.resize((np.asarray(mask) != 0).astype(np.uint8) * 255, (ws, hs), interpolation=cv2.INTER_AREA)
    return small >= 128


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Only the largest 8-connected component of a mask (bool); an empty mask stays empty.

    ``skimage.measure.label``: the same mask as OpenCV's connected components, a little faster on a full-size
    photo (benchmarks/outlier_ops.py)."""
    m = np.asarray(mask) != 0
    labels = measure.label(m, connectivity=2)
    if labels.max() <= 1:
        return m
    return labels == 1 + int(np.argmax(np.bincount(labels.ravel())[1:]))


def holes(mask: np.ndarray, min_radius: float = 0.0) -> np.ndarray:
    """Background enclosed by the mask (not reaching the photo's edge) whose widest inscribed disc has a radius
    of at least ``min_radius`` pixels (bool)."""
    padded = np.pad((np.asarray(mask) != 0).astype(np.uint8), 1)  # the zero frame joins all outside background
    flood = np.zeros((padded.shape[0] + 2, padded.shape[1] + 2), np.uint8)
    cv2.floodFill(padded, flood, (0, 0), 2)
    enclosed = padded[1:-1, 1:-1] == 0
    if min_radius <= 0 or not enclosed.any():
        return enclosed
    _n, labels = cv2.connectedComponents(enclosed.astype(np.uint8), connectivity=4)
    dist = cv2.distanceTransform(enclosed.astype(np.uint8), cv2.DIST_L2, 3)
    wide = np.unique(labels[dist >= min_radius])
    return np.isin(labels, wide[wide > 0])


def fill_holes(mask: np.ndarray, min_radius: float = 0.0) -> np.ndarray:
    """The mask with its holes (at least ``min_radius`` wide, see ``holes``) set to car (bool)."""
    return (np.asarray(mask) != 0) | holes(mask, min_radius)


def fix_mask(mask: np.ndarray, min_radius: float = 0.0) -> np.ndarray:
    """The ``fix`` fallback: keep the largest component, then fill its holes at least ``min_radius`` wide."""
    return fill_holes(largest_component(mask), min_radius)


def components(small: np.ndarray) -> tuple[int, float]:
    """(number of 8-connected components, share of the mask outside the largest one)."""
    n, _labels, stats, _ = cv2.connectedComponentsWithStats(small.astype(np.uint8), connectivity=8)
    areas = stats[1:, cv2.CC_STAT_AREA]
    total = int(areas.sum())
    return int(n - 1), (1.0 - int(areas.max()) / total) if total else 0.0


def hole_share(small: np.ndarray, min_radius: float = 0.0) -> float:
    """Share of the filled silhouette that is hole at least ``min_radius`` wide."""
    n_holes = int(holes(small, min_radius).sum())
    return n_holes / (n_holes + int(small.sum())) if n_holes else 0.0


def border_pixels(mask: np.ndarray) -> dict[str, int]:
    """Mask pixels on each edge row/column of the photo."""
    m = np.asarray(mask) != 0
    return {
        "top": int(m[0].sum()),
        "bottom": int(m[-1].sum()),
        "left": int(m[:, 0].sum()),
        "right": int(m[:, -1].sum()),
    }


def min_pair_dice(masks: np.ndarray) -> float:
    """Lowest Dice between any two variant masks (n_variants, h, w); NaN with fewer than two variants."""
    pairs = [dice(masks[i], masks[j]) for i, j in combinations(range(len(masks)), 2)]
    return min(pairs) if pairs else math.nan


def image_features(
    prob_u8: np.ndarray,
    threshold: float,
    lo: float,
    hi: float,
    scale: int,
    hole_radius: float,
    packed: np.ndarray | None = None,
    variants: list[str] | None = None,
) -> dict[str, float]:
    """Every feature of one image from its uint8 ensemble probability and (optionally) packed variant masks;
    ``hole_radius`` in pixels of the full-size photo."""
    mask = prob_u8 >= level(threshold)
    n_car = int(mask.sum())
    small = shrink(mask, scale)
    n_comp, extra = components(small)
    lo_u8, hi_u8 = level(lo), level(hi)  # uncertain: lo < p < hi on the stored levels
    uncertain = int(np.count_nonzero((prob_u8 > lo_u8) & (prob_u8 < hi_u8)))
    out: dict[str, float] = {
        "height": prob_u8.shape[0],
        "width": prob_u8.shape[1],
        "area": n_car / mask.size,
        "n_components": n_comp,
        "extra_share": extra,
        "hole_share": hole_share(small, hole_radius / scale),
        "uncertain_per_mask_px": uncertain / max(n_car, 1),
        **{f"border_{s}": v for s, v in border_pixels(mask).items()},
        "variant_dice": math.nan,
    }
    if packed is not None and variants:
        vm = variant_masks.unpack(packed, prob_u8.shape)
        out["variant_dice"] = min_pair_dice(vm)
        for name, m in zip(variants, vm):
            out[f"area_{name}"] = float(m.mean())
    return out
