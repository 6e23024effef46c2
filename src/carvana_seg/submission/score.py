"""The ``score`` stage: mean Dice of a submission against true test masks, both as RLE CSVs.

Used on synthetic data, whose generator keeps the test masks (``data/<name>/ground_truth/test_masks.csv``), so
the whole pipeline is measured end to end exactly as Kaggle would score it. Per-car means show which cars
(e.g. the synthetic outliers) the ensemble gets wrong.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections import defaultdict
from pathlib import Path

import numpy as np

from carvana_seg.core import layout, rle
from carvana_seg.core.images import image_size
from carvana_seg.core.metrics import dice
from carvana_seg.pipeline import staging
from carvana_seg.pipeline.errors import DataError
from carvana_seg.submission.writer import read_rows

log = logging.getLogger(__name__)


def read_rle_csv(path: str | os.PathLike) -> dict[str, str]:
    """``{image name: rle}`` of an ``img,rle_mask`` CSV (gzip allowed); duplicates are an error."""
    rows = read_rows(path)
    header = next(rows, None)
    if not header or len(header) != 2:
        raise DataError(f"{path}: expected a 2-column img,rle_mask header, got {header}")
    out: dict[str, str] = {}
    for n, row in enumerate(rows, start=1):
        if not row:
            continue
        if len(row) != 2:
            raise DataError(f"{path}: row {n}: expected 2 fields, got {len(row)}")
        if row[0] in out:
            raise DataError(f"{path}: row {n}: {row[0]} appears more than once")
        out[row[0]] = row[1]
    return out


def parse_shape(text: str) -> tuple[int, int]:
    """``--size "1918x1280"`` (WIDTHxHEIGHT, as every size the project writes) -> the masks' numpy shape
    (1280, 1918)."""
    try:
        w, h = layout.parse_size(text)
    except ValueError as exc:
        raise DataError(str(exc)) from None
    return h, w


def score(
    submission: str | os.PathLike,
    truth: str | os.PathLike,
    shape: tuple[int, int] | None = None,
    raw: str | os.PathLike | None = None,
) -> dict:
    """Mean and per-car Dice; each image's shape is ``shape`` or read from ``raw/test/<img>``."""
    pred = read_rle_csv(submission)
    true = read_rle_csv(truth)
    if set(pred) != set(true):
        extra = sorted(set(pred) - set(true))
        missing = sorted(set(true) - set(pred))
        raise DataError(
            f"{submission} and {truth} differ in images: {len(missing)} missing "
            f"(first {missing[:1]}), {len(extra)} extra (first {extra[:1]})"
        )
    if shape is None and raw is None:
        raise DataError("score needs --size or --raw to know the image size")
    per_image: dict[str, float] = {}
    for img in sorted(true):
        if shape is None:
            w, h = image_size(Path(raw) / layout.TEST_DIR / img)
            img_shape = (h, w)
        else:
            img_shape = shape
        try:
            per_image[img] = dice(rle.decode(pred[img], img_shape), rle.decode(true[img], img_shape))
        except ValueError as exc:
            raise DataError(f"{img}: {exc}") from None
    cars: dict[str, list[float]] = defaultdict(list)
    for img, d in per_image.items():
        cars[layout.car_id(img)].append(d)
    return {
        "mean_dice": float(np.mean(list(per_image.values()))) if per_image else float("nan"),
        "n_images": len(per_image),
        "per_car": {car: float(np.mean(v)) for car, v in sorted(cars.items())},
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--submission", required=True, help="submission CSV (gzip allowed)")
    parser.add_argument("--truth", required=True, help="true masks as an img,rle_mask CSV")
    parser.add_argument("--out", required=True, help="JSON to write")
    size = parser.add_mutually_exclusive_group(required=True)
    size.add_argument("--size", dest="shape", type=parse_shape, help="WIDTHxHEIGHT of every image, e.g. 1918x1280")
    size.add_argument("--raw", help="raw Kaggle layout: image sizes are read from test/")


def run(args: argparse.Namespace, cfg: dict) -> None:  # noqa: ARG001 - no config slice
    result = score(args.submission, args.truth, shape=args.shape, raw=args.raw)
    staging.write_text(Path(args.out), json.dumps(result, indent=2) + "\n")
    log.info("test Dice %.5f over %d images (%d cars)", result["mean_dice"], result["n_images"], len(result["per_car"]))
