"""Training augmentation (albumentations 2), built from ``train.augment`` (``settings.train.Augment``).

The seed's recipe: a random HSV shift (hue ±50, saturation ±5, value ±15 in OpenCV's uint8 HSV units, which are
the units albumentations' ``HueSaturationValue`` uses for uint8 images), a random shift (±6.25 %) and scale (±10 %)
without rotation, and a horizontal flip. Width and height draw their scale factors independently
(albumentations' ``keep_ratio=False``), so the seed's scale already changes the aspect by up to ±10 %. ``aspect`` > 0
widens the width's range by that share on both sides (``(1-scale)(1-aspect)`` to ``(1+scale)(1+aspect)``): a sedan
stretched looks like a long-wheelbase car or a pickup, the body shapes the sample has fewest of.

Masks are per-pixel coverage 0..255, so the affine warp resamples them with *linear* interpolation like the photo
(nearest-neighbour would throw the sub-pixel edge away).

Randomness: ``Compose`` keeps its own generator, independent of numpy/torch global seeds. The training loop
reseeds it per epoch (and per DataLoader worker) through ``reseed`` so a resumed run replays the same epochs.
"""

from __future__ import annotations

import cv2
import numpy as np

from carvana_seg.settings.train import Augment

BORDER_MODES = {"constant": cv2.BORDER_CONSTANT, "reflect": cv2.BORDER_REFLECT_101}


def build_augment(aug: Augment, seed: int | None = None):
    """An ``A.Compose`` taking ``image`` (H, W, 3) uint8 and ``mask`` (H, W) uint8 coverage; None if it is a no-op."""
    import albumentations as A

    p = float(aug.probability)
    hue, sat, val = float(aug.hue_shift), float(aug.sat_shift), float(aug.val_shift)
    shift, scale, aspect = float(aug.shift), float(aug.scale), float(aug.aspect)
    hflip = float(aug.hflip)
    border = BORDER_MODES[aug.border_mode]
    transforms = []
    if p > 0 and (hue or sat or val):
        transforms.append(
            A.HueSaturationValue(
                hue_shift_limit=(-hue, hue), sat_shift_limit=(-sat, sat), val_shift_limit=(-val, val), p=p
            )
        )
    if p > 0 and (shift or scale or aspect):
        # aspect 0: the seed's transform, draw for draw; else the width's range widened
        scales = (
            (1.0 - scale, 1.0 + scale)
            if not aspect
            else {
                "x": ((1.0 - scale) * (1.0 - aspect), (1.0 + scale) * (1.0 + aspect)),
                "y": (1.0 - scale, 1.0 + scale),
            }
        )
        transforms.append(
            A.Affine(
                translate_percent={"x": (-shift, shift), "y": (-shift, shift)},
                scale=scales,
                keep_ratio=False,
                rotate=0.0,
                interpolation=cv2.INTER_LINEAR,
                mask_interpolation=cv2.INTER_LINEAR,
                border_mode=border,
                fill=0,
                fill_mask=0,
                p=p,
            )
        )
    if hflip > 0:
        transforms.append(A.HorizontalFlip(p=hflip))
    if not transforms:
        return None
    return A.Compose(transforms, seed=seed)


def apply(augment, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Run ``augment`` (or nothing, if None) on one image/mask pair; returns contiguous uint8 arrays."""
    if augment is None:
        return image, mask
    out = augment(image=np.ascontiguousarray(image), mask=np.ascontiguousarray(mask))
    img, msk = out["image"], out["mask"]
    if msk.dtype != np.uint8:  # linear interpolation of uint8 stays uint8 in OpenCV; be safe anyway
        msk = np.clip(np.rint(msk), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(img), np.ascontiguousarray(msk)


def reseed(augment, seed: int) -> None:
    """Reset the augmentation's random generators (per epoch, per worker) for reproducible, resumable runs."""
    if augment is not None:
        augment.set_random_seed(int(seed) % (2**32))
