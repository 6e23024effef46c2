"""One test photo's ensemble map from its variants' network-size probabilities: the weighted mean at the photo's
size as uint8 ``round(p * 255)``, on the CPU (``finalize``) or on the models' CUDA device (``device_maps``).

The test ensemble (``stream``), the zoom re-prediction and the server (``service``) all call these, so a served
mask, a zoomed outlier and a submission row come from the same arithmetic.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from carvana_seg.inference import refine, variant_masks
from carvana_seg.pipeline.config import weight_total
from carvana_seg.settings.predict import EdgeRefine


def finalize(
    shape: tuple[int, int],
    probs: list[np.ndarray],
    weights: list[float],
    guide: np.ndarray | None = None,
    refine_cfg: EdgeRefine | None = None,
) -> np.ndarray:
    """Per-variant probabilities at network size -> weighted mean at ``shape`` (H, W) as uint8 round(p*255);
    with ``refine_cfg`` (``predict.edge_refine``) the mean is refined with the grey photo ``guide`` first."""
    h, w = shape
    total = weight_total(weights)
    # OpenCV's fused passes (scaleAdd; convertScaleAbs saturates and rounds half to even, like np.rint) cut this
    # from 13.5 to ~9 ms per 1918x1280 image; it runs once per test image in the ensemble's consumer thread.
    acc = np.zeros((h, w), np.float32)
    for p, wt in zip(probs, weights):
        full = p if p.shape == (h, w) else cv2.resize(p, (w, h), interpolation=cv2.INTER_LINEAR)
        cv2.scaleAdd(np.asarray(full, np.float32), float(255.0 * wt / total), acc, dst=acc)
    if refine.enabled(refine_cfg):
        acc = refine.refine(acc / 255.0, guide, refine_cfg) * 255.0
    return cv2.convertScaleAbs(np.maximum(acc, 0.0, out=acc))  # convertScaleAbs would mirror a negative value


def device_maps(
    shapes: list[tuple[int, int]], probs: list[torch.Tensor], weights: list[float]
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """``finalize`` and the variant masks' resize on the models' device (CUDA), so only uint8 crosses the bus.

    ``probs``: per variant, (N, h, w) float32 at its network size. Returns per image the (H, W) uint8 mean map
    round(p*255) and the (n_variants, H/4, W/4) uint8 0/1 masks for ``variant_masks``, both still on the device.
    Bilinear with half-pixel centres (``align_corners=False``) is OpenCV's INTER_LINEAR, so the maps match the
    CPU path's up to float rounding; the CPU path itself (``finalize``) is unchanged."""
    import torch.nn.functional as F

    total = weight_total(weights)
    maps, smalls = [], []
    for j, (h, w) in enumerate(shapes):
        own = [p[j : j + 1, None] for p in probs]  # (1, 1, h, w) each
        acc = torch.zeros((1, 1, h, w), dtype=torch.float32, device=own[0].device)
        for p, wt in zip(own, weights):
            full = p if p.shape[-2:] == (h, w) else F.interpolate(p, size=(h, w), mode="bilinear", align_corners=False)
            acc.add_(full, alpha=255.0 * wt / total)
        maps.append(acc[0, 0].clamp_(0.0, 255.0).round_().to(torch.uint8))
        hs, ws = variant_masks.small_shape((h, w))
        small = [F.interpolate(p, size=(hs, ws), mode="bilinear", align_corners=False)[0, 0] for p in own]
        smalls.append((torch.stack(small) >= variant_masks.THRESHOLD).to(torch.uint8))
    return maps, smalls
