"""Outlier-car check: features, robust scores, the fix, the stage's outputs, the submission override, the DAG."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import yaml

from carvana_seg.core import rle
from carvana_seg.core.images import write_jpeg
from carvana_seg.inference import variant_masks
from carvana_seg.outliers.features import fix_mask, image_features
from carvana_seg.outliers.profile import robust_z
from carvana_seg.outliers.sheets import sheet_size
from carvana_seg.outliers.stage import COLUMNS
from carvana_seg.pipeline import cli, config
from carvana_seg.pipeline.staging import NpzWriter

H, W = 48, 64
PLANTED = "00000000dead"  # a 1/3-size car whose view 5 also has a stray blob


def ellipse(scale: float, view: int) -> np.ndarray:
    """A 'car' whose area follows the view angle like a turntable silhouette."""
    yy, xx = np.mgrid[0:H, 0:W]
    rx = W * scale * (0.22 + 0.12 * abs(np.sin(2 * np.pi * (view - 1) / 16)))
    ry = H * scale * 0.22
    return ((xx - W / 2) / rx) ** 2 + ((yy - H / 2) / ry) ** 2 <= 1


def fabricate(root: Path, n_train: int = 8, n_test: int = 6) -> dict:
    """Raw layout (train masks, test photos), folds.csv, ensemble shards + variant masks + manifest, threshold."""
    rng = np.random.default_rng(0)
    raw = root / "raw"
    for d in ("train", "test"):
        (raw / d).mkdir(parents=True)
    write_jpeg(raw / "train" / "000000000001_01.jpg", np.zeros((H, W, 3), np.uint8))
    train, folds = [], []
    for c in range(n_train):
        car, s = f"{c + 1:012x}", rng.uniform(0.9, 1.1)
        for v in range(1, 17):
            m = ellipse(s, v)
            train.append(f"{car}_{v:02d}.jpg,{rle.encode(m)}")
            folds.append({"img": f"{car}_{v:02d}", "car": car, "view": v, "fold": c % 2, "area": m.mean()})
    (raw / "train_masks.csv").write_text("img,rle_mask\n" + "\n".join(train) + "\n")
    pd.DataFrame(folds).to_csv(root / "folds.csv", index=False)
    cars = [f"{c + 100:012x}" for c in range(n_test - 1)] + [PLANTED]
    probs = {}
    for car in cars:
        s = 0.35 if car == PLANTED else rng.uniform(0.9, 1.1)
        for v in range(1, 17):
            m = ellipse(s, v)
            if car == PLANTED and v == 5:
                m[4:8, 4:8] = True  # a stray blob (aligned with the 1/4 grid): the fix must remove it
            probs[f"{car}_{v:02d}"] = np.where(m, 240, 10).astype(np.uint8)
    ids = sorted(probs)
    (raw / "sample_submission.csv").write_text("img,rle_mask\n" + "".join(f"{i}.jpg,1 1\n" for i in ids))
    (root / "probs").mkdir()
    shards = []
    for k, chunk in enumerate((ids[:50], ids[50:])):
        writers = [NpzWriter(root / "probs" / f"shard_{k:05d}.npz"),
                   NpzWriter(root / "probs" / variant_masks.file_name(k))]
        for i in chunk:
            write_jpeg(raw / "test" / f"{i}.jpg", np.full((H, W, 3), 200, np.uint8))
            writers[0].add(i, probs[i])
            writers[1].add(i, variant_masks.pack((H, W), [probs[i] / 255.0] * 2))
        for w in writers:
            w.close()
        shards.append({"file": f"shard_{k:05d}.npz", "n_images": len(chunk)})
    vm = {"files": [variant_masks.file_name(k) for k in range(2)], "variants": ["a", "b"], "scale": 4}
    (root / "test_probs.json").write_text(json.dumps({"shard_dir": str(root / "probs"), "shards": shards,
                                                     "variant_masks": vm}))
    (root / "threshold.json").write_text(json.dumps({"threshold": 0.5}))
    return {"raw": raw, "probs": probs, "ids": ids}


def outlier_cfg(**changes) -> dict:
    base = yaml.safe_load((config.PROJECT_ROOT / "config/demo.yaml").read_text())
    base["outliers"] = changes
    return config.stage_config(config.resolve(base), "outliers")


def run_stage(root: Path, raw: Path, cfg: dict, models: list[Path] = ()) -> int:
    argv = ["outliers", "--cfg", json.dumps(cfg), "--manifest", str(root / "test_probs.json"),
            "--threshold", str(root / "threshold.json"), "--folds", str(root / "folds.csv"), "--raw", str(raw),
            "--out", str(root / "outliers.csv"), "--scores", str(root / "scores.csv"),
            "--fixes", str(root / "fixes.csv"), "--sheets", str(root / "outliers" / "sheets.json"), "--threads", "2",
             "--device", "cpu", "--models", *map(str, models)]
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
    argv = ["submission", "--cfg", '{"name": "t"}', "--manifest", str(tmp_path / "test_probs.json"),
            "--threshold", str(tmp_path / "threshold.json"), "--sample-submission",
            str(data["raw"] / "sample_submission.csv"), "--out", str(out), "--fixes", str(tmp_path / "fixes.csv")]
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
