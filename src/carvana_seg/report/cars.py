"""Worst cars first: the report page a user reads before submitting (``cars.html`` of report-figures).

- Per car: its year, make and model (the data's ``metadata.csv``: which kinds of car fail, e.g. pickups), its
  fold, its OOF ensemble Dice (mean and worst view, at the chosen threshold, from the threshold
  stage's ``oof_image_dice.csv``) and, where the test masks are known (synthetic data: ``test_score.json``), its
  test Dice; sorted worst first.
- Per view (01..16 of the turntable): mean and worst OOF Dice over the cars, and how many cars fall below the
  car-level median minus ``FAIL_MARGIN``: which views fail.
- Contact sheets of the ``worst`` cars: each view's photo with the predicted outline drawn on it (red) and the
  true outline (green), never an opaque fill, so the edge errors stay visible; each tile names its Dice.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from carvana_seg.core import layout
from carvana_seg.core.images import read_mask
from carvana_seg.core.masks import binarize
from carvana_seg.inference.threshold import ensemble_u8
from carvana_seg.outliers.sheets import contact_sheet, read_small
from carvana_seg.report.tables import html_page

FAIL_MARGIN = 0.01  # a view "fails" on a car when its Dice is this far below the median image Dice
PRED, TRUE = (255, 40, 40), (40, 220, 40)


def per_image(image_dice_csv: Path, folds_csv: Path) -> pd.DataFrame:
    """img, car, view, fold, dice: the OOF ensemble Dice of every training image with its car and fold."""
    dice = pd.read_csv(image_dice_csv, dtype={"img": str})
    folds = pd.read_csv(folds_csv, dtype={"img": str, "car": str})[["img", "car", "view", "fold"]]
    return folds.merge(dice, on="img", how="inner")


def car_metadata(raw: Path) -> pd.DataFrame | None:
    """car, year, make, model from ``raw/metadata.csv`` (every field quoted, some years empty); None without it."""
    path = Path(raw) / layout.METADATA_CSV
    if not path.is_file():
        return None
    meta = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = {"id", "year", "make", "model"} - set(meta.columns)
    if missing:
        raise ValueError(f"{path}: no column(s) {sorted(missing)}")
    return meta.rename(columns={"id": "car"})[["car", "year", "make", "model"]].drop_duplicates("car")


def car_table(
    images: pd.DataFrame, test_per_car: dict[str, float] | None = None, meta: pd.DataFrame | None = None
) -> pd.DataFrame:
    """One row per car (OOF cars, then test cars with a known Dice), worst first by its mean Dice; with ``meta``
    (``car_metadata``) each row names the car's year, make and model."""
    g = images.groupby("car")
    cars = pd.DataFrame(
        {
            "set": "oof",
            "fold": g["fold"].first(),
            "images": g.size(),
            "mean_dice": g["dice"].mean(),
            "min_dice": g["dice"].min(),
            "worst_view": images.loc[g["dice"].idxmin()].set_index("car")["view"],
        }
    ).reset_index()
    if test_per_car:
        test = pd.DataFrame({"car": list(test_per_car), "set": "test", "mean_dice": list(test_per_car.values())})
        cars = pd.concat([cars, test], ignore_index=True)
    if meta is not None:
        cars = cars.merge(meta, on="car", how="left")
        first = ["set", "car", "year", "make", "model"]
        cars = cars[first + [c for c in cars.columns if c not in first]].fillna({"year": "", "make": "", "model": ""})
    return cars.sort_values(["mean_dice", "car"], ignore_index=True)


def view_table(images: pd.DataFrame) -> pd.DataFrame:
    """One row per view: mean and worst Dice over the cars and how many cars fail it, worst view first."""
    cut = float(images["dice"].median()) - FAIL_MARGIN
    g = images.groupby("view")["dice"]
    out = pd.DataFrame(
        {
            "mean_dice": g.mean(),
            "min_dice": g.min(),
            "cars_failing": g.apply(lambda d: int((d < cut).sum())),
            "cars": g.size(),
        }
    ).reset_index()
    return out.sort_values(["mean_dice", "view"], ignore_index=True)


