"""Fabricated results of a finished run (no training): what the report-figures stage and ``--report`` read."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

CARS = ["0cdf5b5d0ce1", "11acc40dc0ea", "1390696b70b6", "1a17a1bd648b"]
FLAGGED = "1a17a1bd648b"
METRIC_COLUMNS = ["epoch", "train_loss", "val_loss", "val_dice", "lr", "seconds", "images_per_s", "data_share"]
BENCH_COLUMNS = ["s", "h:m:s", "max_rss", "max_vms", "max_uss", "max_pss", "io_in", "io_out", "mean_load", "cpu_time"]


def _bench(path: Path, seconds: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    row = [seconds, "0:00:01", 250.5, 900.0, 100.0, 120.0, 0.1, 0.2, 95.0, seconds * 1.5]
    pd.DataFrame([row], columns=BENCH_COLUMNS).to_csv(path, sep="\t", index=False)


def fabricate(res: Path, variants: list[str], folds: list[int], rounds: int = 1, seed: int = 0) -> None:
    """Every file the report reads under ``res`` (results/<name>); rounds > 1 adds round<r>/ pseudo-label files."""
    rng = np.random.default_rng(seed)
    for r in range(1, rounds + 1):
        rdir = res if r == 1 else res / f"round{r}"
        for v in variants:
            for f in folds:
                epochs = np.arange(1, 6)
                rows = np.column_stack(
                    [
                        epochs,
                        0.6 / epochs,
                        0.5 / epochs + 0.02,
                        0.99 - 0.2 / epochs,
                        np.where(epochs < 4, 5e-4, 5e-5),
                        np.full(5, 7.5),
                        np.full(5, 19.0),
                        np.full(5, 0.02),
                    ]
                )
                path = rdir / "models" / v / f"fold{f}" / "metrics.csv"
                path.parent.mkdir(parents=True, exist_ok=True)
                pd.DataFrame(rows, columns=METRIC_COLUMNS).astype({"epoch": int}).to_csv(path, index=False)
                _bench(rdir / "benchmarks" / "train" / f"{v}_fold{f}.tsv", 30.0 + f)
        if r > 1:
            imgs = [f"{c}_{k:02d}.jpg" for c in CARS for k in range(1, 17)]
            conf = rng.uniform(0.5, 1.0, len(imgs))
            pd.DataFrame(
                {"img": imgs, "car": [i[:12] for i in imgs], "confidence": conf, "selected": (conf > 0.75).astype(int)}
            ).to_csv(rdir / "pseudo_labels.csv", index=False)
    rows = [
        {
            "img": f"{c}_{k:02d}.jpg",
            "car": c,
            "fold": i % len(folds),
            "variant": v,
            "dice": float(rng.uniform(0.95, 0.995)),
        }
        for v in variants
        for i, c in enumerate(CARS)
        for k in (1, 2, 3)
    ]
    pd.DataFrame(rows).to_csv(res / "oof_dice.csv", index=False)
    # Worst cars first (report/cars.py): each image's OOF ensemble Dice, the folds and small OOF maps; no photos
    # or masks (the sheets draw grey tiles and the predicted outline only).
    imgs = pd.DataFrame(
        [
            {"img": f"{c}_{k:02d}", "car": c, "view": k, "fold": i % len(folds), "area": 0.3}
            for i, c in enumerate(CARS)
            for k in (1, 2, 3)
        ]
    )
    imgs.to_csv(res / "folds.csv", index=False)
    imgs.assign(dice=rng.uniform(0.95, 0.995, len(imgs)))[["img", "dice"]].to_csv(
        (res if rounds == 1 else res / f"round{rounds}") / "oof_image_dice.csv", index=False
    )
    (res / "test_score.json").write_text(
        json.dumps({"mean_dice": 0.98, "n_images": 16, "per_car": {"feedc0ffee00": 0.97}})
    )  # synthetic: known
    car_map = np.zeros((64, 96), np.uint8)
    car_map[16:48, 20:76] = 255
    for v in variants:
        for f in folds:
            (res / "oof" / v).mkdir(parents=True, exist_ok=True)
            np.savez(res / "oof" / v / f"fold{f}.npz", **{i: car_map for i in imgs.loc[imgs["fold"] == f, "img"]})
    last = res if rounds == 1 else res / f"round{rounds}"
    t = np.arange(256) / 255
    pd.DataFrame({"threshold": t, "mean_dice": 0.99 - (t - 0.45) ** 2}).to_csv(
        last / "threshold_curve.csv", index=False
    )
    (last / "threshold.json").write_text(
        json.dumps({"threshold": 0.45, "level": 115, "mean_dice": 0.99, "source": "search", "n_images": 12})
    )
    pd.DataFrame(
        [
            {
                "img": f"{FLAGGED}_05.jpg",
                "car": FLAGGED,
                "view": 5,
                "reasons": "area_view",
                "action": "fix",
                "fix": "largest_component",
                "changed_px": 420,
                "score": 7.5,
            }
        ]
    ).to_csv(last / "outliers.csv", index=False)
    (last / "outliers").mkdir(parents=True, exist_ok=True)
    sheet = np.zeros((120, 160, 3), np.uint8)
    sheet[20:100, 30:130] = (200, 60, 60)
    Image.fromarray(sheet).save(last / "outliers" / f"{FLAGGED}.png")
    (last / "outliers" / "contact_sheets.json").write_text(
        json.dumps(
            {
                "action": "fix",
                "n_images": 64,
                "n_flagged_images": 1,
                "n_flagged_cars": 1,
                "n_fixed_images": 1,
                "sheets": [{"car": FLAGGED, "file": f"{FLAGGED}.png", "title": f"{FLAGGED}: area_view"}],
            }
        )
    )
    (last / "test_probs.json").write_text(
        json.dumps(
            {
                "n_images": 64,
                "n_listed": 100,
                "partial": True,
                "seconds": 8.0,
                "images_per_s": 8.0,
                "device": "cpu",
                "shards": [],
            }
        )
    )
    if rounds > 1:
        (res / "pseudo_gain.json").write_text(
            json.dumps(
                {
                    "rounds": [
                        {"round": r, "oof_ensemble_dice": 0.98 + 0.002 * r, "test_dice": 0.97 + 0.003 * r}
                        for r in range(1, rounds + 1)
                    ],
                    "verdict": "fabricated",
                }
            )
        )
    for stage, s in (
        ("fetch", 4.0),
        ("validate", 2.0),
        ("resize_96x64", 3.0),
        ("threshold", 1.0),
        ("ensemble", 8.0),
        ("outliers", 2.5),
        ("submission", 1.5),
    ):
        _bench(res / "benchmarks" / f"{stage}.tsv", s)
    for v in variants:
        for f in folds:
            _bench(res / "benchmarks" / "oof" / f"{v}_fold{f}.tsv", 5.0)
