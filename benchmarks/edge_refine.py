"""What the full-resolution edge refinement (``predict.edge_refine``, refine.py) buys and costs, on OOF predictions.

For every image of the given OOF npz files (the ``oof`` stage's bilinearly upsampled uint8 maps at 1918x1280) it
scores the map as stored and after the guided filter (each setting of ``--settings``), against the true mask at
threshold 0.5, and times the filter (the grey photo is decoded outside the timing: OOF and ensemble decode it once).

    python benchmarks/edge_refine.py --raw data/sample/raw --oof results/sample/oof/*/fold*.npz --n 96 \\
        --settings 8:1e-3:4 4:1e-4:2 2:1e-4:1

Prints: setting, images, mean Dice before, after, the difference, and ms per image.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from carvana_seg.core import layout  # noqa: E402
from carvana_seg.core.images import read_image, read_mask  # noqa: E402
from carvana_seg.core.metrics import dice  # noqa: E402
from carvana_seg.inference import refine  # noqa: E402
from carvana_seg.settings.predict import EdgeRefine  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--raw", required=True, help="raw Kaggle layout (train/, train_masks/)")
    ap.add_argument("--oof", nargs="+", required=True, help="OOF npz files (one variant: its folds)")
    ap.add_argument("--n", type=int, default=64, help="images, evenly spaced over the OOF ids")
    ap.add_argument("--settings", nargs="+", default=["8:1e-3:4"], help="radius:eps:scale[:band] of the guided filter")
    args = ap.parse_args(argv)
    raw = Path(args.raw)
    items = [(p, i) for p in args.oof for i in np.load(p).files]
    picks = [items[k] for k in np.unique(np.linspace(0, len(items) - 1, min(args.n, len(items))).astype(int))]
    settings = [
        dict(
            zip(
                ("radius", "eps", "scale", "band"),
                (int(f[0]), float(f[1]), int(f[2]), float(f[3]) if len(f) > 3 else 0.0),
            )
        )
        for f in (s.split(":") for s in args.settings)
    ]
    before, after, secs = [], [[] for _ in settings], [[] for _ in settings]
    for path, image_id in picks:
        with np.load(path) as npz:
            prob = npz[image_id]
        truth = read_mask(raw / layout.MASK_DIR / layout.mask_file(image_id)) != 0
        guide = refine.to_gray(read_image(raw / layout.TRAIN_DIR / layout.image_file(image_id)))
        before.append(dice(prob >= 128, truth))
        p = prob.astype(np.float32) / 255.0
        for k, s in enumerate(settings):
            t0 = time.perf_counter()
            q = refine.refine(p, guide, EdgeRefine(method="guided", **s))
            secs[k].append(time.perf_counter() - t0)
            after[k].append(dice(q >= 0.5, truth))
    print(f"{'setting':<16} {'images':>6} {'before':>8} {'after':>8} {'gain':>8} {'ms/image':>9}")
    for s, a, t in zip(args.settings, after, secs):
        gain = np.mean(a) - np.mean(before)
        print(f"{s:<16} {len(a):>6} {np.mean(before):8.5f} {np.mean(a):8.5f} {gain:+8.5f} {1000 * np.mean(t):9.1f}")


if __name__ == "__main__":
    main()
