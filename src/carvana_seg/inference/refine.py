"""Full-resolution edge refinement: a fast guided filter of the probability map, guided by the photo itself.

The networks see the car at a fraction of its 1918x1280 pixels, so the bilinearly upsampled probability map has
a soft edge several photo pixels wide, and almost every Dice error sits in that band. The guided filter (He, Sun &
Tang, "Guided image filtering", TPAMI 2013; the fast variant of He & Sun 2015, arXiv:1505.00996) fits, in every
window of radius ``radius``, the probability as a linear function ``q = a * I + b`` of the photo's grey level I:
where the window straddles the car's outline the output follows the photo's edge at full resolution; where the
photo is flat (``var(I) << eps``) it is the window's mean probability. The coefficients are computed on a grid
``scale`` times coarser (box filters, ``cv2.boxFilter``) and upsampled, so the only full-resolution work is one
multiply-add per pixel. The output is linear in the probability map, so refining each variant's map and averaging
equals refining their average (the OOF and test ensembles agree).

Configured by ``predict.edge_refine`` (``method: none | guided``); measured in docs/recipe.md.
"""

from __future__ import annotations

import cv2
import numpy as np

from carvana_seg.settings.predict import EdgeRefine

METHODS = ("none", "guided")


def _box(x: np.ndarray, r: int) -> np.ndarray:
    """Mean over the (2r+1)^2 window (borders reflected), float32."""
    return cv2.boxFilter(x, cv2.CV_32F, (2 * r + 1, 2 * r + 1), normalize=True, borderType=cv2.BORDER_REFLECT)


def guided_filter(
    guide: np.ndarray, prob: np.ndarray, radius: int = 8, eps: float = 1e-3, scale: int = 4
) -> np.ndarray:
    """Refine ``prob`` (any size, float 0..1) with the grey photo ``guide`` (H, W) uint8 or float 0..1.

    Returns float32 (H, W) probabilities clipped to 0..1 at the guide's size. ``radius`` is in guide pixels;
    ``scale`` is the subsampling of the fast variant (1 = exact guided filter)."""
    h, w = guide.shape[:2]
    if guide.ndim != 2:
        raise ValueError(f"guide must be a grey (H, W) image, got shape {guide.shape}")
    g = guide.astype(np.float32) / (255.0 if guide.dtype == np.uint8 else 1.0)
    s = max(1, int(scale))
    lw, lh = max(1, round(w / s)), max(1, round(h / s))
    g_low = cv2.resize(g, (lw, lh), interpolation=cv2.INTER_AREA) if s > 1 else g
    p = prob.astype(np.float32, copy=False)
    p_low = (
        p
        if p.shape == (lh, lw)
        else cv2.resize(p, (lw, lh), interpolation=cv2.INTER_AREA if p.shape[0] > lh else cv2.INTER_LINEAR)
    )
    r = max(1, int(round(radius / s)))
    mean_i, mean_p = _box(g_low, r), _box(p_low, r)
    var_i = _box(g_low * g_low, r) - mean_i * mean_i
    cov_ip = _box(g_low * p_low, r) - mean_i * mean_p
    a = cov_ip / (var_i + float(eps))
    b = mean_p - a * mean_i
    mean_a, mean_b = _box(a, r), _box(b, r)
    if s > 1:
        mean_a = cv2.resize(mean_a, (w, h), interpolation=cv2.INTER_LINEAR)
        mean_b = cv2.resize(mean_b, (w, h), interpolation=cv2.INTER_LINEAR)
    q = cv2.multiply(mean_a, g)
    cv2.add(q, mean_b, dst=q)
    return np.clip(q, 0.0, 1.0, out=q)


def to_gray(rgb: np.ndarray) -> np.ndarray:
    """The grey guide (H, W) uint8 of an RGB uint8 photo."""
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


def refine(prob: np.ndarray, guide: np.ndarray | None, cfg: EdgeRefine) -> np.ndarray:
    """Apply ``cfg`` (``predict.edge_refine``) to a float probability map; ``method: none`` returns it unchanged.

    The result has the guide's size (the caller upsamples ``prob`` first when no refinement is configured)."""
    method = cfg.method
    if method == "none":
        return prob
    if method != "guided":
        raise ValueError(f"unknown edge_refine method {method!r} (one of {METHODS})")
    if guide is None:
        raise ValueError("edge_refine: guided needs the photo")
    q = guided_filter(guide, prob, cfg.radius, cfg.eps, cfg.scale)
    band = float(cfg.band)
    if band > 0:  # only pixels the network was unsure of change; a confident pixel keeps its upsampled value
        h, w = guide.shape[:2]
        up = (
            prob
            if prob.shape == (h, w)
            else cv2.resize(prob.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
        )
        sure = (up <= band) | (up >= 1.0 - band)
        q[sure] = up[sure]
    return q


def enabled(cfg: EdgeRefine | None) -> bool:
    """Whether ``predict.edge_refine`` asks for a refinement (None: no settings, no refinement)."""
    return cfg is not None and cfg.method != "none"
