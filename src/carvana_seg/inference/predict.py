"""``predict``: batch cut-outs of photos or folders with a run's final ensemble, on the server's inference path.

``python -m carvana_seg predict PHOTO_OR_DIR... --models results/<name> --out DIR`` loads the run's final ensemble
once (``inference.service``: the last round's models in the ensemble's order, its threshold, flip-TTA,
``predict.edge_refine``) and writes per photo ``<stem>_mask.png`` (8-bit grey, 0 background / 255 car) and
``<stem>_cutout.<format>`` rendered like ``POST /v1/cutout`` (``serve.compose``): RGBA PNG by default, or on
``--bg-color`` / ``--bg-image``, cropped with ``--crop``. So a test photo gets exactly its ``submission.csv.gz`` row,
unless the outlier check fixed its car (``results/<name>/outliers.csv``): those fixes judge a car against its other
views and the whole test set, which one photo does not have.

Every file is written atomically (temporary name, then rename); a rerun skips the photos whose outputs exist from a
run with the same models, threshold and options (``.predict.json`` in the output directory records them), so an
interrupted folder resumes where it stopped. Photos follow their EXIF orientation. A tqdm bar shows the progress.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from carvana_seg.core.images import decode_image, image_size, write_png
from carvana_seg.inference.ensemble import LoadedVariant, load_variants
from carvana_seg.inference.service import Service, find_checkpoints, last_threshold
from carvana_seg.pipeline import staging
from carvana_seg.pipeline.errors import CarvanaSegError, DataError
from carvana_seg.serve import compose

__all__ = ["collect", "find_checkpoints", "load_ensemble", "resolve_threshold", "run"]
log = logging.getLogger(__name__)
PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
STATE = ".predict.json"
EXTENSIONS = {"png": "png", "jpg": "jpg", "zip": "zip", "json": "json"}


def load_ensemble(paths: list[Path], device: torch.device) -> list[LoadedVariant]:
    """Load checkpoints and group them by the variant each one records (``ensemble.load_variants``)."""
    return load_variants(paths, None, False, device)


def resolve_threshold(results: Path, override: float | None) -> float:
    """``--threshold``, else the last round's ``threshold.json``, else 0.5 with a warning."""
    if override is not None:
        if not 0.0 <= override <= 1.0:
            raise CarvanaSegError(f"--threshold must be in [0, 1], got {override}")
        return float(override)
    return last_threshold(results)[0]


def collect(inputs: list[str]) -> list[Path]:
    """The photos named or inside the named folders (their photo files, sorted), in order, each once."""
    photos: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.is_file() and p.suffix.lower() in PHOTO_SUFFIXES)
            if not found:
                raise DataError(f"{item}: folder holds no photos ({', '.join(sorted(PHOTO_SUFFIXES))})")
            photos += found
        else:
            photos.append(item)
    seen: set[Path] = set()
    return [p for p in photos if not (p.resolve() in seen or seen.add(p.resolve()))]


def precheck(path: Path) -> None:
    """Cheap checks before any model loads: exists, not empty, a readable header, a JPEG's end marker."""
    if not path.is_file():
        raise DataError(f"{path}: image file not found")
    size = path.stat().st_size
    if size == 0:
        raise DataError(f"{path}: empty image file")
    with open(path, "rb") as fh:
        head = fh.read(2)
        fh.seek(max(0, size - 2))
        tail = fh.read(2)
    if head == b"\xff\xd8" and tail != b"\xff\xd9":
        raise DataError(f"{path}: truncated JPEG (no end-of-image marker)")
    image_size(path)


def outputs(out: Path, photo: Path, fmt: str) -> tuple[Path, Path]:
    """(mask PNG, cut-out file) of a photo."""
    return out / f"{photo.stem}_mask.png", out / f"{photo.stem}_cutout.{EXTENSIONS[fmt]}"


