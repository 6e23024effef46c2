"""Threshold search on OOF predictions: exact histogram Dice, known optimum, brute force, config override, DAG."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from carvana_seg.core.images import write_mask_gif
from carvana_seg.core.masks import binarize, level
from carvana_seg.core.metrics import dice
from carvana_seg.inference import threshold
from carvana_seg.inference.threshold import ensemble_u8, search
from carvana_seg.pipeline import cli
from carvana_seg.pipeline.config import fold_ids
from carvana_seg.pipeline.errors import DataError

H, W = 40, 56
VARIANTS = [
    {"name": "a", "width": 64, "height": 64, "weight": 1.0},
    {"name": "b", "width": 96, "height": 64, "weight": 3.0},
]


def make_oof(root: Path, n_per_fold: int = 6, folds: int = 2, seed: int = 0) -> tuple[Path, list[Path], dict]:
    """Raw masks plus OOF npz of two variants x ``folds`` whose ensemble is best at t = 0.3 (level 77)."""
    rng = np.random.default_rng(seed)
    raw = root / "raw"
    (raw / "train_masks").mkdir(parents=True)
    paths, truth = [], {}
    for f in range(folds):
        ids = [f"{f:02d}{i:010x}_{v:02d}" for i in range(n_per_fold // 2) for v in (1, 2)]
        per_variant: dict[str, dict[str, np.ndarray]] = {"a": {}, "b": {}}
        for image_id in ids:
            mask = np.zeros((H, W), np.uint8)
            y0, x0 = rng.integers(2, 12, 2)
            mask[y0 : y0 + rng.integers(10, 25), x0 : x0 + rng.integers(15, 35)] = 1
            write_mask_gif(raw / "train_masks" / f"{image_id}_mask.gif", mask)
            truth[image_id] = mask
            # car pixels >= level 77 and background <= 76, dense near the boundary: a unique optimum at 77
            car = rng.choice(np.r_[np.full(30, 77), np.arange(77, 256)], size=mask.shape)
            bg = rng.choice(np.r_[np.full(30, 76), np.arange(0, 77)], size=mask.shape)
            target = np.where(mask == 1, car, bg).astype(np.uint8)
            # the weighted mean (1*a + 3*b)/4 of a and b reproduces target: a = b = target
            per_variant["a"][image_id] = target
            per_variant["b"][image_id] = target
        for v in ("a", "b"):
            p = root / "oof" / v / f"fold{f}.npz"
            p.parent.mkdir(parents=True, exist_ok=True)
            np.savez_compressed(p, **per_variant[v])
            paths.append(p)
    cfg = {
        "name": "t",
        "threshold": {"value": None, "coarse_step": 0.05},
        "variants": VARIANTS,
        "folds": {"k": folds, "use": None},
    }
    return raw, paths, cfg


def oof_curve(paths: list[Path], raw: Path, cfg: dict) -> tuple[np.ndarray, int]:
    """``threshold.oof_curve`` with the plain values the stage hands it: weights by variant, the trained folds."""
    return threshold.oof_curve(paths, raw, {v["name"]: v["weight"] for v in cfg["variants"]}, fold_ids(cfg))


def brute_force(paths: list[Path], raw: Path, cfg: dict) -> np.ndarray:
    """Mean Dice at every level, by binarising whole masks (the slow obvious way)."""
    weights = {v["name"]: v["weight"] for v in cfg["variants"]}
    probs: dict[str, list] = {}
    for p in paths:
        with np.load(p) as npz:
            for k in npz.files:
                probs.setdefault(k, []).append((npz[k], weights[p.parent.name]))
    from carvana_seg.core.images import read_mask

    curve = np.zeros(256)
    for image_id, items in probs.items():
        prob = ensemble_u8([a for a, _ in items], [w for _, w in items])
        truth = read_mask(raw / "train_masks" / f"{image_id}_mask.gif")
        curve += [dice(binarize(prob, lv / 255), truth) for lv in range(256)]
    return curve / len(probs)


def test_binarize_convention():
    p = np.array([0, 76, 77, 254, 255], np.uint8)
    assert level(0.3) == 77
    assert binarize(p, 0.3).tolist() == [False, False, True, True, True]
    assert binarize(p, 0.0).all()
    assert binarize(p, 1.0).tolist() == [False, False, False, False, True]


def test_search_finds_known_optimum_and_matches_brute_force(tmp_path):
    raw, paths, cfg = make_oof(tmp_path)
    curve, n = oof_curve(paths, raw, cfg)
    assert n == 12
    expected = brute_force(paths, raw, cfg)
    np.testing.assert_allclose(curve, expected, atol=1e-12)
    best = search(curve, 0.05)
    assert best == int(np.argmax(expected)) == level(0.3)
    assert curve[best] == pytest.approx(1.0)


def test_weighted_mean_uses_variant_weights(tmp_path):
    a, b = np.full((2, 2), 0, np.uint8), np.full((2, 2), 200, np.uint8)
    assert ensemble_u8([a, b], [1.0, 3.0]).tolist() == [[150, 150], [150, 150]]
    raw, paths, cfg = make_oof(tmp_path)
    # variant b carries weight 3 of 4: replacing a's maps with zeros shifts the ensemble to 3/4 of b's values
    for p in paths:
        if p.parent.name == "a":
            with np.load(p) as npz:
                np.savez_compressed(p, **{k: np.zeros_like(npz[k]) for k in npz.files})
    np.testing.assert_allclose(oof_curve(paths, raw, cfg)[0], brute_force(paths, raw, cfg), atol=1e-12)


def test_cli_search_and_config_override(tmp_path):
    raw, paths, cfg = make_oof(tmp_path)
    out, curve_csv = tmp_path / "threshold.json", tmp_path / "curve.csv"
    argv = ["threshold", "--oof", *map(str, paths), "--raw", str(raw), "--out", str(out), "--curve", str(curve_csv)]
    assert cli.main([*argv, "--cfg", json.dumps(cfg), "--threads", "2"]) == 0
    result = json.loads(out.read_text())
    assert result["source"] == "search" and result["level"] == 77 and result["n_images"] == 12
    assert result["threshold"] == pytest.approx(0.3, abs=0.5 / 255) and result["mean_dice"] == pytest.approx(1.0)
    table = pd.read_csv(curve_csv)
    assert list(table.columns) == ["threshold", "mean_dice"] and len(table) == 256

    cfg["threshold"]["value"] = 0.5
    assert cli.main([*argv, "--cfg", json.dumps(cfg)]) == 0
    fixed = json.loads(out.read_text())
    assert fixed["source"] == "config" and fixed["threshold"] == 0.5
    assert fixed["mean_dice"] == pytest.approx(table["mean_dice"][level(0.5)], abs=1e-6) and fixed["mean_dice"] < 1.0


def test_missing_fold_or_variant_is_an_error(tmp_path):
    raw, paths, cfg = make_oof(tmp_path)
    with pytest.raises(DataError, match="fold1"):
        oof_curve([p for p in paths if p.name != "fold1.npz" or p.parent.name != "b"], raw, cfg)
    np.savez_compressed(paths[0], **{"ffffffffffff_01": np.zeros((H, W), np.uint8)})
    with pytest.raises(DataError, match="no prediction from variant"):
        oof_curve(paths, raw, cfg)


# The DAG rerun property of threshold.value is tested in tests/pipeline/test_rerun.py.


def test_per_image_dice_at_the_chosen_level_averages_to_the_curve(tmp_path):
    """The threshold stage's per-image table (report: worst cars first) agrees with its mean-Dice curve."""
    raw, paths, cfg = make_oof(tmp_path)
    ids, curves = threshold.oof_image_curves(
        paths, raw, {v["name"]: v["weight"] for v in cfg["variants"]}, fold_ids(cfg)
    )
    assert len(ids) == len(set(ids)) == 12 and curves.shape == (12, 256)
    np.testing.assert_allclose(curves.mean(axis=0), oof_curve(paths, raw, cfg)[0])
    assert np.allclose(curves[:, 77], 1.0)  # every image is perfect at the optimum level of make_oof
