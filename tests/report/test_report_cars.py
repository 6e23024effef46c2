"""Worst cars first (report_cars.py): per-car and per-view OOF Dice tables and outline contact sheets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from carvana_seg.core import layout
from carvana_seg.core.images import read_mask
from carvana_seg.core.metrics import dice
from carvana_seg.data import folds
from carvana_seg.report import cars as report_cars
from tests.helpers import make_layout


def _fixture(tmp_path: Path) -> tuple[Path, pd.DataFrame, dict]:
    """3 tiny cars; OOF maps = the true masks, except car 0 whose view 3 is shifted (a failing view)."""
    raw = make_layout(tmp_path / "raw", n_cars=3, w=96, h=64, seed=3)
    table = folds.assign_folds(folds.mask_areas(raw), k=3, seed=0)
    table.to_csv(tmp_path / "folds.csv", index=False)
    bad_car = sorted(table["car"])[0]
    rows, npz = [], {}
    for r in table.itertuples():
        truth = read_mask(raw / layout.MASK_DIR / layout.mask_file(r.img)) != 0
        pred = np.roll(truth, 12, axis=1) if (r.car == bad_car and r.view == 3) else truth
        npz.setdefault(r.fold, {})[r.img] = (pred * 255).astype(np.uint8)
        rows.append({"img": r.img, "dice": dice(pred, truth)})
    paths = []
    for fold, arrays in npz.items():
        p = tmp_path / "oof" / "v" / f"fold{fold}.npz"
        p.parent.mkdir(parents=True, exist_ok=True)
        np.savez(p, **arrays)
        paths.append(str(p))
    pd.DataFrame(rows).to_csv(tmp_path / "oof_image_dice.csv", index=False)
    images = report_cars.per_image(tmp_path / "oof_image_dice.csv", tmp_path / "folds.csv")
    return raw, images, {"bad_car": bad_car, "oof": report_cars.oof_sources(paths, [1.0] * len(paths))}


def test_tables_put_the_worst_car_and_view_first(tmp_path: Path) -> None:
    _raw, images, info = _fixture(tmp_path)
    cars = report_cars.car_table(images, {"testcar": 0.5})
    assert cars.loc[0, "car"] == "testcar" and cars.loc[0, "set"] == "test"
    oof = cars[cars["set"] == "oof"].reset_index(drop=True)
    assert oof.loc[0, "car"] == info["bad_car"] and oof.loc[0, "worst_view"] == 3 and len(oof) == 3
    views = report_cars.view_table(images)
    assert views.loc[0, "view"] == 3 and views.loc[0, "cars_failing"] == 1 and len(views) == 16


def test_outline_tile_draws_lines_not_a_fill() -> None:
    photo = np.full((80, 120, 3), 100, np.uint8)
    mask = np.zeros((160, 240), bool)
    mask[40:120, 60:180] = True
    tile = report_cars.outline_tile(photo, mask, mask)
    changed = np.any(tile != photo, axis=2)
    assert 0 < changed.sum() < 0.15 * mask[::2, ::2].sum()  # an outline: a thin ring, not the car's area
    assert not changed[40, 60] and changed[20, 30]  # the inside keeps the photo, the corner is drawn


def test_page_has_tables_and_the_worst_sheets(tmp_path: Path) -> None:
    raw, images, info = _fixture(tmp_path)
    out = tmp_path / "report" / "cars.html"
    out.parent.mkdir()
    cars = report_cars.write_page(out, images, info["oof"], 0.5, raw, worst=2)
    text = out.read_text()
    assert "Cars, worst first" in text and "Views, worst first" in text and text.count("data:image/jpeg") == 2
    assert "unknown (no test masks)" in text and cars.loc[0, "car"] == info["bad_car"]
    assert pd.read_csv(out.with_suffix(".csv"))["car"].tolist()[0] == info["bad_car"]


def test_cars_are_named_by_year_make_and_model(tmp_path: Path) -> None:
    raw, images, info = _fixture(tmp_path)
    cars = sorted(images["car"].unique())
    (raw / layout.METADATA_CSV).write_text(
        '"id","year","make","model","trim1","trim2"\n'
        f'"{cars[0]}","2015","Ford","F-150","XL","SuperCrew"\n"{cars[1]}","","Chevrolet","Silverado","LT",""\n'
    )
    out = tmp_path / "cars.html"
    table = report_cars.write_page(out, images, info["oof"], 0.5, raw, worst=1)
    first = table.iloc[0]
    assert (first["car"], first["make"], first["model"], str(first["year"])) == (cars[0], "Ford", "F-150", "2015")
    assert table.set_index("car").loc[cars[1], "year"] == "" and table.set_index("car").loc[cars[2], "make"] == ""
    assert list(table.columns[:5]) == ["set", "car", "year", "make", "model"]
    text = out.read_text()
    assert "F-150" in text and "Silverado" in text
    (raw / layout.METADATA_CSV).write_text('"id","make"\n"x","Ford"\n')
    with pytest.raises(ValueError, match=r"metadata.csv: no column\(s\) \['model', 'year'\]"):
        report_cars.car_metadata(raw)
