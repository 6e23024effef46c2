"""The ``pseudo`` stage: pseudo-label the most confident test images of one round for the next round's training.

Confidence of a test image comes from its ensemble probability map (the uint8 shards of ``ensemble``): among the
pixels that may be car (``p > confidence_lo``: the mask and the soft band along its border), the share that is
neither confidently car nor background (``confidence_lo < p < confidence_hi``, on the stored uint8 levels, the
convention of the outlier check). A sharp mask scores near 0; a blurred, unsure one high. An empty map (nothing
above ``confidence_lo``) scores 1: every Carvana photo holds a car.

Selection: every car with an image in the outlier check's ``outliers.csv`` is excluded whole (its masks are the
ones the ensemble is least sure of, and a fixed mask is a guess); of the rest, the ``select_count`` (or
``select_share`` of all test images, rounded up) lowest-uncertainty images, ties by image id.

The selected images are written in the Kaggle training layout, so folds/resize/training read them unchanged:
``<out>/train/<id>.jpg`` (a relative symlink to the raw test photo), ``<out>/train_masks/<id>_mask.gif`` (the
ensemble probability binarised at the round's threshold), ``<out>/train_masks.csv``. The directory is built
beside ``<out>`` and renamed into place, so it never holds a previous selection's images.
Also written: a table of every test image (uncertainty, area, flagged car, selected, rank) and a summary JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from carvana_seg.core import layout, rle
from carvana_seg.core.images import write_mask_gif
from carvana_seg.core.masks import binarize, level
from carvana_seg.inference.shards import shard_paths
from carvana_seg.inference.threshold_file import read_threshold
from carvana_seg.pipeline import staging
from carvana_seg.pipeline.errors import ConfigError, DataError
from carvana_seg.pipeline.pool import worker_pool
from carvana_seg.settings.pseudo_label import PseudoSelection

log = logging.getLogger(__name__)
COLUMNS = ["img", "car", "view", "uncertain_of_candidates", "confidence", "area", "flagged_car", "selected", "rank"]


def uncertain_of_candidates(prob_u8: np.ndarray, lo: float, hi: float) -> float:
    """Share of the pixels with ``p > lo`` that are uncertain (``lo < p < hi``), on uint8 levels; 1 when none."""
    prob_u8 = np.asarray(prob_u8)
    lo_u8, hi_u8 = level(lo), level(hi)
    candidates = prob_u8 > lo_u8
    n = int(np.count_nonzero(candidates))
    if n == 0:
        return 1.0
    return int(np.count_nonzero(candidates & (prob_u8 < hi_u8))) / n


def _score_shard(job: tuple[str, float, float, float]) -> list[dict]:
    """Uncertainty and mask area (share of the photo at the threshold) of every image of one shard."""
    path, lo, hi, threshold = job
    rows = []
    with np.load(path) as npz:
        for image_id in npz.files:
            prob = npz[image_id]
            rows.append(
                {
                    "id": image_id,
                    "shard": path,
                    "uncertain_of_candidates": uncertain_of_candidates(prob, lo, hi),
                    "area": float(np.count_nonzero(binarize(prob, threshold))) / prob.size,
                }
            )
    return rows


def score_images(shards: list[Path], lo: float, hi: float, threshold: float, workers: int = 1) -> pd.DataFrame:
    """One row per test image: id, car, view, shard, uncertain_of_candidates, confidence
    (= 1 - uncertain_of_candidates), area."""
    jobs = [(str(p), lo, hi, threshold) for p in shards]
    with worker_pool(workers, len(jobs)) as pool:
        parts = pool.map(_score_shard, jobs, chunksize=1)
    df = pd.DataFrame([r for part in parts for r in part], columns=["id", "shard", "uncertain_of_candidates", "area"])
    df["car"] = df["id"].map(layout.car_id)
    df["view"] = df["id"].map(layout.view)
    df["confidence"] = 1.0 - df["uncertain_of_candidates"]
    return df


def flagged_cars(outliers_csv: str | os.PathLike) -> set[str]:
    """Cars with at least one image in the outlier check's table (column ``car``, else derived from ``img``)."""
    path = Path(outliers_csv)
    if not path.is_file():
        raise DataError(f"{path}: outlier table not found")
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    if "car" in df.columns:
        return {c for c in df["car"] if c}
    if "img" in df.columns:
        return {layout.car_id(i) for i in df["img"] if i}
    raise DataError(f"{path}: needs a 'car' or 'img' column, has {list(df.columns)}")


