"""The ``validate`` stage: check a raw Kaggle layout before anything is trained on it.

``validate_raw`` checks that the required parts exist, that every photo has its mask (and every mask its
photo), that sizes match, that ``train_masks.csv`` lists exactly the training images (and, in full mode, matches
every GIF) and that ``sample_submission.csv`` lists every test image. The full check decodes every
JPEG and GIF in worker processes; ``quick`` reads only headers (and the JPEG end marker). The first problem
found is raised as one DataError naming the file.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
from collections import Counter
from pathlib import Path
from typing import Iterable

from carvana_seg import layout, rle, staging
from carvana_seg.errors import DataError
from carvana_seg.images import image_size, read_image, read_mask

log = logging.getLogger(__name__)

SUBMISSION_HEADER = "img,rle_mask"


def _check_file(task: tuple[str, str, bool, str | None]) -> tuple[int, int, bool]:
    """(width, height, matches) of one photo or mask; decoded fully unless quick. Raises DataError naming the file.

    ``matches`` is False when a fully decoded mask differs from its ``train_masks.csv`` RLE (``expected``).
    """
    kind, path, quick, expected = task
    if quick:
        if kind == "image":
            with open(path, "rb") as fh:
                head = fh.read(2)
                fh.seek(max(0, os.fstat(fh.fileno()).st_size - 2))
                tail = fh.read(2)
            if head == b"\xff\xd8" and tail != b"\xff\xd9":
                raise DataError(f"{path}: truncated JPEG (no end-of-image marker)")
        return (*image_size(path), True)
    arr = read_image(path) if kind == "image" else read_mask(path)
    matches = expected is None or rle.encode(arr) == expected.strip()
    return arr.shape[1], arr.shape[0], matches


def _check_all(tasks: list[tuple[str, str, bool, str | None]], workers: int) -> list[tuple[int, int, bool]]:
    """Run ``_check_file`` over ``tasks`` (in order), in ``workers`` processes when that pays off."""
    quick = bool(tasks) and tasks[0][2]
    if workers <= 1 or len(tasks) < (2000 if quick else 64):  # header reads are too cheap to ship to workers
        return [_check_file(t) for t in tasks]
    chunk = max(1, min(64, len(tasks) // (workers * 8)))
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        return list(pool.imap(_check_file, tasks, chunksize=chunk))


def _ids(directory: Path, suffix: str) -> list[str]:
    """Image ids in ``directory``; raise DataError on a file whose name is not ``<car>_<view><suffix>``."""
    ids = layout.list_ids(directory, suffix)
    for image_id in ids:
        if not layout.ID_RE.match(image_id):
            raise DataError(f"{directory / (image_id + suffix)}: file name is not <12-hex car id>_<2-digit view>")
    return ids


def _read_listing(path: Path) -> dict[str, str]:
    """``{image id: rle}`` from a Kaggle ``img,rle_mask`` csv, checking header, names and duplicates."""
    try:
        with open(path, encoding="utf-8") as fh:
            header = fh.readline().strip()
            if header != SUBMISSION_HEADER:
                raise DataError(f"{path}: header must be '{SUBMISSION_HEADER}', found '{header[:60]}'")
            rows = [line.rstrip("\r\n").split(",", 1) for line in fh if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: unreadable ({exc})") from exc
    listing: dict[str, str] = {}
    for row in rows:
        name = row[0].strip()
        if not name.endswith(".jpg"):
            raise DataError(f"{path}: entry '{name[:60]}' is not an image file name (<id>.jpg)")
        if name[:-4] in listing:
            raise DataError(f"{path}: '{name}' is listed more than once")
        listing[name[:-4]] = row[1] if len(row) > 1 else ""
    return listing


def _size_counts(sizes: Iterable[tuple[int, int]]) -> dict[str, int]:
    return dict(sorted(Counter(f"{w}x{h}" for w, h in sizes).items()))


def validate_raw(raw: Path, quick: bool = False, workers: int = 1) -> dict:
    """Check the Kaggle layout in ``raw``; return a summary dict or raise DataError naming the bad file."""
    raw = Path(raw)
    if not raw.is_dir():
        raise DataError(f"{raw}: raw data directory not found")
    train, masks, test = raw / layout.TRAIN_DIR, raw / layout.MASK_DIR, raw / layout.TEST_DIR
    for part in (train, masks, test):
        if not part.is_dir():
            raise DataError(f"{part}: required directory missing from the raw data")
    submission, masks_csv = raw / layout.SAMPLE_SUBMISSION_CSV, raw / layout.TRAIN_MASKS_CSV
    for required in (submission, masks_csv):
        if not required.is_file():
            raise DataError(f"{required}: required file missing from the raw data")

    train_ids, mask_ids, test_ids = _ids(train, ".jpg"), _ids(masks, "_mask.gif"), _ids(test, ".jpg")
    if not train_ids:
        raise DataError(f"{train}: no training images (*.jpg)")
    unmasked = sorted(set(train_ids) - set(mask_ids))
    if unmasked:
        raise DataError(f"{train / layout.image_file(unmasked[0])}: no mask {masks / layout.mask_file(unmasked[0])}"
                        f" ({len(unmasked)} images without a mask)")
    orphans = sorted(set(mask_ids) - set(train_ids))
    if orphans:
        raise DataError(f"{masks / layout.mask_file(orphans[0])}: mask without a training image "
                        f"{train / layout.image_file(orphans[0])} ({len(orphans)} such masks)")

    listed = _read_listing(submission)
    unlisted = sorted(set(test_ids) - set(listed))
    if unlisted:
        raise DataError(f"{submission}: test image {layout.image_file(unlisted[0])} is not listed "
                        f"({len(unlisted)} test images missing from it)")
    if len(listed) != len(test_ids):
        log.warning("%s lists %d test images, %s holds %d: a partial test set, so a submission built from it "
                    "is incomplete", submission, len(listed), test, len(test_ids))
    mask_rles = _read_listing(masks_csv)
    extra = sorted(set(mask_rles) - set(train_ids)) or sorted(set(train_ids) - set(mask_rles))
    if extra:
        where = "has no image in train/" if extra[0] in mask_rles else "is not listed there"
        raise DataError(f"{masks_csv}: {layout.image_file(extra[0])} {where}")
    train_cars = {layout.car_id(i) for i in train_ids}
    test_cars = {layout.car_id(i) for i in test_ids}
    if train_cars & test_cars:
        log.warning("%d cars appear in both train and test (e.g. %s)", len(train_cars & test_cars),
                    sorted(train_cars & test_cars)[0])

    tasks = [("image", str(train / layout.image_file(i)), quick, None) for i in train_ids]
    tasks += [("mask", str(masks / layout.mask_file(i)), quick, mask_rles[i]) for i in train_ids]
    tasks += [("image", str(test / layout.image_file(i)), quick, None) for i in test_ids]
    log.info("%s: checking %d files (%s, %d workers)", raw, len(tasks), "headers" if quick else "full decode",
             workers)
    results = _check_all(tasks, workers)
    sizes = [(w, h) for w, h, _ in results]
    n = len(train_ids)
    for i, image_id in enumerate(train_ids):
        mask = masks / layout.mask_file(image_id)
        if sizes[i] != sizes[n + i]:
            raise DataError(f"{mask}: mask is {sizes[n + i][0]}x{sizes[n + i][1]} but "
                            f"its image {layout.image_file(image_id)} is {sizes[i][0]}x{sizes[i][1]}")
        if not results[n + i][2]:
            raise DataError(f"{mask}: mask differs from its row in {layout.TRAIN_MASKS_CSV}")
    return {
        "raw": str(raw),
        "quick": quick,
        "n_train": n,
        "n_test": len(test_ids),
        "n_cars_train": len(train_cars),
        "n_cars_test": len(test_cars),
        "n_test_listed": len(listed),
        "test_complete": len(listed) == len(test_ids),
        "sizes": {"train": _size_counts(sizes[:n]), "test": _size_counts(sizes[2 * n:])},
        "has_metadata": (raw / layout.METADATA_CSV).is_file(),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--raw", required=True, help="raw Kaggle-layout directory (data/<name>/raw)")
    parser.add_argument("--out", required=True, help="where to write the JSON summary")
    parser.add_argument("--threads", type=int, default=1, help="worker processes for decoding")
    parser.add_argument("--quick", action="store_true", help="check headers and sizes only, decode nothing")


def run(args: argparse.Namespace, cfg: dict) -> None:
    """CLI entry: validate ``--raw`` and write the summary to ``--out`` atomically."""
    summary = validate_raw(Path(args.raw), quick=args.quick, workers=max(1, args.threads))
    out = Path(args.out)
    staging.write_text(out, json.dumps(summary, indent=2, sort_keys=True) + "\n")
    log.info("%s: %d training and %d test images valid; summary in %s", args.raw, summary["n_train"],
             summary["n_test"], out)
