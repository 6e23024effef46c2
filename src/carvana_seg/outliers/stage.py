"""The ``outliers`` stage: find the test cars the ensemble gets wrong before Kaggle does, then fix or flag them.

One failed car can cost a leaderboard place (the seed's team fell from 10th to 51st over one car). So every test
image is scored (``outlier_features``, ``outlier_profile``): area against the training profile of its view angle,
against the car's other views and the car's size against training cars; stray components, holes, uncertain
pixels and disagreement between variants against the rest of the test set; edges touched where training cars
never touch them. A score above ``z_max`` is a reason; an image with a reason is flagged.

``action: fix`` keeps each flagged image's largest component and fills its wide holes. Before that, with
``repredict: zoom``, the views of a car far smaller than every training car are predicted again on a crop around the
car (``outlier_zoom``, the only part that runs models); with ``fix_variant``, an image whose area does not fit its
car's other views takes the mask of the variant whose area does (from the 1/4-scale variant masks, upsampled).
``action: flag`` changes nothing. Every flagged image is one row of ``outliers.csv`` and one log line; every
changed mask is a row of the fixes CSV (img,rle_mask), which the submission applies; every flagged car gets a
contact sheet PNG (``outlier_sheets``).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from carvana_seg.core import layout, rle
from carvana_seg.core.images import write_png
from carvana_seg.core.masks import level
from carvana_seg.inference import variant_masks
from carvana_seg.inference.shards import shard_paths
from carvana_seg.inference.threshold_file import read_threshold
from carvana_seg.outliers import sheets
from carvana_seg.outliers.features import fix_mask, image_features
from carvana_seg.outliers.profile import choose_variant, learn_profile, score
from carvana_seg.pipeline import staging
from carvana_seg.pipeline.errors import ConfigError
from carvana_seg.pipeline.pool import worker_pool
from carvana_seg.settings.build import build
from carvana_seg.settings.outliers import Outliers
from carvana_seg.settings.predict import Predict
from carvana_seg.settings.variants import Variant

log = logging.getLogger(__name__)
COLUMNS = [
    "img",
    "car",
    "view",
    "reasons",
    "action",
    "fix",
    "changed_px",
    "score",
    "area",
    "z_train",
    "z_view",
    "z_car",
    "n_components",
    "extra_share",
    "z_components",
    "hole_share",
    "z_holes",
    "uncertain_per_mask_px",
    "z_uncertain",
    "variant_dice",
    "z_disagreement",
    "border",
]


def _shard_features(job: tuple[str, str | None, list[str], float, Outliers]) -> list[dict]:
    """Features of every image of one shard (runs in a worker process)."""
    path, vpath, names, threshold, cfg = job
    rows = []
    with np.load(path) as npz, np.load(vpath) if vpath else nullcontext() as vnpz:
        for image_id in npz.files:
            packed = vnpz[image_id] if vnpz is not None else None
            feats = image_features(
                npz[image_id], threshold, cfg.uncertain_lo, cfg.uncertain_hi, cfg.scale, cfg.hole_radius, packed, names
            )
            rows.append(
                {
                    "img": image_id,
                    "car": layout.car_id(image_id),
                    "view": layout.view(image_id),
                    "shard": path,
                    "variants_file": vpath,
                    **feats,
                }
            )
    return rows


def compute_features(
    manifest: Path, threshold: float, cfg: Outliers, workers: int = 1
) -> tuple[pd.DataFrame, list[str]]:
    """Per-image features of every test image in the ensemble's shards, and the variant names."""
    shards = shard_paths(manifest)
    vm = json.loads(Path(manifest).read_text()).get("variant_masks")
    names = list(vm["variants"]) if vm else []
    vfiles = [str(p.parent / f) for p, f in zip(shards, vm["files"])] if vm else [None] * len(shards)
    if not vm:
        log.warning("%s has no per-variant masks (older ensemble): no disagreement check, no variant choice", manifest)
    jobs = [(str(p), v, names, threshold, cfg) for p, v in zip(shards, vfiles)]
    with worker_pool(workers, len(jobs)) as pool:
        parts = pool.map(_shard_features, jobs, chunksize=1)
    return pd.DataFrame([row for part in parts for row in part]), names


class View(NamedTuple):
    """One image of a car job: where its maps are, which variant's mask or zoomed map to start from, fix or not."""

    img: str
    shard: str
    variants_file: str | None
    variant: int | None
    zoom: bool
    fix: bool
    label: str


@dataclass
class CarJob:
    """What to do with one car: its views, the zoomed maps (npz) if any, and its contact sheet."""

    car: str
    views: list[View]
    threshold: float
    raw: str
    sheet: str | None
    title: str
    tile_width: int
    hole_radius: float
    zoom_file: str | None = None