def outline_tile(photo: np.ndarray, pred: np.ndarray, truth: np.ndarray | None) -> np.ndarray:
    """``photo`` (tile size, RGB) with the outlines of the full-size masks ``pred`` (red) and ``truth`` (green)."""
    size = (photo.shape[1], photo.shape[0])
    out = photo.copy()
    for mask, colour in ((truth, TRUE), (pred, PRED)):
        if mask is None:
            continue
        small = (cv2.resize(mask.astype(np.uint8) * 255, size, interpolation=cv2.INTER_AREA) >= 128).astype(np.uint8)
        contours, _ = cv2.findContours(small, cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(out, contours, -1, colour, 1, cv2.LINE_8)
    return out


def car_sheet(
    car: str,
    images: pd.DataFrame,
    oof: dict[int, list[tuple[Path, float]]],
    threshold: float,
    raw: Path,
    tile_width: int = 240,
    name: str = "",
) -> np.ndarray:
    """The contact sheet of one training car: its 16 views with predicted (red) and true (green) outlines.

    ``oof``: per fold, the (npz, weight) of every variant, whose weighted mean is the OOF ensemble map; ``name``:
    the car's year, make and model for the title."""
    rows = images[images["car"] == car].sort_values("view")
    tiles: list[np.ndarray | None] = [None] * 16
    labels = [f"{v:02d}" for v in range(1, 17)]
    shape = (1280, 1918)
    for r in rows.itertuples():
        sources = oof[int(r.fold)]
        arrays = []
        for path, _w in sources:
            with np.load(path) as npz:
                arrays.append(npz[r.img])
        prob = ensemble_u8(arrays, [w for _p, w in sources])
        shape = prob.shape
        mask_path = raw / layout.MASK_DIR / layout.mask_file(r.img)
        truth = read_mask(mask_path) if mask_path.is_file() else None  # no mask: the predicted outline only
        photo = read_small(
            raw / layout.TRAIN_DIR / layout.image_file(r.img), (tile_width, round(tile_width * shape[0] / shape[1]))
        )
        k = int(r.view) - 1
        if 0 <= k < 16:
            tiles[k] = outline_tile(photo, binarize(prob, threshold), None if truth is None else truth != 0)
            labels[k] = f"{int(r.view):02d}  Dice {r.dice:.4f}"
    named = f"car {car} ({name})" if name else f"car {car}"
    title = (
        f"{named}, fold {int(rows['fold'].iloc[0])}: OOF Dice mean {rows['dice'].mean():.4f}, "
        f"worst {rows['dice'].min():.4f}; red = predicted outline, green = true outline"
    )
    return contact_sheet(tiles, labels, title, shape, tile_width)


def oof_sources(npz_paths: list[str], weights: list[float]) -> dict[int, list[tuple[Path, float]]]:
    """Per fold, the (npz, ensemble weight) of every variant, from ``.../oof/<variant>/fold<k>.npz`` paths."""
    if len(npz_paths) != len(weights):
        raise ValueError(f"{len(npz_paths)} OOF files but {len(weights)} weights")
    out: dict[int, list[tuple[Path, float]]] = {}
    for p, w in zip(npz_paths, weights):
        out.setdefault(int(Path(p).stem.removeprefix("fold")), []).append((Path(p), float(w)))
    return out


def _data_uri(rgb: np.ndarray) -> str:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
    if not ok:
        raise OSError("JPEG encoding of a contact sheet failed")
    return "data:image/jpeg;base64," + base64.b64encode(buf.tobytes()).decode()


def write_page(
    out: Path,
    images: pd.DataFrame,
    oof: dict[int, list[tuple[Path, float]]],
    threshold: float,
    raw: Path,
    worst: int = 6,
    test_score: Path | None = None,
) -> pd.DataFrame:
    """Write ``cars.html`` (and ``cars.csv`` beside it): the car and view tables and the worst cars' sheets."""
    per_car = json.loads(Path(test_score).read_text()).get("per_car") if test_score else None
    meta = car_metadata(raw)
    cars = car_table(images, per_car, meta)
    views = view_table(images)
    cars.to_csv(out.with_suffix(".csv"), index=False)
    oof_cars = cars[cars["set"] == "oof"]
    names = (
        {r.car: " ".join(str(x) for x in (r.year, r.make, r.model) if x) for r in meta.itertuples()}
        if meta is not None
        else {}
    )
    sheets = {c: car_sheet(c, images, oof, threshold, raw, name=names.get(c, "")) for c in oof_cars["car"].head(worst)}
    figures = [
        f"<figure><img alt='{html.escape(c)}' src='{_data_uri(s)}' style='max-width:100%'></figure>"
        for c, s in sheets.items()
    ]
    head = (
        f"OOF ensemble Dice at threshold {threshold:.4f}: mean {images['dice'].mean():.5f} over "
        f"{len(images)} images of {images['car'].nunique()} cars; worst car {oof_cars['mean_dice'].min():.5f}."
        + ("" if per_car else " Test Dice per car: unknown (no test masks).")
    )
    body = (
        f"<p>{html.escape(head)}</p><h3>Cars, worst first</h3>{cars.round(5).to_html(index=False, border=0)}"
        f"<h3>Views, worst first</h3><p>A view fails on a car when its Dice is below the median image Dice "
        f"minus {FAIL_MARGIN}.</p>{views.round(5).to_html(index=False, border=0)}"
        f"<h3>The {len(figures)} worst cars</h3>" + "\n".join(figures)
    )
    out.write_text(html_page("Worst cars first", body))
    return cars
