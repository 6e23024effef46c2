"""The ``pseudo-gain`` stage: what pseudo-labelling bought, round by round, measured rather than assumed.

Always (any data): each round's OOF Dice, per retrained variant and of the ensemble at its threshold, and the
pseudo-label selection (counts, uncertainty). Note that a later round's OOF Dice is slightly optimistic: its
pseudo-labels came from an ensemble whose other-fold models saw that fold's validation cars.
On synthetic data (``--truth``: the hidden test masks; this measurement stage and ``score`` are the only readers
of ``ground_truth/``): each round's end-to-end test Dice from the ``score`` stage, the Dice of the pseudo-masks
themselves, and whether the confidence ranking picked the images the previous round actually got right (mean
test Dice of selected / passed-over / flagged-car images, Spearman correlation of confidence and Dice).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from carvana_seg.core import layout, rle
from carvana_seg.core.images import image_size
from carvana_seg.core.metrics import dice
from carvana_seg.inference.threshold_file import read_threshold
from carvana_seg.pipeline import staging
from carvana_seg.pipeline.errors import DataError
from carvana_seg.pipeline.pool import worker_pool
from carvana_seg.submission.score import read_rle_csv

log = logging.getLogger(__name__)


def _dice_job(job: tuple[str, str, str, str]) -> tuple[str, float]:
    img, pred, truth, photo = job
    w, h = image_size(photo)
    return img, dice(rle.decode(pred, (h, w)), rle.decode(truth, (h, w)))


def per_image_dice(pred: dict[str, str], truth: dict[str, str], raw: Path, workers: int = 1) -> dict[str, float]:
    """Dice of every image of ``pred`` (img name -> RLE) against ``truth``; sizes from ``raw/test``."""
    missing = sorted(set(pred) - set(truth))
    if missing:
        raise DataError(f"{len(missing)} images without a true mask, first {missing[0]}")
    jobs = [(i, pred[i], truth[i], str(Path(raw) / layout.TEST_DIR / i)) for i in sorted(pred)]
    with worker_pool(workers, len(jobs), min_jobs=9) as pool:
        results = pool.map(_dice_job, jobs, chunksize=8)
        return dict(results)


def _stats(values) -> dict:
    v = np.asarray(list(values), dtype=float)
    if v.size == 0:
        return {"n": 0}
    return {
        "n": int(v.size),
        "mean": float(v.mean()),
        "min": float(v.min()),
        "p10": float(np.quantile(v, 0.1)),
        "median": float(np.median(v)),
        "max": float(v.max()),
    }


def oof_by_variant(table: str | os.PathLike) -> dict[str, float]:
    """Mean OOF Dice per variant of an ``oof_dice.csv`` (columns img, car, fold, variant, dice)."""
    df = pd.read_csv(table)
    return {str(k): float(v) for k, v in df.groupby("variant")["dice"].mean().items()}


def pseudo_record(
    table: str | os.PathLike,
    masks_csv: str | os.PathLike,
    truth: dict | None,
    prev_dice: dict | None,
    raw: Path,
    workers: int,
) -> dict:
    """Selection counts and uncertainty of one round's pseudo-labels; with the truth, their Dice and ranking."""
    df = pd.read_csv(table, dtype={"img": str, "car": str})
    sel = df[df["selected"] == 1]
    rec = {
        "n_test_images": len(df),
        "n_selected": len(sel),
        "n_selected_cars": int(sel["car"].nunique()),
        "n_flagged_car_images": int(df["flagged_car"].sum()),
        "uncertain_of_candidates_selected": _stats(sel["uncertain_of_candidates"]),
    }
    if truth is None:
        return rec
    masks = read_rle_csv(masks_csv)
    rec["pseudo_mask_dice"] = _stats(per_image_dice(masks, truth, raw, workers).values())
    if prev_dice:
        d = df["img"].map(prev_dice)
        groups = {
            "selected": df["selected"] == 1,
            "passed_over": (df["selected"] == 0) & (df["flagged_car"] == 0),
            "flagged_cars": df["flagged_car"] == 1,
        }
        rec["previous_round_test_dice"] = {k: _stats(d[m].dropna()) for k, m in groups.items()}
        ok = d.notna()
        rho = df.loc[ok, "confidence"].corr(d[ok], method="spearman") if ok.sum() > 2 else float("nan")
        rec["spearman_confidence_vs_test_dice"] = None if pd.isna(rho) else float(rho)
    return rec


@dataclass(frozen=True)
class GainInputs:
    """The files ``pseudo-gain`` compares, round by round (plain values; ``run`` builds it from the command line)."""

    thresholds: tuple[str, ...]
    oof_tables: tuple[str, ...]
    pseudo_tables: tuple[str, ...]
    pseudo_masks: tuple[str, ...]
    raw: str
    truth: str | None
    scores: tuple[str, ...]
    submissions: tuple[str, ...]
    threads: int

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> GainInputs:
        return cls(
            tuple(args.thresholds),
            tuple(args.oof_tables),
            tuple(args.pseudo_tables),
            tuple(args.pseudo_masks),
            args.raw,
            args.truth,
            tuple(args.scores),
            tuple(args.submissions),
            args.threads,
        )