def _car_job(job: CarJob) -> list[tuple[str, str | None, int]]:
    """Fix the flagged views of a car and draw its sheet; return (id, RLE of the changed mask or None, changed px)."""
    files: dict[str, np.lib.npyio.NpzFile] = {}
    out, tiles, labels, shape = [], [None] * layout.N_VIEWS, [f"{v:02d}" for v in range(1, 17)], None
    try:
        for image_id, shard, vfile, variant, zoom, fix, label in job.views:
            files.setdefault(shard, np.load(shard))
            prob = files[shard][image_id]
            shape = prob.shape
            before = prob >= level(job.threshold)
            after = before
            if fix:
                source = before
                if zoom and job.zoom_file:
                    files.setdefault(job.zoom_file, np.load(job.zoom_file))
                    source = files[job.zoom_file][image_id] >= level(job.threshold)
                elif variant is not None and vfile:
                    files.setdefault(vfile, np.load(vfile))
                    small = variant_masks.unpack(files[vfile][image_id], shape)[variant]
                    source = variant_masks.upsample(small, shape)
                after = fix_mask(source, job.hole_radius)
            changed = int(np.count_nonzero(after != before))
            out.append((image_id, rle.encode(after) if changed else None, changed))
            v = layout.view(image_id)
            if job.sheet and 1 <= v <= layout.N_VIEWS:
                size = sheets.tile_size(shape, job.tile_width)
                photo = sheets.read_small(sheets.photo_path(Path(job.raw), image_id), size)
                tiles[v - 1] = sheets.overlay(photo, before, after)
                labels[v - 1] = f"{v:02d} {label}".strip()
    finally:
        for f in files.values():
            f.close()
    if job.sheet and shape is not None:
        sheet = sheets.contact_sheet(tiles, labels, job.title, shape, job.tile_width)
        write_png(Path(job.sheet), sheet)
    return out


def plan(
    df: pd.DataFrame, names: list[str], profile, cfg: Outliers, threshold: float, raw: Path, sheet_dir: Path
) -> list[CarJob]:
    """One job per flagged car (worst first); sheets for the first ``sheets_max``; chosen variants in ``df``."""
    flagged = df[df["reasons"] != ""]
    order = flagged.groupby("car")["score"].max().sort_values(ascending=False).index
    jobs = []
    for rank, car in enumerate(order):
        views = []
        for i, r in df[df["car"] == car].sort_values("view").iterrows():
            fix = cfg.action == "fix" and bool(r["reasons"])
            zoom = fix and cfg.repredict == "zoom" and r["z_car"] < -cfg.z_max  # far smaller than training cars
            pick = fix and not zoom and cfg.fix_variant
            variant = choose_variant(r, names, profile, cfg.z_max) if pick else None
            df.loc[i, "fix"] = (
                ""
                if not fix
                else ("zoom+" if zoom else f"variant:{variant}+" if variant else "") + "largest_component+fill_holes"
            )
            views.append(
                View(
                    r["img"],
                    r["shard"],
                    r["variants_file"],
                    names.index(variant) if variant else None,
                    zoom,
                    fix,
                    r["reasons"],
                )
            )
        reasons = sorted({x for rs in flagged.loc[flagged["car"] == car, "reasons"] for x in rs.split(";")})
        title = f"car {car} ({cfg.action}): {', '.join(reasons)}"
        sheet = str(sheet_dir / f"{car}.png") if rank < cfg.sheets_max else None
        jobs.append(CarJob(car, views, threshold, str(raw), sheet, title, cfg.tile_width, cfg.hole_radius))
    return jobs


@dataclass(frozen=True)
class Repredict:
    """What the zoom re-prediction needs besides the views: the models and photos, and the settings it reads."""

    models: list[Path]
    raw: Path
    device: str
    variants: list[Variant]
    predict: Predict
    margin: float  # outliers.zoom_margin
    min_share: float  # outliers.zoom_min_share


