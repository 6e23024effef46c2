"""JPEG decode + resize per image, and mask GIF decode: OpenCV vs alternatives; prints a table.

Usage: python benchmarks/decode.py [--real ../shared/carvana-sample] [--n 24] [--size 224x160]
Photos: real 1918x1280 JPEGs when --real is given, else freshly generated synthetic ones.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import cv2
import numpy as np
from _timing import per_item_ms
from PIL import Image

from carvana_seg.core.images import read_image, read_mask
from carvana_seg.core.layout import parse_size
from carvana_seg.data.resize_cache import load_resized, reduction, resize_image

cv2.setNumThreads(1)


def photos(real: Path | None, n: int, tmp: Path) -> tuple[list[Path], list[Path]]:
    if real is not None:
        jpgs = sorted((real / "train").glob("*.jpg"))[:n]
        return jpgs, [real / "train_masks" / f"{p.stem}_mask.gif" for p in jpgs]
    from carvana_seg.data.synthetic import generate

    generate(tmp, n_train_cars=max(1, n // 16), n_test_cars=1, n_outlier_cars=0, seed=0)
    jpgs = sorted((tmp / "raw" / "train").glob("*.jpg"))[:n]
    return jpgs, [tmp / "raw" / "train_masks" / f"{p.stem}_mask.gif" for p in jpgs]


def pil_decode_resize(path: Path, size: tuple[int, int]) -> np.ndarray:
    with Image.open(path) as im:
        im.draft("RGB", size)  # DCT-domain downscaling by 1/2, 1/4 or 1/8 where it still covers `size`
        return resize_image(np.asarray(im.convert("RGB")), size)


def pipeline_reduced(path: Path, size: tuple[int, int]) -> np.ndarray:
    """What the pipeline does (``resize_cache.load_resized``): reduced JPEG decode, then INTER_AREA."""
    return load_resized(path, [size])[1][0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--real", type=Path, default=None)
    ap.add_argument("--n", type=int, default=24)
    ap.add_argument("--size", default="224x160")
    args = ap.parse_args()
    size = parse_size(args.size)
    with tempfile.TemporaryDirectory() as d:
        jpgs, gifs = photos(args.real, args.n, Path(d))
        rows = [
            ("jpeg: OpenCV full decode", per_item_ms(read_image, jpgs)),
            ("jpeg: PIL full decode", per_item_ms(lambda p: np.asarray(Image.open(p).convert("RGB")), jpgs)),
            (
                f"jpeg->{args.size}: OpenCV full + INTER_AREA",
                per_item_ms(lambda p: resize_image(read_image(p), size), jpgs),
            ),
            (
                f"jpeg->{args.size}: load_resized (reduced decode)",
                per_item_ms(lambda p: pipeline_reduced(p, size), jpgs),
            ),
            (f"jpeg->{args.size}: PIL draft + resize", per_item_ms(lambda p: pil_decode_resize(p, size), jpgs)),
            ("gif mask: PIL (read_mask)", per_item_ms(read_mask, gifs)),
            ("gif mask: PIL raw palette", per_item_ms(lambda p: np.asarray(Image.open(p)), gifs)),
        ]
        full = resize_image(read_image(jpgs[0]), size).astype(np.float32)
        red = pipeline_reduced(jpgs[0], size).astype(np.float32)
    print(
        f"decode benchmark: {len(jpgs)} photos 1918x1280 ({'real' if args.real else 'synthetic'}), 1 thread; "
        f"load_resized decodes at 1/{reduction((1918, 1280), size)} for {args.size}"
    )
    print(f"{'what':52} {'ms/image':>9}")
    for name, ms in rows:
        print(f"{name:52} {ms:9.2f}")
    print(
        f"reduced-decode vs full-decode pixel difference at {args.size}: "
        f"mean |d| = {np.abs(full - red).mean():.2f} (0..255)"
    )


if __name__ == "__main__":
    main()