def n_to_select(n_images: int, share: float | None, count: int | None) -> int:
    """How many images to pseudo-label: ``count`` if set, else ``ceil(share * n_images)``."""
    if count is not None:
        return int(count)
    if share is None:
        raise ConfigError("config key 'pseudo_label.select_share': needed when select_count is null")
    return int(math.ceil(float(share) * n_images - 1e-9))


def select(df: pd.DataFrame, flagged: set[str], share: float | None, count: int | None) -> pd.DataFrame:
    """``df`` with ``flagged_car``, ``selected`` and ``rank`` (1 = most confident eligible image, 0 = not eligible)."""
    out = df.copy()
    out["flagged_car"] = out["car"].isin(flagged)
    eligible = out[~out["flagged_car"]].sort_values(["uncertain_of_candidates", "id"], kind="mergesort")
    out["rank"] = 0
    out.loc[eligible.index, "rank"] = np.arange(1, len(eligible) + 1)
    want = n_to_select(len(out), share, count)
    out["selected"] = (out["rank"] >= 1) & (out["rank"] <= want)
    if want > len(eligible):
        log.warning(
            "asked for %d pseudo-labels, only %d images are eligible (%d of flagged cars)",
            want,
            len(eligible),
            int(out["flagged_car"].sum()),
        )
    return out


def _write_shard(job: tuple[str, list[str], float, str, str, str]) -> list[tuple[str, str]]:
    """Write the masks and photo links of the selected images of one shard; return (img name, RLE)."""
    path, ids, threshold, tmp, raw_test, link_base = job
    out = []
    with np.load(path) as npz:
        for image_id in ids:
            mask = binarize(npz[image_id], threshold)
            write_mask_gif(Path(tmp) / layout.MASK_DIR / layout.mask_file(image_id), mask.astype(np.uint8))
            link = Path(tmp) / layout.TRAIN_DIR / layout.image_file(image_id)
            photo = Path(raw_test) / layout.image_file(image_id)
            try:  # relative to where the link will live after the rename, so the data tree can move
                link.symlink_to(os.path.relpath(photo, link_base))
            except OSError:
                shutil.copyfile(photo, link)
            out.append((layout.image_file(image_id), rle.encode(mask)))
    return out


def write_layout(df: pd.DataFrame, threshold: float, raw: Path, out_dir: Path, workers: int = 1) -> int:
    """Write the selected images of ``df`` as a Kaggle training layout in ``out_dir`` (atomically); return the count."""
    chosen = df[df["selected"]].sort_values("id")
    link_base = os.path.abspath(Path(out_dir) / layout.TRAIN_DIR)
    with staging.staged_dir(Path(out_dir)) as tmp:
        for sub in (layout.TRAIN_DIR, layout.MASK_DIR):
            (tmp / sub).mkdir()
        jobs = [
            (shard, list(g["id"]), threshold, str(tmp), os.path.abspath(Path(raw) / layout.TEST_DIR), link_base)
            for shard, g in chosen.groupby("shard", sort=True)
        ]
        with worker_pool(workers, len(jobs)) as pool:
            parts = pool.map(_write_shard, jobs, chunksize=1)
        rows = sorted(r for part in parts for r in part)
        pd.DataFrame(rows, columns=["img", "rle_mask"]).to_csv(tmp / layout.TRAIN_MASKS_CSV, index=False)
    return len(rows)


def _quantiles(values: pd.Series) -> dict:
    if values.empty:
        return {}
    q = values.quantile([0.0, 0.1, 0.5, 0.9, 1.0])
    return {
        "min": float(q[0.0]),
        "p10": float(q[0.1]),
        "median": float(q[0.5]),
        "p90": float(q[0.9]),
        "max": float(q[1.0]),
        "mean": float(values.mean()),
    }


