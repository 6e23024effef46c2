"""What a normal car looks like (learned from the training masks) and robust scores of the test predictions.

Training profile, per view angle 1..16: the median and spread of log mask area (``folds.csv``), the spread of
a view's log area relative to the median of the car's *other* views (how consistent the 16 views of one car
are), the spread of whole cars' sizes, and how often a mask touches each edge of the photo (from the RLE in
``train_masks.csv``, pooled over the view and its two neighbours; on the real data only large cars in side
views touch the left or right edge, and nothing ever touches the top or bottom).

Scores are z-scores with median/MAD (1.4826 MAD, floored by ``min_spread`` so a feature that is nearly
constant cannot make a tiny deviation huge): area against the training profile, against the car's other views
and the car's size against training cars; stray components, holes, uncertain pixels and variant disagreement
against the test set itself (one-sided: only more is suspicious). A score above ``z_max`` is a reason; for
uncertain pixels and variant disagreement, which measure how hard a car is more than whether its mask failed
(light paint on a light backdrop scores 4-7 on the synthetic set while its masks are fine), above ``z_max_soft``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from carvana_seg.core import layout
from carvana_seg.core.images import image_size
from carvana_seg.outliers.features import SIDES
from carvana_seg.pipeline.errors import DataError
from carvana_seg.settings.outliers import Outliers

MAD_K = 1.4826  # MAD -> standard deviation for normal data
TEST_FEATURES = {
    "components": "extra_share",
    "holes": "hole_share",
    "uncertain": "uncertain_per_mask_px",
    "disagreement": "disagreement",
}
SOFT = {"uncertain", "disagreement"}  # difficulty more than failure: judged against z_max_soft


@dataclass
class Profile:
    """The training cars' area profile over the 16 views, and edge-contact rates per (view, side)."""

    mu: dict[int, float]
    sigma: dict[int, float]
    sigma_view: dict[int, float]
    car_median: float
    car_sigma: float
    border_rate: dict[tuple[int, str], float]
    n_cars: int


def spread(x: np.ndarray, floor: float) -> float:
    """Robust standard deviation (1.4826 MAD) of the finite values, at least ``floor``."""
    x = np.asarray(x, dtype=float)
    x = x[np.isfinite(x)]
    return max(MAD_K * float(np.median(np.abs(x - np.median(x)))), floor) if x.size else floor


def robust_z(x: np.ndarray, floor: float) -> np.ndarray:
    """(x - median) / spread over the finite values of ``x``; NaN stays NaN."""
    x = np.asarray(x, dtype=float)
    finite = x[np.isfinite(x)]
    return (x - (np.median(finite) if finite.size else 0.0)) / spread(x, floor)


def loo_median(values: np.ndarray) -> np.ndarray:
    """For each element, the median of the *other* elements (itself when alone)."""
    v = np.asarray(values, dtype=float)
    if v.size < 2:
        return v.copy()
    return np.array([np.median(np.delete(v, i)) for i in range(v.size)])


def log_area(area: np.ndarray | pd.Series) -> np.ndarray:
    """log of the area share; an empty mask counts as 1e-6 of the photo (very small, still finite)."""
    return np.log(np.maximum(np.asarray(area, dtype=float), 1e-6))


def car_relative(df: pd.DataFrame, mu: dict[int, float]) -> pd.DataFrame:
    """Per image: ``la`` (log area minus the view's training median), ``car_ref`` (the median ``la`` of the car's
    other views) and ``car_scale`` (the median ``la`` of all the car's views)."""
    out = pd.DataFrame(index=df.index)
    out["la"] = log_area(df["area"]) - df["view"].map(mu).fillna(np.median(list(mu.values()))).to_numpy()
    groups = out["la"].groupby(df["car"])
    out["car_ref"] = groups.transform(lambda s: pd.Series(loo_median(s.to_numpy()), index=s.index))
    out["car_scale"] = groups.transform("median")
    return out


