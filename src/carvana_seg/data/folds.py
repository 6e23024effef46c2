"""K-fold assignment grouped by car: all 16 views of a car land in one fold.

With ``stratify_by_area`` the cars are stratified by their mean mask area (as the top Carvana teams did), so each
fold sees small and large vehicles alike; scikit-learn's ``StratifiedGroupKFold`` does the work. Deterministic for
a seed. Output: ``folds.csv`` with columns ``img, car, view, fold, area``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

from carvana_seg.core import layout
from carvana_seg.pipeline import staging
from carvana_seg.pipeline.errors import ConfigError, DataError
from carvana_seg.settings.build import build
from carvana_seg.settings.folds import Folds

log = logging.getLogger(__name__)


def mask_areas(raw: Path) -> pd.DataFrame:
    """Per training image: id, car, view and mask area share, from ``train_masks.csv`` (no GIF decoding)."""
    csv = Path(raw) / layout.TRAIN_MASKS_CSV
    if not csv.is_file():
        raise DataError(f"{csv}: not found")
    df = pd.read_csv(csv, keep_default_na=False)
    if list(df.columns[:2]) != ["img", "rle_mask"]:
        raise DataError(f"{csv}: expected header img,rle_mask, got {list(df.columns)}")
    w, h = _image_shape(Path(raw) / layout.TRAIN_DIR)
    ids = df["img"].str.replace(r"\.jpg$", "", regex=True)
    lengths = df["rle_mask"].map(lambda s: sum(int(x) for x in str(s).split()[1::2]))
    return pd.DataFrame(
        {"img": ids, "car": ids.map(layout.car_id), "view": ids.map(layout.view), "area": lengths / float(w * h)}
    )


def _image_shape(train_dir: Path) -> tuple[int, int]:
    from carvana_seg.core.images import image_size

    first = next(iter(sorted(train_dir.glob("*.jpg"))), None)
    if first is None:
        raise DataError(f"{train_dir}: no training images")
    return image_size(first)


def assign_folds(images: pd.DataFrame, k: int, seed: int, stratify_by_area: bool = True) -> pd.DataFrame:
    """Add a ``fold`` column; every car's images share one fold. Needs at least ``k`` cars."""
    cars = images.groupby("car")["area"].mean()
    if len(cars) < k:
        raise ConfigError(f"config key 'folds.k': {k} folds need at least {k} cars, the data has {len(cars)}")
    # Shuffle car order with the seed so fold membership depends on the seed, not on car-id order.
    order = np.random.default_rng(seed).permutation(len(cars))
    car_ids = cars.index.to_numpy()[order]
    areas = cars.to_numpy()[order]
    n_bins = max(2, min(5, len(cars) // k))
    fold_of_car: dict[str, int] = {}
    dummy = np.zeros(len(car_ids))
    if stratify_by_area and len(cars) >= 2 * k:
        # Quantile bins of mean area; each bin must hold at least k cars for stratification to mean anything.
        bins = pd.qcut(areas, q=n_bins, labels=False, duplicates="drop")
        splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        splits = splitter.split(dummy, bins, groups=car_ids)
    else:
        splits = GroupKFold(n_splits=k).split(dummy, groups=car_ids)
    for fold, (_, val_idx) in enumerate(splits):
        for i in val_idx:
            fold_of_car[car_ids[i]] = fold
    out = images.copy()
    out["fold"] = out["car"].map(fold_of_car).astype(int)
    return out.sort_values("img").reset_index(drop=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--raw", required=True, help="raw Kaggle layout (data/<name>/raw)")
    parser.add_argument("--out", required=True, help="folds.csv to write")


def run(args: argparse.Namespace, cfg: dict) -> None:
    fc = build(Folds, cfg["folds"])
    folds = assign_folds(mask_areas(Path(args.raw)), fc.k, fc.seed, fc.stratify_by_area)
    staging.write_text(Path(args.out), folds.to_csv(index=False))
    summary = folds.groupby("fold").agg(cars=("car", "nunique"), images=("img", "size"), area=("area", "mean"))
    log.info("folds:\n%s", summary.to_string())
