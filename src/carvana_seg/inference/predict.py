"""``predict``: a mask PNG and an RGBA cut-out for any photo, with the final trained ensemble of a results directory.

``python -m carvana_seg predict IMAGE... --models results/<name> --out DIR`` uses the models and threshold of the
run's *last* round: with pseudo-labelling on, each variant's ``round<r>/models/<variant>/fold<k>/best.pt`` from
the highest round that trained it (round one's ``models/`` otherwise), and the highest round's ``threshold.json``,
exactly what the final test ensemble and submission use. Each checkpoint records its variant (network size and
ensemble weight). Each photo, of any size, goes through the same preprocessing, flip-TTA, upsampling, weighting and
binarisation as the test ensemble and the submission (``resize_cache.load_resized``, ``ensemble.finalize``,
``core.masks.binarize``).

What it does not apply: the outlier check's per-car fixes (``outliers.action: fix``: zoom re-prediction of a car
far smaller than every training car, and the mask clean-ups). Those judge a photo against its car's other 15
views and the whole test set, which a single photo does not have. So a test photo gets exactly its submission
row's mask unless ``results/<name>/outliers.csv`` lists its car as fixed.

Outputs per photo: ``<stem>_mask.png`` (8-bit grey, 0 background / 255 car) and ``<stem>_cutout.png``
(RGBA, the photo with alpha = mask: background removed).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from carvana_seg.core.images import read_image, write_png
from carvana_seg.core.masks import binarize
from carvana_seg.data.resize_cache import load_resized
from carvana_seg.inference.ensemble import Variant, finalize
from carvana_seg.models import runtime
from carvana_seg.pipeline.errors import CarvanaSegError, DataError

log = logging.getLogger(__name__)
DEFAULT_THRESHOLD = 0.5


def _round_dirs(results: Path) -> list[Path]:
    """The run's round directories, last round first: ``round<r>`` (r >= 2, highest first), then ``results``."""
    rounds = [d for d in Path(results).glob("round*") if d.is_dir() and d.name[5:].isdigit()]
    return sorted(rounds, key=lambda d: int(d.name[5:]), reverse=True) + [Path(results)]


def find_checkpoints(results: Path) -> list[Path]:
    """The final ensemble's ``best.pt`` files: for every variant x fold, the one of the highest round holding it."""
    chosen: dict[tuple[str, str], Path] = {}
    for rdir in _round_dirs(results):
        for path in sorted(rdir.glob("models/*/fold*/best.pt")):
            chosen.setdefault((path.parent.parent.name, path.parent.name), path)
    if not chosen:
        raise DataError(f"{results}: no trained models (expected models/<variant>/fold<k>/best.pt)")
    return [chosen[k] for k in sorted(chosen)]


def load_ensemble(paths: list[Path], device: torch.device) -> list[Variant]:
    """Load checkpoints and group them by the variant each one records (name, width x height, weight)."""
    from carvana_seg.models.model import load_model

    variants: dict[str, Variant] = {}
    for path in paths:
        model, cfg = load_model(path, device)
        v = cfg["variant"]
        size, weight = (int(v["width"]), int(v["height"])), float(v["weight"])  # load_checkpoint checked them
        have = variants.setdefault(v["name"], Variant(v["name"], size, weight, []))
        if (have.size, have.weight) != (size, weight):
            raise DataError(f"{path}: variant '{v['name']}' at {size[0]}x{size[1]} weight {weight} disagrees with "
                            f"its other folds ({have.size[0]}x{have.size[1]} weight {have.weight})")
        have.models.append(model)
    return list(variants.values())


def read_threshold(results: Path, override: float | None) -> float:
    """``--threshold``, else the last round's ``threshold.json``, else 0.5 with a warning."""
    if override is not None:
        if not 0.0 <= override <= 1.0:
            raise CarvanaSegError(f"--threshold must be in [0, 1], got {override}")
        return float(override)
    path = next((d / "threshold.json" for d in _round_dirs(results) if (d / "threshold.json").is_file()),
                Path(results) / "threshold.json")
    if not path.is_file():
        log.warning("%s not found; binarising at %.2f (pass --threshold to choose)", path, DEFAULT_THRESHOLD)
        return DEFAULT_THRESHOLD
    try:
        return float(json.loads(path.read_text())["threshold"])
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: not a threshold file (expected {{\"threshold\": <float>}})") from exc


def predict_prob(variants: list[Variant], path: Path, device: torch.device, tta_hflip: bool = True) -> np.ndarray:
    """Ensemble probability of one photo at its own size, as uint8 ``round(p * 255)``; the network inputs are
    prepared exactly as for the test ensemble (``resize_cache.load_resized``)."""
    shape, images = load_resized(path, [v.size for v in variants])
    probs = []
    for v, image in zip(variants, images):
        x = runtime.to_tensor(image[None], device)
        p = runtime.predict_probs(v.models, x, tta_hflip)
        probs.append(p[0].float().cpu().numpy())
    return finalize(shape, probs, [v.weight for v in variants])


def cutout(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """RGBA image: the photo with alpha 255 on the car and 0 elsewhere."""
    return np.dstack([rgb, np.where(mask, 255, 0).astype(np.uint8)])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="photos (JPEG, PNG, ...; any size)")
    parser.add_argument("--models", required=True,
                        help="results directory results/<name>/: its last round's models and threshold.json")
    parser.add_argument("--out", required=True, help="output directory for <stem>_mask.png and <stem>_cutout.png")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threshold", type=float, default=None,
                        help="binarisation threshold (default: threshold.json)")
    parser.add_argument("--no-tta", dest="tta", action="store_false", help="skip the horizontal-flip TTA")


def run(args: argparse.Namespace, cfg: dict) -> None:  # noqa: ARG001 - predict reads no config slice
    results, out = Path(args.models), Path(args.out)
    photos = [Path(p) for p in args.images]
    stems = [p.stem for p in photos]
    dupes = sorted({s for s in stems if stems.count(s) > 1})
    if dupes:
        raise CarvanaSegError(f"several photos share the file stem(s) {dupes}; their outputs would collide")
    for p in photos:  # fail before loading models when any photo is unreadable
        read_image(p)
    threshold = read_threshold(results, args.threshold)
    device = runtime.pick_device(args.device)
    variants = load_ensemble(find_checkpoints(results), device)
    log.info("ensemble: %s; threshold %.4f; device %s",
             ", ".join(f"{v.name} {v.size[0]}x{v.size[1]} x{len(v.models)} w={v.weight:g}" for v in variants),
             threshold, device)
    out.mkdir(parents=True, exist_ok=True)
    for path in photos:
        t0 = time.perf_counter()
        rgb = read_image(path)
        mask = binarize(predict_prob(variants, path, device, args.tta), threshold)
        write_png(out / f"{path.stem}_mask.png", np.where(mask, 255, 0).astype(np.uint8))
        write_png(out / f"{path.stem}_cutout.png", cutout(rgb, mask))
        log.info("%s: %dx%d, car %.1f%% of pixels, %.2f s", path, rgb.shape[1], rgb.shape[0],
                 100.0 * mask.mean(), time.perf_counter() - t0)
