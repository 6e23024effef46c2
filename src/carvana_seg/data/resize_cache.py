"""Resize cache: the training photos and masks resized once per network resolution.

Format (chosen by ``benchmarks/resize_cache_format.py``): one uncompressed ``.npy`` per array, read through a
memory map. On 2 cores it reads a 224x160 sample in microseconds where PNG/JPEG files need a decode per epoch,
and the page cache shares it between DataLoader workers. Layout of ``<cache>/``:

- ``images.npy``  (N, H, W, 3) uint8 RGB
- ``masks.npy``   (N, H, W) uint8, the *coverage* of each pixel by the car, 0..255: masks are resized as
  area fractions, not nearest-neighbour, so the car's edge keeps sub-pixel information
- ``ids.txt``     the N image ids, in array order

Interpolation: INTER_AREA when shrinking (anti-aliased, the best fidelity at the car's edge), INTER_LINEAR
for an axis that grows (INTER_AREA degenerates to nearest-neighbour there). Photos are decoded at half size first
when the target fits (``load_resized``, ``REDUCTIONS``); the test ensemble and ``predict`` use the same function,
so a variant's inputs are prepared identically everywhere.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from carvana_seg.core import layout
from carvana_seg.core.images import decode_image, image_size, image_size_of, read_image, read_mask
from carvana_seg.pipeline import staging
from carvana_seg.pipeline.pool import worker_pool
from carvana_seg.settings.build import build as build_settings
from carvana_seg.settings.resize import Resize

log = logging.getLogger(__name__)


def interpolation(src_wh: tuple[int, int], dst_wh: tuple[int, int]) -> int:
    """OpenCV interpolation for resizing ``src_wh`` to ``dst_wh`` (see module docstring)."""
    shrinking = dst_wh[0] <= src_wh[0] and dst_wh[1] <= src_wh[1]
    return cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR


def resize_image(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an RGB uint8 image to ``size`` = (width, height)."""
    h, w = rgb.shape[:2]
    if (w, h) == tuple(size):
        return rgb
    return cv2.resize(rgb, tuple(size), interpolation=interpolation((w, h), size))


# JPEG decode reductions allowed. On 16 real photos, against a full decode + INTER_AREA, 1/2 differs by a mean of
# 0.03-0.08 levels (99th percentile 1) at 96x64 to 240x160 and decodes in 4.3 ms instead of 11.7. 1/4 and 1/8
# (2.0-2.7 ms) differ by 0.5-1.1 levels (99th percentile 9-16, at the car's edges: their chroma is coarser than the
# target grid). The demo's test Dice cannot separate them (its run-to-run noise is ~0.001, docs/benchmarks.md), so
# the reduction stops at 1/2: a full decode's inputs at 40-60 % of the decode time.
REDUCTIONS = (2,)


def reduction(src_wh: tuple[int, int], dst_wh: tuple[int, int]) -> int:
    """The largest allowed JPEG decode reduction (``REDUCTIONS``, else 1) that still leaves ``dst_wh`` pixels."""
    for factor in sorted(REDUCTIONS, reverse=True):
        if src_wh[0] // factor >= dst_wh[0] and src_wh[1] // factor >= dst_wh[1]:
            return factor
    return 1


def load_resized(path: str | os.PathLike | bytes, sizes: list[tuple[int, int]], where: str | None = None
                 ) -> tuple[tuple[int, int], list[np.ndarray]]:
    """A photo at each of ``sizes`` (W, H), and its own (H, W): the one preprocessing of every network input.

    Each size is decoded at the largest allowed reduction that keeps at least its pixels (a JPEG's 1/2 decode
    scales in the DCT domain, ~2.7x faster than a full decode; ``REDUCTIONS``, ``benchmarks/decode.py``) and
    shrunk from there with INTER_AREA. The factor depends only on the photo's and the target's size, so the
    training cache, the OOF predictions (which read the cache) and the test ensemble see identical inputs for a
    variant. Sizes that share a factor share one decode. ``path`` may be the photo's bytes (the server), named
    ``where`` in errors; sizes and pixels follow the EXIF orientation (``core.images``)."""
    if isinstance(path, (bytes, bytearray)):
        where = where or "image"
        width, height = image_size_of(bytes(path), where)
        decode = lambda factor: decode_image(path, factor, where)  # noqa: E731
    else:
        width, height = image_size(path)
        decode = lambda factor: read_image(path, reduce=factor)  # noqa: E731
    decoded: dict[int, np.ndarray] = {}
    out = []
    for size in sizes:
        factor = reduction((width, height), size)
        if factor not in decoded:
            decoded[factor] = decode(factor)
        out.append(resize_image(decoded[factor], size))
    return (height, width), out