def summarize(df: pd.DataFrame, selection: PseudoSelection, threshold: float, round_: int | None) -> dict:
    """The summary JSON: counts and the uncertainty distribution of selected, rejected and flagged images; the
    selection settings the stage ran with are recorded under ``settings``."""
    sel, flagged = df[df["selected"]], df[df["flagged_car"]]
    rejected = df[~df["selected"] & ~df["flagged_car"]]
    return {
        "round": round_,
        "threshold": threshold,
        "settings": dataclasses.asdict(selection),
        "n_test_images": len(df),
        "n_flagged_cars": int(flagged["car"].nunique()),
        "n_flagged_car_images": len(flagged),
        "n_eligible": int(len(df) - len(flagged)),
        "n_selected": len(sel),
        "n_selected_cars": int(sel["car"].nunique()),
        "uncertain_of_candidates": {
            "selected": _quantiles(sel["uncertain_of_candidates"]),
            "eligible_not_selected": _quantiles(rejected["uncertain_of_candidates"]),
            "flagged_cars": _quantiles(flagged["uncertain_of_candidates"]),
        },
        "area": {"selected": _quantiles(sel["area"]), "all": _quantiles(df["area"])},
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--manifest", required=True, help="ensemble manifest of the previous round (test_probs.json)")
    parser.add_argument("--threshold", required=True, help="threshold JSON of the previous round")
    parser.add_argument("--outliers", required=True, help="outliers.csv of the previous round: its cars are excluded")
    parser.add_argument("--raw", required=True, help="raw Kaggle layout with the test/ photos")
    parser.add_argument("--out-dir", required=True, help="pseudo-label layout to write (data/<name>/pseudo/round<r>)")
    parser.add_argument("--table", required=True, help="CSV of every test image's confidence and selection")
    parser.add_argument("--summary", required=True, help="summary JSON")
    parser.add_argument("--round", type=int, default=None, help="the round these labels train (for the records)")
    parser.add_argument("--threads", type=int, default=1, help="worker processes")


def run(args: argparse.Namespace, cfg: dict) -> None:
    # The workflow's slice carries only the selection keys (rounds.pseudo_slice); a --configfile gives the whole
    # section. Either way the stage reads, and records, the selection alone.
    pc, workers = PseudoSelection.of(cfg["pseudo_label"]), max(1, args.threads)
    if pc.confidence_lo >= pc.confidence_hi:
        raise ConfigError("config key 'pseudo_label.confidence_lo': must be below pseudo_label.confidence_hi")
    threshold = read_threshold(args.threshold)["threshold"]
    df = score_images(shard_paths(args.manifest), pc.confidence_lo, pc.confidence_hi, threshold, workers)
    if df.empty:
        raise DataError(f"{args.manifest}: no test images")
    df = select(df, flagged_cars(args.outliers), pc.select_share, pc.select_count)
    n = write_layout(df, threshold, Path(args.raw), Path(args.out_dir), workers)
    table = df.assign(img=df["id"].map(layout.image_file)).sort_values("img")[COLUMNS]
    table = table.assign(flagged_car=table["flagged_car"].astype(int), selected=table["selected"].astype(int))
    staging.write_text(Path(args.table), table.round(6).to_csv(index=False))
    summary = summarize(df, pc, threshold, args.round)
    staging.write_text(Path(args.summary), json.dumps(summary, indent=2) + "\n")
    u = summary["uncertain_of_candidates"]["selected"]
    log.info(
        "pseudo-labels: %d of %d test images selected (%d cars; %d images of %d flagged cars excluded) at "
        "threshold %.4f -> %s",
        n,
        len(df),
        summary["n_selected_cars"],
        summary["n_flagged_car_images"],
        summary["n_flagged_cars"],
        threshold,
        args.out_dir,
    )
    if u:
        log.info(
            "uncertain share of the selected: min %.4f, median %.4f, max %.4f (rejected median %.4f)",
            u["min"],
            u["median"],
            u["max"],
            summary["uncertain_of_candidates"]["eligible_not_selected"].get("median", float("nan")),
        )
    if n == 0:
        log.warning("no image pseudo-labelled: the next round trains on the training cars only")
