"""Synthetic Carvana data: a deterministic stand-in for the Kaggle download, with known outliers.

``generate`` writes the exact Kaggle layout into ``<root>/raw`` (train/, train_masks/, test/, train_masks.csv,
metadata.csv, sample_submission.csv) plus the answers into ``<root>/ground_truth`` (test_masks.csv and
outlier_cars.txt). Photos are 16 turntable views of procedurally drawn cars in a light studio (see
``synthetic_draw``); a quarter of the cars are white, silver or light grey, close to the backdrop. The first
``n_outlier_cars`` test cars are vehicles unlike any training car: a tall van, a car at 1/3 scale, or a car
with both front doors wide open.

Same arguments give byte-identical files: every car draws from its own generator seeded by (seed, car id), so
the number of worker processes changes nothing. Everything is written into ``.raw.tmp-<pid>`` and
``.ground_truth.tmp-<pid>`` first and renamed into place last, raw/ after ground_truth/, so a killed run never
leaves a raw/ that looks complete.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
from pathlib import Path
from typing import NamedTuple

import numpy as np

from carvana_seg.core import layout, rle
from carvana_seg.core.images import write_jpeg, write_mask_gif
from carvana_seg.data import synthetic_draw as draw
from carvana_seg.pipeline import staging
from carvana_seg.pipeline.errors import ConfigError
from carvana_seg.pipeline.pool import worker_pool

RAW_DIR = "raw"
GROUND_TRUTH_DIR = "ground_truth"
TEST_MASKS_CSV = "test_masks.csv"
OUTLIER_CARS_TXT = "outlier_cars.txt"
MODELS = {"sedan": "Saloon", "hatch": "Hatch", "suv": "Crossover", "van": "Cargo"}
TRIMS1 = ["Base", "LX", "EX", "Sport", "Limited", "Touring"]
TRIMS2 = ["", "", "w/Tech", "AWD", "FWD", "w/Nav"]


class _Job(NamedTuple):
    car: str
    split: str  # "train" or "test"
    kind: str  # "normal" or one of synthetic_draw.OUTLIER_KINDS
    seed: int
    width: int
    height: int
    quality: int
    raw: str  # the temporary raw directory


def generate(root: Path, *, n_train_cars: int, n_test_cars: int, n_outlier_cars: int,
             width: int = 1918, height: int = 1280, jpeg_quality: int = 90, seed: int = 0,
             workers: int = 1) -> None:
    """Write a synthetic Carvana data set into ``root/raw`` and its answers into ``root/ground_truth``."""
    _check(n_train_cars=n_train_cars, n_test_cars=n_test_cars, n_outlier_cars=n_outlier_cars, width=width,
           height=height, jpeg_quality=jpeg_quality, seed=seed, workers=workers)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    cars = _car_ids(rng, n_train_cars + n_test_cars)
    train, test = cars[:n_train_cars], cars[n_train_cars:]
    kinds = {car: draw.OUTLIER_KINDS[int(rng.integers(len(draw.OUTLIER_KINDS)))] for car in test[:n_outlier_cars]}
    tmp_raw, tmp_gt = root / f".raw.tmp-{os.getpid()}", root / f".ground_truth.tmp-{os.getpid()}"
    try:
        with staging.write_errors(root / RAW_DIR, tmp_raw, tmp_gt):
            staging.sweep(root / RAW_DIR, root / GROUND_TRUTH_DIR)  # a killed run's temporaries
            for d in (tmp_raw, tmp_gt):
                shutil.rmtree(d, ignore_errors=True)
            for sub in (layout.TRAIN_DIR, layout.MASK_DIR, layout.TEST_DIR):
                (tmp_raw / sub).mkdir(parents=True)
            tmp_gt.mkdir()
            jobs = [_Job(car, split, kinds.get(car, "normal"), seed, width, height, jpeg_quality, str(tmp_raw))
                    for split, ids in (("train", train), ("test", test)) for car in ids]
            with worker_pool(workers, len(jobs)) as pool:
                results = pool.map(_render_car, jobs, chunksize=1)
            train_rows = sorted(row for job, (_, rows) in zip(jobs, results) if job.split == "train" for row in rows)
            test_rows = sorted(row for job, (_, rows) in zip(jobs, results) if job.split == "test" for row in rows)
            _write_text(tmp_raw / layout.TRAIN_MASKS_CSV, _mask_csv(train_rows))
            _write_text(tmp_gt / TEST_MASKS_CSV, _mask_csv(test_rows))
            _write_text(tmp_raw / layout.SAMPLE_SUBMISSION_CSV, _mask_csv([(img, "1 1") for img, _ in test_rows]))
            _write_text(tmp_raw / layout.METADATA_CSV, _metadata_csv(sorted(meta for meta, _ in results)))
            _write_text(tmp_gt / OUTLIER_CARS_TXT, "".join(f"{car}\n" for car in sorted(kinds)))
            _swap_into_place(root, tmp_raw, tmp_gt)
    except BaseException:
        for d in (tmp_raw, tmp_gt):
            shutil.rmtree(d, ignore_errors=True)
        raise


def _check(**kw: int) -> None:
    for key, value in kw.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ConfigError(f"synthetic.{key}: expected an integer, got {value!r}")
    minimum = {"n_train_cars": 0, "n_test_cars": 0, "n_outlier_cars": 0, "width": 64, "height": 64,
               "jpeg_quality": 1, "seed": 0, "workers": 1}
    for key, low in minimum.items():
        if kw[key] < low:
            raise ConfigError(f"synthetic.{key}: must be >= {low}, got {kw[key]}")
    if kw["jpeg_quality"] > 100:
        raise ConfigError(f"synthetic.jpeg_quality: must be <= 100, got {kw['jpeg_quality']}")
    if kw["n_outlier_cars"] > kw["n_test_cars"]:
        raise ConfigError(
            f"synthetic.n_outlier_cars ({kw['n_outlier_cars']}) exceeds n_test_cars ({kw['n_test_cars']})")


def _car_ids(rng: np.random.Generator, n: int) -> list[str]:
    """``n`` distinct 12-hex car ids, in generation order."""
    ids: list[str] = []
    while len(ids) < n:
        car = f"{int(rng.integers(0, 1 << 48)):012x}"
        if car not in ids:
            ids.append(car)
    return ids


def _render_car(job: _Job) -> tuple[tuple[str, ...], list[tuple[str, str]]]:
    """Draw and write the 16 photos (and training masks) of one car; return its metadata row and RLE rows."""
    rng = np.random.default_rng([job.seed, int(job.car, 16)])
    car = draw.sample_car(rng, job.kind)
    bg = draw.studio(rng, job.width, job.height)
    raw = Path(job.raw)
    rows = []
    for v in range(1, layout.N_VIEWS + 1):
        theta = (v - 1) * 360.0 / layout.N_VIEWS
        img, mask = draw.render_view(car, bg, theta, rng)
        image_id = f"{job.car}_{v:02d}"
        out = layout.TRAIN_DIR if job.split == "train" else layout.TEST_DIR
        write_jpeg(raw / out / layout.image_file(image_id), img, quality=job.quality)
        if job.split == "train":
            write_mask_gif(raw / layout.MASK_DIR / layout.mask_file(image_id), mask)
        rows.append((layout.image_file(image_id), rle.encode(mask)))
    meta = (job.car, str(int(rng.integers(2001, 2018))), "Synth", MODELS[car["style"]],
            TRIMS1[int(rng.integers(len(TRIMS1)))], TRIMS2[int(rng.integers(len(TRIMS2)))])
    return meta, rows


def _mask_csv(rows: list[tuple[str, str]]) -> str:
    return "img,rle_mask\n" + "".join(f"{img},{mask}\n" for img, mask in rows)


def _metadata_csv(rows: list[tuple[str, ...]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, quoting=csv.QUOTE_ALL, lineterminator="\n")
    writer.writerow(["id", "year", "make", "model", "trim1", "trim2"])
    writer.writerows(rows)
    return buf.getvalue()


def _write_text(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8", newline="") as fh:
        fh.write(text)


def _swap_into_place(root: Path, tmp_raw: Path, tmp_gt: Path) -> None:
    """Replace raw/ and ground_truth/; raw/ disappears first and reappears last, so it is complete or absent."""
    pid = os.getpid()
    old = []
    for name in (RAW_DIR, GROUND_TRUTH_DIR):
        dest = root / name
        if dest.exists():
            old.append(root / f".{name}.old-{pid}")
            shutil.rmtree(old[-1], ignore_errors=True)
            os.replace(dest, old[-1])
    os.replace(tmp_gt, root / GROUND_TRUTH_DIR)
    os.replace(tmp_raw, root / RAW_DIR)
    for d in old:
        shutil.rmtree(d, ignore_errors=True)
