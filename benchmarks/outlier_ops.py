"""OpenCV vs scikit-image for the outlier check's region work (``outliers/features.py``), on one mask.

    python benchmarks/outlier_ops.py [--width 1918] [--height 1280] [--repeat 10]

A car-like ellipse with a wide hole and a stray blob, at the photo size. Rows: the largest 8-connected component
(``cv2.connectedComponentsWithStats`` vs ``features.largest_component``: ``skimage.measure.label`` + bincount) and
the holes at least 17 px wide (``features.holes``: flood fill + distance transform, vs ``skimage.measure.label`` of
the background + ``regionprops``, each hole's widest inscribed disc from a distance transform of its own crop).
The script checks that both give the same mask. Prints a table.
"""

from __future__ import annotations

import argparse
import time

import cv2
import numpy as np
from skimage import measure

from carvana_seg.outliers.features import holes, largest_component


def _ms(fn, repeat: int) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t0) / repeat * 1e3


def cv_largest(mask: np.ndarray) -> np.ndarray:
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    return mask if n <= 2 else labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))


def sk_holes(mask: np.ndarray, radius: float) -> np.ndarray:
    lab = measure.label(~mask, connectivity=1)
    border = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
    keep = [
        p.label
        for p in measure.regionprops(lab)
        if p.label not in border
        and cv2.distanceTransform(np.pad(p.image, 1).astype(np.uint8), cv2.DIST_L2, 3).max() >= radius
    ]
    return np.isin(lab, keep)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width", type=int, default=1918)
    ap.add_argument("--height", type=int, default=1280)
    ap.add_argument("--repeat", type=int, default=10)
    args = ap.parse_args()
    h, w = args.height, args.width
    yy, xx = np.mgrid[0:h, 0:w]
    mask = ((yy - h / 2) / (h * 0.31)) ** 2 + ((xx - w / 2) / (w * 0.42)) ** 2 < 1
    mask[int(h * 0.47) : int(h * 0.5), int(w * 0.47) : int(w * 0.52)] = False  # a wide hole
    mask[h // 13 : h // 13 + 20, w // 19 : w // 19 + 20] = True  # a stray blob
    rows = [
        ("largest component", lambda: cv_largest(mask), lambda: largest_component(mask)),
        ("holes >= 17 px wide", lambda: holes(mask, 17.0), lambda: sk_holes(mask, 17.0)),
    ]
    print(f"# {w}x{h} mask, mean of {args.repeat} runs")
    print(f"{'operation':<22} {'opencv ms':>10} {'skimage ms':>11} {'same mask':>10}")
    for name, cv_fn, sk_fn in rows:
        same = np.array_equal(cv_fn(), sk_fn())
        print(f"{name:<22} {_ms(cv_fn, args.repeat):>10.1f} {_ms(sk_fn, args.repeat):>11.1f} {same!s:>10}")


if __name__ == "__main__":
    main()