def border_counts(rle_mask: str, shape: tuple[int, int]) -> dict[str, int]:
    """Mask pixels on each edge of a (H, W) photo, straight from its RLE runs (no decoding)."""
    h, w = shape
    v = np.array(str(rle_mask).split(), dtype=np.int64)
    s = v[0::2] - 1
    e = s + v[1::2]  # runs [s, e), 0-indexed, row-major
    ceil = lambda a: -(-a // w)  # noqa: E731
    return {
        "top": int(np.clip(np.minimum(e, w) - s, 0, None).sum()),
        "bottom": int(np.clip(e - np.maximum(s, (h - 1) * w), 0, None).sum()),
        "left": int((ceil(e) - ceil(s)).sum()),
        "right": int((ceil(e + 1) - ceil(s + 1)).sum()),
    }


def learn_profile(folds_csv: Path, raw: Path, floor: float, border_min_px: int) -> Profile:
    """The training profile from ``folds.csv`` (areas) and ``raw/train_masks.csv`` (edge contact)."""
    folds = pd.read_csv(folds_csv, dtype={"car": str})
    if folds.empty or not {"img", "car", "view", "area"} <= set(folds.columns):
        raise DataError(f"{folds_csv}: expected columns img, car, view, area")
    views = sorted(folds["view"].unique())
    la = log_area(folds["area"])
    mu = {int(v): float(np.median(la[folds["view"] == v])) for v in views}
    sigma = {int(v): spread(la[folds["view"] == v], floor) for v in views}
    rel = car_relative(folds, mu)
    resid = rel["la"] - rel["car_ref"]
    sigma_view = {int(v): spread(resid[folds["view"] == v], floor) for v in views}
    cars = rel.groupby(folds["car"])["car_scale"].first()
    masks = pd.read_csv(Path(raw) / layout.TRAIN_MASKS_CSV, keep_default_na=False)
    first = Path(raw) / layout.TRAIN_DIR / masks["img"].iloc[0]
    w, h = image_size(first)
    touch = pd.DataFrame([border_counts(r, (h, w)) for r in masks["rle_mask"]]) >= border_min_px
    touch["view"] = masks["img"].map(layout.view).to_numpy()
    rate = {}
    for v in range(1, layout.N_VIEWS + 1):
        near = touch["view"].isin([(v - 2) % 16 + 1, v, v % 16 + 1])
        for side in SIDES:
            rate[(v, side)] = float(touch.loc[near, side].mean()) if near.any() else 0.0
    return Profile(mu, sigma, sigma_view, float(np.median(cars)), spread(cars, floor), rate, len(cars))


def score(features: pd.DataFrame, profile: Profile, cfg: Outliers) -> pd.DataFrame:
    """Add the z-scores, the edges touched against the training profile, ``reasons`` (";"-joined) and ``score``
    (the worst z as a multiple of its limit: above 1 means flagged)."""
    df = features.copy()
    floors, z_max = cfg.min_spread, float(cfg.z_max)
    df = df.join(car_relative(df, profile.mu))
    view_sigma = lambda d: df["view"].map(d).fillna(floors.area).to_numpy()  # noqa: E731
    df["z_train"] = df["la"] / view_sigma(profile.sigma)
    df["z_view"] = (df["la"] - df["car_ref"]) / view_sigma(profile.sigma_view)
    df["z_car"] = (df["car_scale"] - profile.car_median) / profile.car_sigma
    df["disagreement"] = 1.0 - df["variant_dice"]
    for name, column in TEST_FEATURES.items():
        df[f"z_{name}"] = robust_z(df[column].to_numpy(), getattr(floors, name))
    touched = pd.DataFrame(
        {
            s: (df[f"border_{s}"] >= cfg.border_min_px)
            & (df["view"].map(lambda v, s=s: profile.border_rate.get((int(v), s), 0.0)) < cfg.border_rate_min)
            for s in SIDES
        }
    )
    df["border"] = [";".join(s for s in SIDES if row[s]) for row in touched.to_dict("records")]
    checks = {
        "area_train": df["z_train"].abs(),
        "area_view": df["z_view"].abs(),
        "car_area": df["z_car"].abs(),
        **{name: df[f"z_{name}"] for name in TEST_FEATURES},
    }
    limit = {name: float(cfg.z_max_soft) if name in SOFT else z_max for name in checks}
    hits = pd.DataFrame({name: z > limit[name] for name, z in checks.items()})
    df["reasons"] = [
        ";".join([n for n in checks if row[n]] + [f"border:{s}" for s in b.split(";") if s])
        for row, b in zip(hits.to_dict("records"), df["border"])
    ]
    ratio = pd.concat([z / limit[name] for name, z in checks.items()], axis=1).max(axis=1, skipna=True).fillna(0.0)
    df["score"] = np.where(df["border"] != "", np.maximum(ratio, 1.0), ratio)  # > 1: flagged
    return df


def choose_variant(row: pd.Series, variants: list[str], profile: Profile, z_max: float) -> str | None:
    """The variant whose own mask area fits the car's other views when the ensemble's does not, else None."""
    if row["z_view"] == row["z_view"] and abs(row["z_view"]) <= z_max:  # NaN-safe: only view-inconsistent images
        return None
    sigma = profile.sigma_view.get(int(row["view"]), math.nan)
    best, best_z = None, math.inf
    for name in variants:
        area = row.get(f"area_{name}", math.nan)
        if area == area:
            z = abs(float(log_area([area])[0] - profile.mu.get(int(row["view"]), 0.0) - row["car_ref"]) / sigma)
            best, best_z = (name, z) if z < best_z else (best, best_z)
    return best if best is not None and best_z <= z_max and best_z < abs(row["z_view"]) else None
