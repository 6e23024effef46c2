"""Per-variant binary masks at reduced resolution, stored beside the ensemble's shards for the outlier checks.

The ensemble keeps only the weighted mean probability of its variants; whether the variants *agree* is lost.
So, per image, each variant's own mean probability (over its folds and flips) is resized to 1/``SCALE`` of the
photo, binarised at ``THRESHOLD`` and bit-packed: about 19 kB per variant for a 1918x1280 photo before deflate,
1-3 kB after, i.e. a few hundred MB for the 100,064 Kaggle test images and 3 variants. The masks live in
``variants_<k>.npz`` beside ``shard_<k>.npz`` (same ids, same order), key = image id, value = a
``(n_variants, h, ceil(w / 8))`` uint8 array; the variant names are in the ensemble manifest. This module has
no torch import, so the CPU-only outlier stage can read the files cheaply.
"""

from __future__ import annotations

import cv2
import numpy as np

SCALE = 4  # the masks are stored at 1/SCALE of the photo's width and height
THRESHOLD = 0.5  # per-variant binarisation (the ensemble's searched threshold applies to the mean only)


def file_name(k: int) -> str:
    """File name of the variant masks of shard ``k``."""
    return f"variants_{k:05d}.npz"


def small_shape(shape: tuple[int, int], scale: int = SCALE) -> tuple[int, int]:
    """(h, w) of the reduced masks of a photo of ``shape`` (H, W): ceil(H / scale), ceil(W / scale)."""
    h, w = shape
    return -(-int(h) // scale), -(-int(w) // scale)


def pack(shape: tuple[int, int], probs: list[np.ndarray]) -> np.ndarray:
    """Each variant's probability map (any size) -> (n_variants, h, ceil(w/8)) packed bits at the reduced size."""
    hs, ws = small_shape(shape)
    masks = [
        cv2.resize(np.asarray(p, dtype=np.float32), (ws, hs), interpolation=cv2.INTER_LINEAR) >= THRESHOLD
        for p in probs
    ]
    return np.packbits(np.stack(masks), axis=-1)


def unpack(packed: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Inverse of ``pack`` for a photo of ``shape`` (H, W): (n_variants, h, w) bool."""
    hs, ws = small_shape(shape)
    out = np.unpackbits(np.asarray(packed, dtype=np.uint8), axis=-1, count=ws).astype(bool)
    if out.shape[-2] != hs:
        raise ValueError(f"variant masks of shape {out.shape} do not match a {shape[0]}x{shape[1]} photo")
    return out


def upsample(small: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A reduced mask back at full size (H, W): bilinear on 0/1 then >= 0.5, so edges are smooth, not blocky."""
    h, w = shape
    return cv2.resize(small.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR) >= 0.5