def zoom(jobs: list[CarJob], df: pd.DataFrame, rp: Repredict, threshold: float, tmp_dir: Path) -> None:
    """Re-predict every view marked ``zoom`` into ``tmp_dir/zoom.npz`` and point the jobs at it."""
    views = [v for j in jobs for v in j.views if v.zoom]
    if not views:
        return
    if not rp.models:
        raise ConfigError("config key 'outliers.repredict': 'zoom' needs the model checkpoints (--models)")
    from carvana_seg.outliers.zoom import zoom_images  # torch: imported only when a car needs it

    done = set(
        zoom_images(
            [(v.img, v.shard) for v in views],
            rp.raw,
            rp.models,
            rp.variants,
            rp.predict,
            rp.margin,
            rp.min_share,
            threshold,
            tmp_dir / "zoom.npz",
            rp.device,
        )
    )
    for j in jobs:
        j.zoom_file = str(tmp_dir / "zoom.npz")
        j.views = [v._replace(zoom=v.zoom and v.img in done) for v in j.views]
    skipped = df["img"].isin([v.img for v in views if v.img not in done])
    df.loc[skipped, "fix"] = df.loc[skipped, "fix"].str.removeprefix("zoom+")


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with staging.staged_file(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--manifest", required=True, help="ensemble manifest (results/<name>/test_probs.json)")
    parser.add_argument("--threshold", required=True, help="threshold JSON (results/<name>/threshold.json)")
    parser.add_argument("--folds", required=True, help="folds.csv: training areas per view")
    parser.add_argument("--raw", required=True, help="raw Kaggle layout (train_masks.csv, test/ photos)")
    parser.add_argument("--out", required=True, help="outliers.csv to write (one row per flagged image)")
    parser.add_argument("--scores", required=True, help="CSV of every test image's features and scores")
    parser.add_argument("--fixes", required=True, help="fixes CSV to write (img,rle_mask of every changed mask)")
    parser.add_argument("--sheets", required=True, help="contact-sheet manifest JSON; the PNGs go beside it")
    parser.add_argument("--threads", type=int, default=1, help="worker processes")
    parser.add_argument("--models", nargs="*", default=[], help="every best.pt (needed by repredict: zoom)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="for repredict: zoom")


def run(args: argparse.Namespace, cfg: dict) -> None:
    ocfg, workers = build(Outliers, cfg["outliers"]), max(1, args.threads)
    rp = Repredict(
        [Path(m) for m in args.models],
        Path(args.raw),
        args.device,
        [build(Variant, v) for v in cfg["variants"]],
        build(Predict, cfg["predict"]),
        ocfg.zoom_margin,
        ocfg.zoom_min_share,
    )
    if ocfg.uncertain_lo >= ocfg.uncertain_hi:
        raise ConfigError("config key 'outliers.uncertain_lo': must be below outliers.uncertain_hi")
    threshold = read_threshold(args.threshold)["threshold"]
    df, names = compute_features(Path(args.manifest), threshold, ocfg, workers)
    profile = learn_profile(Path(args.folds), Path(args.raw), ocfg.min_spread.area, ocfg.border_min_px)
    df = score(df, profile, ocfg)
    df["fix"], df["action"], df["changed_px"] = "", np.where(df["reasons"] != "", ocfg.action, ""), 0
    sheet_manifest = Path(args.sheets)
    sheet_manifest.parent.mkdir(parents=True, exist_ok=True)
    for old in sheet_manifest.parent.glob("*.png"):
        old.unlink()  # sheets of cars no longer flagged must not linger
    jobs = plan(df, names, profile, ocfg, threshold, Path(args.raw), sheet_manifest.parent)
    with staging.scratch_dir(sheet_manifest.parent / ".zoom") as tmp_dir:
        zoom(jobs, df, rp, threshold, tmp_dir)
        with worker_pool(workers, len(jobs)) as pool:
            results = pool.map(_car_job, jobs, chunksize=1)
    fixes = [[layout.image_file(i), m] for res in results for i, m, _ in res if m is not None]
    changed = {i: n for res in results for i, _, n in res}
    df["changed_px"] = df["img"].map(changed).fillna(0).astype(int)
    flagged = df[df["reasons"] != ""].sort_values(["score", "img"], ascending=[False, True])
    for r in flagged.itertuples():
        log.info("%s: %s -> %s %s (%d px changed)", r.img, r.reasons, r.action, r.fix, r.changed_px)
    table = flagged.assign(img=flagged["img"].map(layout.image_file))[COLUMNS]
    _write_csv(Path(args.out), COLUMNS, table.round(5).values.tolist())
    _write_csv(Path(args.fixes), ["img", "rle_mask"], fixes)
    extra = [c for c in df.columns if c.startswith("area_")]
    scores = Path(args.scores)
    staging.write_text(
        scores, df.assign(img=df["img"].map(layout.image_file))[COLUMNS + extra].round(5).to_csv(index=False)
    )
    record = {
        "action": ocfg.action,
        "n_images": len(df),
        "n_flagged_images": len(flagged),
        "n_flagged_cars": len(jobs),
        "n_fixed_images": len(fixes),
        "variants": names,
        "sheets": [{"car": j.car, "file": Path(j.sheet).name, "title": j.title} for j in jobs if j.sheet],
    }
    staging.write_text(sheet_manifest, json.dumps(record, indent=2) + "\n")
    log.info(
        "outliers: %d of %d images flagged in %d cars (%s); %d masks changed; %d contact sheets",
        len(flagged),
        len(df),
        len(jobs),
        ocfg.action,
        len(fixes),
        len(record["sheets"]),
    )
