"""The ``validate`` stage: check a raw Kaggle layout before anything is trained on it.

``validate_raw`` checks that the required parts exist, that every photo has its mask (and every mask its
photo), that sizes match, that ``train_masks.csv`` lists exactly the training images (and, in full mode, matches
every GIF) and that ``sample_submission.csv`` lists every test image. There must be test images, as many as
``sample_submission.csv`` lists unless ``partial`` (a copy with a few test cars); every car must have the 16 views
01-16 (``strict``; otherwise a warning), and every file's first bytes must be the format its name says (a PNG
named ``.jpg`` is refused). The full check decodes every JPEG and GIF in worker processes; ``quick`` reads only
headers (and the JPEG end marker). The first problem found is raised as one DataError naming the file.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from carvana_seg.core import layout, rle
from carvana_seg.core.images import image_size, read_image, read_mask
from carvana_seg.pipeline import staging
from carvana_seg.pipeline.errors import DataError
from carvana_seg.pipeline.pool import worker_pool
from carvana_seg.settings.build import build
from carvana_seg.settings.data import Data

log = logging.getLogger(__name__)

SUBMISSION_HEADER = "img,rle_mask"
VIEWS = [f"{v:02d}" for v in range(1, 17)]  # every Carvana car is photographed from these 16 angles
# file signatures: what a name's suffix promises, and how to name what was found instead
MAGIC = {"image": (b"\xff\xd8\xff",), "mask": (b"GIF87a", b"GIF89a")}
FORMATS = {b"\x89PNG": "PNG", b"\xff\xd8\xff": "JPEG", b"GIF8": "GIF", b"BM": "BMP", b"RIFF": "RIFF/WebP",
           b"II*\x00": "TIFF", b"MM\x00*": "TIFF"}


def _sniff(kind: str, path: str) -> bytes:
    """The first bytes of ``path``; DataError when they are not the format its name says (JPEG photo, GIF mask)."""
    with open(path, "rb") as fh:
        head = fh.read(8)
    if not head.startswith(MAGIC[kind]):
        found = next((name for magic, name in FORMATS.items() if head.startswith(magic)), "not an image")
        want = "JPEG" if kind == "image" else "GIF"
        raise DataError(f"{path}: content is {found}, but the name says {want}")
    return head


def _check_file(task: tuple[str, str, bool, str | None]) -> tuple[int, int, bool]:
    """(width, height, matches) of one photo or mask; decoded fully unless quick. Raises DataError naming the file.

    ``matches`` is False when a fully decoded mask differs from its ``train_masks.csv`` RLE (``expected``).
    """
    kind, path, quick, expected = task
    _sniff(kind, path)
    if quick:
        if kind == "image":
            with open(path, "rb") as fh:
                fh.seek(max(0, os.fstat(fh.fileno()).st_size - 2))
                tail = fh.read(2)
            if tail != b"\xff\xd9":
                raise DataError(f"{path}: truncated JPEG (no end-of-image marker)")
        return (*image_size(path), True)
    arr = read_image(path) if kind == "image" else read_mask(path)
    matches = expected is None or rle.encode(arr) == expected.strip()
    return arr.shape[1], arr.shape[0], matches


def _check_all(tasks: list[tuple[str, str, bool, str | None]], workers: int) -> list[tuple[int, int, bool]]:
    """Run ``_check_file`` over ``tasks`` (in order), in ``workers`` processes when that pays off."""
    quick = bool(tasks) and tasks[0][2]
    chunk = max(1, min(64, len(tasks) // (max(workers, 1) * 8)))
    # header reads are too cheap to ship to workers below 2000 files; spawn: no fork of a process holding threads
    with worker_pool(workers, len(tasks), min_jobs=2000 if quick else 64, context="spawn") as pool:
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


def _check_views(directory: Path, ids: list[str], suffix: str, strict: bool) -> None:
    """Every car in ``ids`` has exactly the views 01-16: DataError naming a file (or a warning unless ``strict``)."""
    views: dict[str, list[str]] = {}
    for image_id in ids:
        car, view = image_id.rsplit("_", 1)
        views.setdefault(car, []).append(view)
    for car, got in sorted(views.items()):
        odd = sorted(set(got) - set(VIEWS))
        if odd:
            problem = (f"{directory / f'{car}_{odd[0]}{suffix}'}: view {odd[0]} is outside 01-16 "
                       f"({len(odd)} such views of car {car})")
        elif len(got) != len(VIEWS):
            missing = sorted(set(VIEWS) - set(got))
            problem = (f"{directory / f'{car}_{got[0]}{suffix}'}: car {car} has {len(got)} views, not 16 "
                       f"(missing {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''})")
        else:
            continue
        if strict:
            raise DataError(problem + "; set data.strict: false to accept such cars with a warning")
        log.warning("%s", problem)


def _check_test_count(submission: Path, test: Path, n_listed: int, n_test: int, partial: bool) -> None:
    """Stop on an empty test set, and on fewer test images than listed unless the copy is declared partial."""
    if n_test == 0:
        raise DataError(f"{test}: no test images (*.jpg): there is nothing to predict or submit")
    if n_listed != n_test and not partial:
        raise DataError(f"{submission} lists {n_listed} test images, {test} holds {n_test}: set data.partial: true "
                        "if this copy holds only some test cars on purpose (its submission then cannot be uploaded)")
    if n_listed != n_test:
        log.warning("%s lists %d test images, %s holds %d: a partial test set (data.partial), so a submission "
                    "built from it is incomplete", submission, n_listed, test, n_test)


def validate_raw(raw: Path, quick: bool = False, workers: int = 1, partial: bool = False,
                 strict: bool = True) -> dict:
    """Check the Kaggle layout in ``raw``; return a summary dict or raise DataError naming the bad file.

    ``partial``: fewer test images than ``sample_submission.csv`` lists is accepted (with a warning); ``strict``:
    a car without exactly the views 01-16 is an error, not a warning."""
    # Over 60 lines on purpose: one flat list of independent checks, in the order a user would fix them (layout,
    # names, views, test set size, file contents); split up, each part would only pass the same summary dict along.
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
    _check_test_count(submission, test, len(listed), len(test_ids), partial)
    mask_rles = _read_listing(masks_csv)
    extra = sorted(set(mask_rles) - set(train_ids)) or sorted(set(train_ids) - set(mask_rles))
    if extra:
        where = "has no image in train/" if extra[0] in mask_rles else "is not listed there"
        raise DataError(f"{masks_csv}: {layout.image_file(extra[0])} {where}")
    _check_views(train, train_ids, ".jpg", strict)
    _check_views(test, test_ids, ".jpg", strict)
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
    data = build(Data, cfg["data"])
    summary = validate_raw(Path(args.raw), quick=args.quick, workers=max(1, args.threads), partial=bool(data.partial),
                           strict=bool(data.strict))
    out = Path(args.out)
    staging.write_text(out, json.dumps(summary, indent=2, sort_keys=True) + "\n")
    log.info("%s: %d training and %d test images valid; summary in %s", args.raw, summary["n_train"],
             summary["n_test"], out)