def run_state(service: Service, opts: compose.Options, bg_image: Path | None) -> dict:
    """What the outputs depend on: the models (files and sizes), threshold, refinement and the render options."""
    info = service.info
    h = hashlib.sha256()
    for m in info.models:
        st = m.stat()
        h.update(f"{m.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode())
    if bg_image is not None:
        h.update(bg_image.read_bytes())
    return {
        "models": h.hexdigest()[:16],
        "threshold": info.threshold,
        "tta_hflip": info.tta_hflip,
        "edge_refine": info.edge_refine.method,
        "backend": service.backend,
        "options": opts.__dict__,
        "bg_image": str(bg_image) if bg_image else None,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", metavar="PHOTO_OR_DIR", help="photos (JPEG, PNG, ...) or folders of them")
    parser.add_argument(
        "--models",
        required=True,
        help="results directory results/<name>/ (its final round's ensemble and threshold), or a bundle file of one "
        "(python -m carvana_seg bundle)",
    )
    parser.add_argument("--out", required=True, help="output directory for <stem>_mask.png and <stem>_cutout.*")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument(
        "--backend",
        default="torch",
        choices=["auto", "torch", "onnx"],
        help="torch (default: the submission's exact masks), onnx (ONNX Runtime, within one uint8 "
        "level, faster on a CPU) or auto (onnx on a CPU, torch on CUDA)",
    )
    parser.add_argument(
        "--threshold", type=float, default=None, help="binarisation threshold (default: the run's threshold.json)"
    )
    parser.add_argument("--no-tta", dest="tta", action="store_false", help="skip the horizontal-flip TTA")
    parser.add_argument(
        "--format",
        default="png",
        choices=list(compose.FORMATS),
        help="cut-out file: png (RGBA or on the background), jpg, zip (jpg + alpha png), json (RLE)",
    )
    parser.add_argument("--channels", default="rgba", choices=list(compose.CHANNELS))
    parser.add_argument("--bg-color", default=None, help="background colour: hex (81d4fa, #fff) or a name")
    parser.add_argument("--bg-image", default=None, help="background picture, scaled to cover each photo")
    parser.add_argument("--crop", action="store_true", help="crop each cut-out to its car")
    parser.add_argument("--crop-margin", default="0", help="margin of --crop: pixels (30) or percent (10%%)")
    parser.add_argument("--overwrite", action="store_true", help="recompute photos whose outputs already exist")


def run(args: argparse.Namespace, cfg: dict) -> None:
    out = Path(args.out)
    photos = collect(args.images)
    stems = [p.stem for p in photos]
    dupes = sorted({s for s in stems if stems.count(s) > 1})
    if dupes:
        raise CarvanaSegError(f"several photos share the file stem(s) {dupes}; their outputs would collide")
    opts = compose.Options(
        format=args.format, channels=args.channels, bg_color=args.bg_color, crop=args.crop, crop_margin=args.crop_margin
    )
    try:
        opts.validate()
    except compose.OptionError as exc:
        raise CarvanaSegError(f"--{str(exc).split(':')[0].replace('_', '-')}:{str(exc).split(':', 1)[1]}") from exc
    for p in photos:  # fail before loading models when any photo is unreadable
        precheck(p)
    bg_path = Path(args.bg_image) if args.bg_image else None
    if bg_path and not bg_path.is_file():
        raise DataError(f"{bg_path}: background image not found")
    background = decode_image(np.fromfile(bg_path, np.uint8), 1, str(bg_path)) if bg_path else None
    service = Service(Path(args.models), args.device, args.backend, args.threshold, None if args.tta else False)
    state = run_state(service, opts, bg_path)
    state_file = out / STATE
    old = json.loads(state_file.read_text()) if state_file.is_file() else None
    reuse = old == json.loads(json.dumps(state)) and not args.overwrite
    out.mkdir(parents=True, exist_ok=True)
    todo = [p for p in photos if not (reuse and all(f.is_file() for f in outputs(out, p, opts.format)))]
    if len(todo) < len(photos):
        log.info(
            "%d of %d photos already done (same models and options): skipped", len(photos) - len(todo), len(photos)
        )
    elif old is not None and old != state and not args.overwrite:
        log.info("%s records other models or options: recomputing every photo", state_file)
    staging.write_text(state_file, json.dumps(state, indent=2) + "\n")
    t0, car = time.perf_counter(), []
    for path in tqdm(todo, desc="cut-outs", unit="photo", disable=None):
        rgb, mask = service.mask(path)
        mask_path, cut_path = outputs(out, path, opts.format)
        extra = {"threshold": service.info.threshold, "run": service.info.name, "photo": path.name}
        body, _wh = compose.encode(rgb, mask, opts, background, extra)
        write_png(mask_path, np.where(mask, 255, 0).astype(np.uint8))
        staging.write_bytes(cut_path, body)  # after the mask: a cut-out on disk means both are complete
        car.append(float(mask.mean()))
    seconds = time.perf_counter() - t0
    if todo:
        log.info(
            "%d photos in %.1f s (%.2f photos/s), car %.1f%% of the pixels on average; outputs in %s",
            len(todo),
            seconds,
            len(todo) / max(seconds, 1e-9),
            100 * float(np.mean(car)),
            out,
        )
