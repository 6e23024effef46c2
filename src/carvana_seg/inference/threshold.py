"""The ``threshold`` stage: choose the binarisation threshold on the ensemble's out-of-fold predictions.

Probabilities travel as uint8 (``round(p * 255)``), so only 256 distinct thresholds exist. For each training
image (streamed one at a time, never the whole set in memory) the ensemble's OOF probability is the weighted
mean over variants of the stored uint8 maps -- the same weighting as the test ensemble -- and two 256-bin
histograms (probabilities of car pixels, of background pixels) give that image's exact Dice at *every* level by
cumulative sums. The per-level Dice sums over images form the exact mean-Dice curve; a coarse grid then a
1/255 refinement around its best point pick the threshold.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from carvana_seg.core import layout
from carvana_seg.core.images import read_mask
from carvana_seg.core.masks import level
from carvana_seg.core.metrics import dice_from_counts
from carvana_seg.pipeline import staging
from carvana_seg.pipeline.config import trained_folds, weight_total
from carvana_seg.pipeline.errors import ConfigError, DataError
from carvana_seg.pipeline.pool import worker_pool
from carvana_seg.settings.build import build
from carvana_seg.settings.folds import Folds
from carvana_seg.settings.threshold import Threshold
from carvana_seg.settings.variants import Variant

log = logging.getLogger(__name__)
LEVELS = 256


def ensemble_u8(arrays: list[np.ndarray], weights: list[float]) -> np.ndarray:
    """Weighted mean of uint8 probability maps, re-quantised to uint8 (rint), as the test ensemble stores it."""
    total = weight_total(weights)
    if len(arrays) == 1:
        return np.asarray(arrays[0], dtype=np.uint8)
    acc = np.zeros(arrays[0].shape, dtype=np.float32)
    for arr, w in zip(arrays, weights):
        acc += np.float32(w / total) * arr
    return np.clip(np.rint(acc), 0, 255).astype(np.uint8)


def image_histograms(prob_u8: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """(2, 256) int64 counts of probability levels: row 0 background pixels, row 1 car pixels."""
    if prob_u8.shape != truth.shape:
        raise DataError(f"OOF probabilities {prob_u8.shape} and mask {truth.shape} differ in shape")
    codes = prob_u8.reshape(-1).astype(np.int32) + LEVELS * (truth.reshape(-1) != 0)
    return np.bincount(codes, minlength=2 * LEVELS).reshape(2, LEVELS)


def dice_curve(hist: np.ndarray) -> np.ndarray:
    """Dice of one image at every level 0..255 (index L: predict car iff prob >= L), from its histograms."""
    neg_ge = np.cumsum(hist[0][::-1])[::-1]  # background pixels with prob >= L
    pos_ge = np.cumsum(hist[1][::-1])[::-1]  # car pixels with prob >= L
    return dice_from_counts(pos_ge, pos_ge + neg_ge, hist[1].sum())


def search(curve: np.ndarray, coarse_step: float) -> int:
    """Best level: coarse grid every ``coarse_step``, then every level within one step of the coarse best."""
    step = max(1, level(coarse_step))
    coarse = np.arange(0, LEVELS, step)
    best = int(coarse[np.argmax(curve[coarse])])
    fine = np.arange(max(0, best - step), min(LEVELS, best + step + 1))
    return int(fine[np.argmax(curve[fine])])  # argmax: the lowest level among ties


def _oof_files(paths: list[Path], names: list[str], folds: list[int]) -> dict[str, list[Path]]:
    """OOF npz files per variant (``.../oof/<variant>/fold<k>.npz``), checked against variants x folds."""
    by_variant: dict[str, list[Path]] = {n: [] for n in names}
    for p in paths:
        if p.parent.name not in by_variant:
            raise ConfigError(f"{p}: variant '{p.parent.name}' is not in config key 'variants' {names}")
        by_variant[p.parent.name].append(p)
    want = {f"fold{f}.npz" for f in folds}
    for name, files in by_variant.items():
        missing = sorted(want - {p.name for p in files})
        if missing:
            raise DataError(f"no OOF predictions {missing} for variant '{name}'")
    return by_variant


def _jobs(by_variant: dict[str, list[Path]]) -> Iterator[tuple[str, list[tuple[str, str]]]]:
    """(image id, [(npz path, variant), ...]) per OOF image; every variant must cover the same ids."""
    owner: dict[str, dict[str, str]] = {}
    for name, files in by_variant.items():
        for p in files:
            with np.load(p) as npz:  # lazy: only the zip directory is read
                for image_id in npz.files:
                    owner.setdefault(image_id, {})[name] = str(p)
    for image_id in sorted(owner):
        if len(owner[image_id]) != len(by_variant):
            lacking = sorted(set(by_variant) - set(owner[image_id]))
            raise DataError(f"OOF image {image_id}: no prediction from variant(s) {lacking}")
        yield image_id, [(owner[image_id][n], n) for n in by_variant]


_NPZ: dict[str, np.lib.npyio.NpzFile] = {}  # per-process cache of open OOF files


def _image_job(job: tuple[str, list[tuple[str, str]], dict[str, float], str]) -> np.ndarray:
    image_id, sources, weights, raw = job
    arrays = []
    for path, _name in sources:
        if path not in _NPZ:
            _NPZ[path] = np.load(path)
        arrays.append(_NPZ[path][image_id])
    prob = ensemble_u8(arrays, [weights[n] for _p, n in sources])
    truth = read_mask(Path(raw) / layout.MASK_DIR / layout.mask_file(image_id))
    return dice_curve(image_histograms(prob, truth))


def oof_image_curves(
    paths: list[Path], raw: Path, weights: dict[str, float], folds: list[int], workers: int = 1
) -> tuple[list[str], np.ndarray]:
    """(image ids, (n, 256) Dice of each image's OOF ensemble at every level); 2 KB per image. ``weights``: every
    variant's ensemble weight by name, in config order; ``folds``: the trained folds."""
    by_variant = _oof_files([Path(p) for p in paths], list(weights), folds)
    jobs = [(i, src, weights, str(raw)) for i, src in _jobs(by_variant)]  # ids and paths only: small
    with worker_pool(workers, len(jobs)) as pool:
        curves = list(pool.imap(_image_job, jobs, chunksize=8))
        _NPZ.clear()
    if not curves:
        raise DataError("no OOF images in " + ", ".join(str(p) for p in paths))
    return [j[0] for j in jobs], np.stack(curves)


def oof_curve(
    paths: list[Path], raw: Path, weights: dict[str, float], folds: list[int], workers: int = 1
) -> tuple[np.ndarray, int]:
    """Exact mean Dice of the OOF ensemble at every level 0..255, and the number of images."""
    _ids, curves = oof_image_curves(paths, raw, weights, folds, workers)
    return curves.mean(axis=0), len(curves)


def choose(curve: np.ndarray, n_images: int, settings: Threshold) -> dict:
    """The threshold record: the configured ``threshold.value`` if set, else the searched best level."""
    if settings.value is not None:
        t, source = float(settings.value), "config"
    else:
        t, source = search(curve, float(settings.coarse_step)) / 255.0, "search"
    return {
        "threshold": t,
        "level": level(t),
        "mean_dice": float(curve[level(t)]),
        "source": source,
        "n_images": n_images,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--oof", nargs="+", required=True, help="every OOF npz (results/<name>/oof/<variant>/fold<k>.npz)"
    )
    parser.add_argument("--raw", required=True, help="raw Kaggle layout with train_masks/")
    parser.add_argument("--out", required=True, help="threshold JSON to write")
    parser.add_argument("--curve", required=True, help="CSV of (threshold, mean_dice) at every uint8 level")
    parser.add_argument("--threads", type=int, default=1, help="worker processes")
    parser.add_argument(
        "--out-images",
        default=None,
        help="CSV (img, dice): each image's OOF ensemble Dice at the chosen threshold (report)",
    )


def run(args: argparse.Namespace, cfg: dict) -> None:
    variants = [build(Variant, v) for v in cfg["variants"]]
    folds = build(Folds, cfg["folds"])
    weights = {v.name: float(v.weight) for v in variants}
    ids, curves = oof_image_curves(
        [Path(p) for p in args.oof],
        Path(args.raw),
        weights,
        trained_folds(folds.k, folds.use),
        workers=max(1, args.threads),
    )
    curve, n = curves.mean(axis=0), len(ids)
    result = choose(curve, n, build(Threshold, cfg["threshold"]))
    if args.out_images:
        rows = "".join(f"{i},{d:.6f}\n" for i, d in zip(ids, curves[:, result["level"]]))
        staging.write_text(Path(args.out_images), "img,dice\n" + rows)
    rows = "".join(f"{lv / 255.0:.6f},{d:.6f}\n" for lv, d in enumerate(curve))
    staging.write_text(Path(args.curve), "threshold,mean_dice\n" + rows)
    staging.write_text(Path(args.out), json.dumps(result, indent=2) + "\n")
    log.info(
        "threshold %.4f (level %d, %s): OOF mean Dice %.5f on %d images",
        result["threshold"],
        result["level"],
        result["source"],
        result["mean_dice"],
        n,
    )
