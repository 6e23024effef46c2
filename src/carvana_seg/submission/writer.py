"""The ``submission`` stage: binarise the ensemble's shards, RLE-encode them and write a validated gzip CSV.

Rows are ``img,rle_mask`` in the order of ``sample_submission.csv`` (the order the ensemble wrote its shards);
an empty mask is an empty ``rle_mask``. The file is written to a temporary name, checked by
``validate_submission`` and only then renamed, so an invalid submission never exists under its final name.
Shards are encoded in parallel worker processes, one shard each, so memory stays one shard of strings.
With ``--fixes`` (the ``outliers`` stage's img,rle_mask CSV), the masks of those images replace the binarised
ensemble's; they are validated like every other row, and a fix for an image outside the submission is an error.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from carvana_seg.core import layout, rle
from carvana_seg.core.masks import binarize
from carvana_seg.inference.shards import shard_paths
from carvana_seg.inference.threshold_file import read_threshold
from carvana_seg.pipeline import staging
from carvana_seg.pipeline.errors import DataError
from carvana_seg.pipeline.pool import worker_pool

log = logging.getLogger(__name__)
HEADER = ["img", "rle_mask"]
Shape = tuple[int, int]


def open_text(path: str | os.PathLike, mode: str = "rt", gz: bool | None = None) -> io.TextIOBase:
    """Open a CSV; gzip when ``gz``, else (default) when reading gzip bytes or writing a ``.gz`` name."""
    if gz is None:
        if mode.startswith("r"):
            with open(path, "rb") as fh:
                gz = fh.read(2) == b"\x1f\x8b"
        else:
            gz = str(path).endswith(".gz")
    if gz:
        return gzip.open(path, mode, compresslevel=6, newline="", encoding="utf-8")
    return open(path, mode[0], newline="", encoding="utf-8")


def read_rows(path: str | os.PathLike) -> Iterator[list[str]]:
    """Every row of a (gzipped) CSV, header included, streamed."""
    with open_text(path) as fh:
        yield from csv.reader(fh)


def expected_images(sample_submission: str | os.PathLike | Iterable[str]) -> list[str]:
    """Image names (``<id>.jpg``) of a sample submission file, or the given names."""
    if isinstance(sample_submission, (str, os.PathLike)):
        rows = read_rows(sample_submission)
        next(rows, None)
        return [r[0] for r in rows if r]
    return list(sample_submission)


def validate_submission(
    path_or_rows: str | os.PathLike | Iterable[list[str]],
    sample_submission: str | os.PathLike | Iterable[str],
    shape: Shape | Mapping[str, Shape],
) -> int:
    """Check header, every expected image exactly once, nothing extra, each RLE valid; return the row count.

    ``shape`` is (H, W) of every image or a mapping image name -> (H, W). Raises DataError naming the first
    bad row or the first missing image.
    """
    where = str(path_or_rows) if isinstance(path_or_rows, (str, os.PathLike)) else "submission"
    rows = read_rows(path_or_rows) if isinstance(path_or_rows, (str, os.PathLike)) else iter(path_or_rows)
    expected = expected_images(sample_submission)
    wanted, seen = set(expected), set()
    header = next(rows, None)
    if header != HEADER:
        raise DataError(f"{where}: header must be {','.join(HEADER)}, got {header}")
    n = 0
    for n, row in enumerate(rows, start=1):
        if len(row) != 2:
            raise DataError(f"{where}: row {n}: expected 2 fields, got {len(row)}")
        img, mask = row
        if img not in wanted:
            raise DataError(f"{where}: row {n}: {img} is not a test image of the sample submission")
        if img in seen:
            raise DataError(f"{where}: row {n}: {img} appears more than once")
        seen.add(img)
        img_shape = shape.get(img) if isinstance(shape, Mapping) else shape
        if img_shape is None:
            raise DataError(f"{where}: row {n}: {img}: image size unknown")
        problem = rle.validate(mask, tuple(img_shape))
        if problem:
            raise DataError(
                f"{where}: row {n}: {img}: invalid RLE ({problem}) for a {img_shape[0]}x{img_shape[1]} image"
            )
    if len(seen) != len(wanted):
        missing = next(i for i in expected if i not in seen)
        raise DataError(f"{where}: {len(wanted) - len(seen)} test images missing, first {missing}")
    return n


def encode_shard(job: tuple[str, float]) -> list[tuple[str, str, Shape]]:
    """(image name, RLE, shape) of every image of one shard, binarised at the threshold."""
    path, threshold = job
    with np.load(path) as npz:
        out = []
        for key in npz.files:
            prob = npz[key]
            out.append((f"{key}.jpg", rle.encode(binarize(prob, threshold)), prob.shape))
    return out


def _encoded(jobs: list[tuple[str, float]], pool: Any, window: int) -> Iterator[list]:
    """Encoded shards in order; at most ``window`` ahead of the writer, so memory stays bounded."""
    for start in range(0, len(jobs), window):
        part = jobs[start : start + window]
        yield from pool.imap(encode_shard, part)


def read_fixes(path: str | os.PathLike | None) -> dict[str, str]:
    """``{image name: RLE}`` of a fixes CSV (img,rle_mask; header only = no fixes); ``{}`` without a path."""
    if path is None:
        return {}
    rows = read_rows(path)
    if next(rows, None) != HEADER:
        raise DataError(f"{path}: header must be {','.join(HEADER)}")
    fixes: dict[str, str] = {}
    for n, row in enumerate(rows, start=1):
        if len(row) != 2 or row[0] in fixes:
            raise DataError(f"{path}: row {n}: expected one img,rle_mask row per image, got {row[:1]}")
        fixes[row[0]] = row[1]
    return fixes


def write_submission(
    shards: list[Path],
    threshold: float,
    sample_submission: str | os.PathLike,
    out: Path,
    workers: int = 1,
    fixes: Mapping[str, str] | None = None,
) -> int:
    """Write ``out`` via a temporary file that must pass ``validate_submission``; return the image count.

    ``fixes`` (image name -> RLE) replace those images' masks.
    """
    expected = expected_images(sample_submission)
    fixes = dict(fixes or {})
    unknown = sorted(set(fixes) - set(expected))
    if unknown:
        raise DataError(f"outlier fixes for {len(unknown)} images not in the submission, first {unknown[0]}")
    shapes: dict[str, Shape] = {}
    jobs = [(str(p), threshold) for p in shards]
    with staging.staged_file(out) as tmp:  # an invalid submission is an error, never a file
        gz = str(out).endswith(".gz")
        with open_text(tmp, "wt", gz=gz) as fh, worker_pool(workers) as pool:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(HEADER)
            for shard in _encoded(jobs, pool, 2 * workers):
                for img, mask, shape in shard:
                    k = len(shapes)
                    if k >= len(expected) or expected[k] != img:
                        raise DataError(
                            f"shard image {img} at position {k} does not follow sample_submission order "
                            f"(expected {expected[k] if k < len(expected) else 'no more images'})"
                        )
                    shapes[img] = shape
                    writer.writerow([img, fixes.get(img, mask)])
        validate_submission(tmp, expected, shapes)
    return len(shapes)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--manifest", required=True, help="ensemble manifest (results/<name>/test_probs.json)")
    parser.add_argument("--threshold", required=True, help="threshold JSON (results/<name>/threshold.json)")
    parser.add_argument("--sample-submission", required=True, help="raw/sample_submission.csv")
    parser.add_argument("--out", required=True, help="gzip CSV to write (results/<name>/submission.csv.gz)")
    parser.add_argument("--threads", type=int, default=1, help="encoding worker processes")
    parser.add_argument("--fixes", help="img,rle_mask CSV of outlier fixes that replace those images' masks")


def run(args: argparse.Namespace, cfg: dict) -> None:  # noqa: ARG001 - the slice only carries the name
    threshold = read_threshold(args.threshold)["threshold"]
    expected: str | list[str] = args.sample_submission
    if json.loads(Path(args.manifest).read_text()).get("partial"):
        ids, n_listed = layout.test_ids(Path(args.sample_submission).parent)
        expected = [layout.image_file(i) for i in ids]
        log.warning(
            "PARTIAL submission: %d of %d listed test images are present; Kaggle will refuse this file",
            len(ids),
            n_listed,
        )
    fixes = read_fixes(args.fixes)
    n = write_submission(
        shard_paths(args.manifest), threshold, expected, Path(args.out), workers=max(1, args.threads), fixes=fixes
    )
    log.info(
        "wrote %s: %d images at threshold %.4f, %d masks from outlier fixes (validated)",
        args.out,
        n,
        threshold,
        len(fixes),
    )