def resize_mask(mask01: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a 0/1 mask to ``size`` as per-pixel coverage 0..255 (uint8).

    Shrinking runs INTER_AREA on uint8 {0, 255} directly: OpenCV averages in floating point and rounds to nearest
    even, the same numbers as the float32 path (identical on 40 real masks at five sizes, and in the tests) at a
    third of the time (6 ms instead of 20 at 1024x1024), which matters where the DataLoader resizes
    pseudo-labelled masks per sample. A growing axis keeps the float32 path (uint8 INTER_LINEAR is fixed-point)."""
    h, w = mask01.shape
    if (w, h) == tuple(size):
        return (mask01 != 0).astype(np.uint8) * np.uint8(255)
    if interpolation((w, h), size) == cv2.INTER_AREA:
        return cv2.resize((mask01 != 0).astype(np.uint8) * np.uint8(255), tuple(size), interpolation=cv2.INTER_AREA)
    m = cv2.resize(mask01.astype(np.float32) * 255.0, tuple(size), interpolation=cv2.INTER_LINEAR)
    return np.clip(np.rint(m), 0, 255).astype(np.uint8)


def load_pair(raw: str | os.PathLike, image_id: str, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """One training photo and its mask of a Kaggle layout at ``size`` (W, H): exactly what the cache stores for it
    (the training DataLoader also calls it for the pseudo-labelled layouts, which are never cached)."""
    (_, [img]) = load_resized(Path(raw) / layout.TRAIN_DIR / layout.image_file(image_id), [size])
    mask = read_mask(Path(raw) / layout.MASK_DIR / layout.mask_file(image_id))
    return img, resize_mask(mask, size)


def _load_pair(job: tuple[str, str, tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    return load_pair(*job)


def build(raw: Path, ids: list[str], size: tuple[int, int], out_dir: Path, workers: int = 1) -> None:
    """Write the cache for ``ids`` at ``size`` = (W, H) into ``out_dir``, atomically (tmp dir, then rename)."""
    w, h = size
    with staging.staged_dir(Path(out_dir)) as tmp:
        images = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8, shape=(len(ids), h, w, 3))
        masks = np.lib.format.open_memmap(tmp / "masks.npy", mode="w+", dtype=np.uint8, shape=(len(ids), h, w))
        staging.preallocate(tmp / "images.npy")  # a full disk fails now, not as SIGBUS on a memmap write
        staging.preallocate(tmp / "masks.npy")
        jobs = [(str(raw), i, (w, h)) for i in ids]
        digest = hashlib.sha256()  # of the cached masks: tells a training run when its labels changed
        with worker_pool(workers) as pool:
            results = pool.imap(_load_pair, jobs, chunksize=4)
            for k, (img, mask) in enumerate(tqdm(results, total=len(ids), desc=f"resize {w}x{h}", mininterval=5)):
                images[k] = img
                masks[k] = mask
                digest.update(mask.tobytes())
        images.flush()
        masks.flush()
        del images, masks
        (tmp / "ids.txt").write_text("".join(f"{i}\n" for i in ids))
        meta = {"width": w, "height": h, "n": len(ids), "masks_sha256": digest.hexdigest()}
        (tmp / "meta.json").write_text(json.dumps(meta))


def load(cache_dir: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Memory-map a cache: (images, masks, ids)."""
    cache_dir = Path(cache_dir)
    images = np.load(cache_dir / "images.npy", mmap_mode="r")
    masks = np.load(cache_dir / "masks.npy", mmap_mode="r")
    ids = (cache_dir / "ids.txt").read_text().split()
    return images, masks, ids


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--raw", required=True, help="raw Kaggle layout (data/<name>/raw)")
    parser.add_argument("--size", required=True, help="WxH, e.g. 1024x1024")
    parser.add_argument("--out", required=True, help="cache directory to write")
    parser.add_argument("--threads", type=int, default=None, help="worker processes (default: resize.workers)")


def run(args: argparse.Namespace, cfg: dict) -> None:
    raw = Path(args.raw)
    ids = layout.list_ids(raw / layout.TRAIN_DIR)
    workers = args.threads or build_settings(Resize, cfg["resize"]).workers
    build(raw, ids, layout.parse_size(args.size), Path(args.out), workers=workers)
    log.info("cached %d training images at %s in %s", len(ids), args.size, args.out)
