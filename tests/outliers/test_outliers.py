"""Outlier-car check: features, robust scores, the fix, the stage's outputs, the submission override, the DAG."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from carvana_seg.core import rle
from carvana_seg.inference import variant_masks
from carvana_seg.outliers.features import fix_mask, image_features
from carvana_seg.outliers.profile import robust_z
from carvana_seg.outliers.sheets import sheet_size
from carvana_seg.outliers.stage import COLUMNS
from carvana_seg.pipeline import cli
from tests.helpers import OUTLIER_HW, PLANTED, ellipse, outlier_cfg
from tests.helpers import fabricate_outliers as fabricate

H, W = OUTLIER_HW


def run_stage(root: Path, raw: Path, cfg: dict, models: list[Path] = ()) -> int:
    argv = [
        "outliers",
        "--cfg",
        json.dumps(cfg),
        "--manifest",
        str(root / "test_probs.json"),
        "--threshold",
        str(root / "threshold.json"),
        "--folds",
        str(root / "folds.csv"),
        "--raw",
        str(raw),
        "--out",
        str(root / "outliers.csv"),
        "--scores",
        str(root / "scores.csv"),
        "--fixes",
        str(root / "fixes.csv"),
        "--sheets",
        str(root / "outliers" / "sheets.json"),
        "--threads",
        "2",
        "--device",
        "cpu",
        "--models",
        *map(str, models),
    ]
    return cli.main(argv)


def test_features_on_a_fabricated_mask():
    mask = np.zeros((40, 80), bool)
    mask[10:30, 20:60] = True  # 800 px
    mask[18:22, 38:42] = False  # a 16 px hole
    mask[0:2, 0:3] = True  # a 6 px blob on the top and left edges
    prob = np.where(mask, 250, 0).astype(np.uint8)
    prob[10, 20:60] = 128  # 40 uncertain pixels (still car at t=0.5)
    other = mask.copy()
    other[10:30, 40:60] = False  # variant b sees half the car
    packed = variant_masks.pack(mask.shape, [mask.astype(np.float32), other.astype(np.float32)])
    f = image_features(prob, 0.5, 0.1, 0.9, 1, 0.0, packed, ["a", "b"])
    assert f["area"] == pytest.approx((800 - 16 + 6) / 3200)
    assert f["n_components"] == 2 and f["extra_share"] == pytest.approx(6 / 790)
    assert f["hole_share"] == pytest.approx(16 / 806)
    assert (f["border_top"], f["border_left"], f["border_bottom"], f["border_right"]) == (3, 2, 0, 0)
    assert f["uncertain_per_mask_px"] == pytest.approx(40 / 790)
    assert 0.6 < f["variant_dice"] < 0.72 and f["area_a"] > f["area_b"]
    fixed = fix_mask(mask)
    expected = np.zeros_like(mask)
    expected[10:30, 20:60] = True
    np.testing.assert_array_equal(fixed, expected)  # blob gone, hole filled
    assert image_features(prob, 0.5, 0.1, 0.9, 1, 3.0)["hole_share"] == 0  # a 4x4 hole is narrower than radius 3
    expected[18:22, 38:42] = False
    np.testing.assert_array_equal(fix_mask(mask, min_radius=3.0), expected)  # ... so it stays (running boards)
    small = variant_masks.unpack(packed, mask.shape)
    assert small.shape == (2, 10, 20) and variant_masks.upsample(small[0], mask.shape).shape == mask.shape


def test_robust_z_floor_and_nan():
    z = robust_z(np.array([0.0, 0.0, 0.0, 0.001, np.nan, 0.05]), floor=0.01)
    assert z[-1] == pytest.approx(5.0) and abs(z[3]) < 0.2 and np.isnan(z[4])


def test_stage_flags_the_planted_car_fixes_it_and_the_submission_uses_the_fix(tmp_path):
    data = fabricate(tmp_path)
    assert run_stage(tmp_path, data["raw"], outlier_cfg(repredict="none")) == 0
    table = pd.read_csv(tmp_path / "outliers.csv", keep_default_na=False)
    assert list(table.columns) == COLUMNS
    assert set(table["car"].astype(str).str.zfill(12)) == {PLANTED}  # every normal car passes
    assert len(table) == 16 and all("car_area" in r for r in table["reasons"])
    blob = table[table["img"] == f"{PLANTED}_05.jpg"].iloc[0]
    assert "components" in blob["reasons"] and blob["action"] == "fix" and blob["changed_px"] == 16
    fixes = pd.read_csv(tmp_path / "fixes.csv", keep_default_na=False)
    assert list(fixes["img"]) == [f"{PLANTED}_05.jpg"]
    fixed = rle.decode(fixes["rle_mask"][0], (H, W))
    np.testing.assert_array_equal(fixed, ellipse(0.35, 5))
    sheets = json.loads((tmp_path / "outliers" / "sheets.json").read_text())
    assert [s["car"] for s in sheets["sheets"]] == [PLANTED] and sheets["n_fixed_images"] == 1
    png = cv2.imread(str(tmp_path / "outliers" / f"{PLANTED}.png"))
    assert png is not None and png.shape == (*sheet_size((H, W), 240), 3)
    assert len(pd.read_csv(tmp_path / "scores.csv")) == 96

    out = tmp_path / "submission.csv.gz"
    argv = [
        "submission",
        "--cfg",
        '{"name": "t"}',
        "--manifest",
        str(tmp_path / "test_probs.json"),
        "--threshold",
        str(tmp_path / "threshold.json"),
        "--sample-submission",
        str(data["raw"] / "sample_submission.csv"),
        "--out",
        str(out),
        "--fixes",
        str(tmp_path / "fixes.csv"),
    ]
    assert cli.main(argv) == 0
    sub = pd.read_csv(out, keep_default_na=False).set_index("img")["rle_mask"]
    np.testing.assert_array_equal(rle.decode(sub[f"{PLANTED}_05.jpg"], (H, W)), fixed)
    other = f"{PLANTED}_04"
    np.testing.assert_array_equal(rle.decode(sub[f"{other}.jpg"], (H, W)), data["probs"][other] >= 128)

    (tmp_path / "bad.csv").write_text("img,rle_mask\nffffffffffff_01.jpg,1 1\n")
    assert cli.main(argv[:-1] + [str(tmp_path / "bad.csv")]) == 2  # a fix for an unknown image is an error


def test_flag_action_changes_nothing(tmp_path):
    data = fabricate(tmp_path)
    assert run_stage(tmp_path, data["raw"], outlier_cfg(action="flag")) == 0
    table = pd.read_csv(tmp_path / "outliers.csv", keep_default_na=False)
    assert len(table) == 16 and set(table["action"]) == {"flag"} and (table["changed_px"] == 0).all()
    assert pd.read_csv(tmp_path / "fixes.csv").empty


def test_zoom_crop_geometry_and_paste():
    from carvana_seg.outliers.zoom import crop_box, zoom_prob

    mask = np.zeros((120, 180), bool)
    mask[50:60, 20:40] = True  # a small car near the left edge
    box = crop_box(mask, margin=0.2, min_share=1 / 3)
    assert box == (0, 35, 60, 75)  # 1/3 of the width, photo aspect, shifted inside the photo, not cut
    assert crop_box(np.ones((120, 180), bool), 0.2, 1 / 3) is None  # a full-frame car: nothing to zoom
    photo = np.zeros((120, 180, 3), np.uint8)
    photo[52:58, 22:38] = 255
    prob = np.where(mask, 200, 0).astype(np.uint8)
    seen = []
    new = zoom_prob(photo, prob, 0.5, 0.2, 1 / 3, lambda crop: seen.append(crop.shape) or (crop[..., 0] > 0) * 255)
    assert seen == [(40, 60, 3)] and new.dtype == np.uint8
    np.testing.assert_array_equal(new >= 128, photo[..., 0] > 0)  # pasted back where it came from


def test_stage_zooms_the_small_car_with_the_models(tmp_path):
    from tests.helpers import MODEL_VARIANTS as VARIANTS
    from tests.helpers import make_models

    data = fabricate(tmp_path)
    cfg = dict(outlier_cfg(), variants=VARIANTS)
    assert run_stage(tmp_path, data["raw"], cfg) == 2  # zoom without the models: one clear error
    assert run_stage(tmp_path, data["raw"], cfg, make_models(tmp_path, folds=1)) == 0
    table = pd.read_csv(tmp_path / "outliers.csv", keep_default_na=False)
    assert len(table) == 16 and table["fix"].str.startswith("zoom+largest_component").all()
    fixes = pd.read_csv(tmp_path / "fixes.csv", keep_default_na=False)
    for img, mask in zip(fixes["img"], fixes["rle_mask"]):
        assert img.startswith(PLANTED) and rle.validate(mask, (H, W)) is None