def summarize(args: GainInputs) -> dict:
    """The pseudo_gain.json record: every round's OOF (and, with test truth, test) Dice, the gain, a verdict."""
    n = len(args.thresholds)
    if len(args.oof_tables) != n or len(args.pseudo_tables) != n - 1 or len(args.pseudo_masks) != n - 1:
        raise DataError("pseudo-gain needs one threshold and OOF table per round and one pseudo table per later round")
    truth = read_rle_csv(args.truth) if args.truth else None
    rounds, prev_dice = [], None
    workers = max(1, args.threads)
    for k in range(n):
        thr = read_threshold(args.thresholds[k])
        rec = {
            "round": k + 1,
            "threshold": thr["threshold"],
            "oof_ensemble_dice": thr.get("mean_dice"),
            "oof_dice_by_variant": oof_by_variant(args.oof_tables[k]),
        }
        if k > 0:
            rec["pseudo_labels"] = pseudo_record(
                args.pseudo_tables[k - 1], args.pseudo_masks[k - 1], truth, prev_dice, Path(args.raw), workers
            )
        if truth is not None:
            score = json.loads(Path(args.scores[k]).read_text())
            rec["test_dice"] = score["mean_dice"]
            rec["test_dice_by_car"] = score.get("per_car", {})
            prev_dice = per_image_dice(read_rle_csv(args.submissions[k]), truth, Path(args.raw), workers)
        rounds.append(rec)
    first, last = rounds[0], rounds[-1]
    retrained = sorted(set(last["oof_dice_by_variant"]) & set(first["oof_dice_by_variant"]))
    gain = {
        "oof_dice_by_variant": {v: last["oof_dice_by_variant"][v] - first["oof_dice_by_variant"][v] for v in retrained}
    }
    if first.get("oof_ensemble_dice") is not None and last.get("oof_ensemble_dice") is not None:
        gain["oof_ensemble_dice"] = last["oof_ensemble_dice"] - first["oof_ensemble_dice"]
    caveats = [
        "OOF Dice of rounds >= 2 is slightly optimistic: the pseudo-labels came from an ensemble whose other "
        "folds' models were trained on each fold's validation cars."
    ]
    if truth is not None:
        gain["test_dice"] = last["test_dice"] - first["test_dice"]
        cars = sorted(set(first["test_dice_by_car"]) & set(last["test_dice_by_car"]))
        diffs = [last["test_dice_by_car"][c] - first["test_dice_by_car"][c] for c in cars]
        gain["test_cars_improved"] = int(sum(d > 0 for d in diffs))
        gain["test_cars_worse"] = int(sum(d < 0 for d in diffs))
        verdict = (
            f"round {n} {'improves' if gain['test_dice'] > 0 else 'does NOT improve'} the end-to-end test Dice "
            f"over round 1: {first['test_dice']:.5f} -> {last['test_dice']:.5f} ({gain['test_dice']:+.5f}; "
            f"{gain['test_cars_improved']} of {len(cars)} test cars better)"
        )
        caveats.append(
            f"{len(prev_dice)} test images, {len(cars)} cars, one seed per round, and round r also trains "
            "longer: a difference of a few 1e-4 may be seed-to-seed variation or the extra epochs, not the "
            "pseudo-labels (a control retrains with select_count: 0)."
        )
    else:
        oof = gain.get("oof_ensemble_dice")
        verdict = (
            f"no test truth (real data): round {n} OOF ensemble Dice {oof:+.5f} vs round 1 (see caveats); "
            "compare the two submissions on the leaderboard"
            if oof is not None
            else "no test truth"
        )
    return {"rounds": rounds, "gain": gain, "verdict": verdict, "caveats": caveats}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--thresholds", nargs="+", required=True, help="threshold.json of every round, in order")
    parser.add_argument("--oof-tables", nargs="+", required=True, help="oof_dice.csv of every round, in order")
    parser.add_argument("--pseudo-tables", nargs="*", default=[], help="pseudo_labels.csv of rounds 2..")
    parser.add_argument("--pseudo-masks", nargs="*", default=[], help="pseudo-label train_masks.csv of rounds 2..")
    parser.add_argument("--truth", default=None, help="true test masks (synthetic ground_truth/test_masks.csv)")
    parser.add_argument("--scores", nargs="*", default=[], help="test_score JSON of every round (with --truth)")
    parser.add_argument("--submissions", nargs="*", default=[], help="submission of every round (with --truth)")
    parser.add_argument("--raw", required=True, help="raw Kaggle layout (test image sizes)")
    parser.add_argument("--out", required=True, help="pseudo_gain.json to write")
    parser.add_argument("--threads", type=int, default=1, help="worker processes")


def run(args: argparse.Namespace, cfg: dict) -> None:  # noqa: ARG001 - no config slice
    if args.truth and (len(args.scores) != len(args.thresholds) or len(args.submissions) != len(args.thresholds)):
        raise DataError("--truth needs one --scores and one --submissions file per round")
    record = summarize(GainInputs.from_args(args))
    staging.write_text(Path(args.out), json.dumps(record, indent=2) + "\n")
    for rec in record["rounds"]:
        pl = rec.get("pseudo_labels", {})
        log.info(
            "round %d: OOF ensemble Dice %s, test Dice %s, %s pseudo-labels (their Dice %s)",
            rec["round"],
            rec.get("oof_ensemble_dice"),
            rec.get("test_dice"),
            pl.get("n_selected", "-"),
            pl.get("pseudo_mask_dice", {}).get("mean", "-"),
        )
    log.info("%s", record["verdict"])
