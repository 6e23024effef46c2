"""Zoom re-prediction (``outliers.repredict: zoom``): predict a car that is far smaller than every training car again,
on a crop around its predicted box, so the models see it at the size they were trained on.

A small car (the synthetic 1/3-scale outlier; a distant or tiny vehicle on Kaggle) comes out of the ensemble as a
blurred halo (Dice ~0.67 on the synthetic set), which neither the largest component nor filled holes can repair.
The crop keeps the photo's aspect, covers the predicted box plus ``margin`` on every side and at least
``min_share`` of the photo's width (at most 1/min_share zoom), and is shifted, not cut, at the photo's edges. Every
variant predicts it with the ensemble's flip-TTA and weights (``maps.finalize``); outside the crop the
probability is 0. Imports torch: loaded only when a car needs it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from carvana_seg.core import layout
from carvana_seg.core.images import read_image
from carvana_seg.core.masks import level
from carvana_seg.data.resize_cache import resize_image
from carvana_seg.inference.batch import variant_probs
from carvana_seg.inference.ensemble import LoadedVariant, load_variants
from carvana_seg.inference.maps import finalize
from carvana_seg.models import runtime
from carvana_seg.pipeline import staging
from carvana_seg.settings.predict import Predict
from carvana_seg.settings.variants import Variant

log = logging.getLogger(__name__)
Box = tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive)


def crop_box(mask: np.ndarray, margin: float, min_share: float) -> Box | None:
    """The crop around a mask's bounding box (photo aspect, inside the photo); None when empty or no zoom."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return None
    h, w = mask.shape
    bw, bh = xs.max() - xs.min() + 1, ys.max() - ys.min() + 1
    cw = max(bw * (1 + 2 * margin), bh * (1 + 2 * margin) * w / h, min_share * w)
    if cw >= w:
        return None  # the crop would be the whole photo: nothing to zoom
    cw, ch = int(round(cw)), int(round(cw * h / w))
    cx, cy = (xs.min() + xs.max() + 1) / 2, (ys.min() + ys.max() + 1) / 2
    x0 = int(min(max(round(cx - cw / 2), 0), w - cw))
    y0 = int(min(max(round(cy - ch / 2), 0), h - ch))
    return x0, y0, x0 + cw, y0 + ch


def zoom_prob(
    photo: np.ndarray,
    prob_u8: np.ndarray,
    threshold: float,
    margin: float,
    min_share: float,
    predict: Callable[[np.ndarray], np.ndarray],
) -> np.ndarray | None:
    """The uint8 probability of a photo re-predicted on the crop around its current mask (``predict``: RGB crop ->
    uint8 probability of the crop's shape); None when there is nothing to zoom."""
    box = crop_box(prob_u8 >= level(threshold), margin, min_share)
    if box is None:
        return None
    x0, y0, x1, y1 = box
    out = np.zeros(prob_u8.shape, np.uint8)
    out[y0:y1, x0:x1] = predict(photo[y0:y1, x0:x1])
    return out


def ensemble_predictor(
    variants: list[LoadedVariant], tta_hflip: bool, device: torch.device
) -> Callable[[np.ndarray], np.ndarray]:
    """RGB crop -> uint8 weighted-mean probability of every variant (flip-TTA), at the crop's size."""

    sizes = sorted({v.size for v in variants})
    slot = [sizes.index(v.size) for v in variants]

    def predict(crop: np.ndarray) -> np.ndarray:
        stacks = [torch.from_numpy(np.ascontiguousarray(resize_image(crop, size))[None]) for size in sizes]
        probs = variant_probs(variants, slot, stacks, device, tta_hflip)  # the test ensemble's model half
        return finalize(crop.shape[:2], [p[0] for p in probs], [v.weight for v in variants])

    return predict


def zoom_images(
    images: list[tuple[str, str]],
    raw: Path,
    models: list[Path],
    config: list[Variant],
    pcfg: Predict,
    margin: float,
    min_share: float,
    threshold: float,
    out: Path,
    device: str = "auto",
) -> list[str]:
    """Re-predict ``images`` ((id, shard holding its ensemble map) pairs) zoomed, one at a time, with the ensemble of
    ``models`` (variants ``config``, ``predict`` settings ``pcfg``) on crops of ``margin`` and ``min_share``
    (``outliers.zoom_margin``, ``zoom_min_share``); stream the new uint8 maps into the npz ``out``; return the ids
    written."""
    dev = runtime.pick_device(device)
    variants = load_variants(models, config, pcfg.compile, dev)
    predict = ensemble_predictor(variants, pcfg.tta_hflip, dev)
    done, shards = [], {}
    writer = staging.NpzWriter(out)
    try:
        for image_id, shard in images:
            shards.setdefault(shard, np.load(shard))
            photo = read_image(Path(raw) / layout.TEST_DIR / layout.image_file(image_id))
            new = zoom_prob(photo, shards[shard][image_id], threshold, margin, min_share, predict)
            if new is not None:
                writer.add(image_id, new)
                done.append(image_id)
    except BaseException:
        writer.abort()
        raise
    finally:
        for npz in shards.values():
            npz.close()
    writer.close()
    log.info("zoom: re-predicted %d of %d images on %s", len(done), len(images), dev)
    return done
