"""How well the served confidence ranks photos by their true Dice, measured on a run's out-of-fold predictions.

For every training photo of the run, its OOF ensemble map (the weighted mean of every variant's stored uint8 OOF map,
as the threshold stage forms it) is binarised at the run's threshold and scored against the true mask; the
confidences of ``inference.confidence`` are computed from the same map. Printed: Spearman's rho of each confidence
against the true Dice, the true mean Dice of the 5 % of photos each ranks worst (against the mean of all and of the
truly worst 5 %), and the five photos the predicted Dice ranks lowest with their true Dice and car.

    python benchmarks/confidence.py --models results/sample --raw data/sample/raw
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from carvana_seg.core import layout  # noqa: E402
from carvana_seg.core.images import read_mask  # noqa: E402
from carvana_seg.core.masks import binarize  # noqa: E402
from carvana_seg.core.metrics import dice  # noqa: E402
from carvana_seg.inference.confidence import predicted_dice, soft_dice, uncertain_share  # noqa: E402
from carvana_seg.inference.service import read_run  # noqa: E402
from carvana_seg.inference.threshold import ensemble_u8  # noqa: E402


def oof_maps(results: Path, weights: dict[str, float]) -> dict[str, list[tuple[Path, float]]]:
    """image id -> [(npz, weight) per variant] of the run's round-one OOF predictions."""
    owner: dict[str, list[tuple[Path, float]]] = {}
    for npz_path in sorted((results / "oof").glob("*/fold*.npz")):
        w = weights.get(npz_path.parent.name, 1.0)
        with np.load(npz_path) as npz:
            for image_id in npz.files:
                owner.setdefault(image_id, []).append((npz_path, w))
    return owner


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=Path, required=True, help="results/<name> of a finished run")
    ap.add_argument("--raw", type=Path, required=True, help="its raw layout (data/<name>/raw), for the true masks")
    ap.add_argument("--worst", type=float, default=0.05, help="share of photos ranked worst")
    args = ap.parse_args()
    info = read_run(args.models)
    threshold = json.loads((args.models / "threshold.json").read_text())["threshold"]  # round one's, as the OOF
    owner = oof_maps(args.models, info.weights)
    open_npz: dict[Path, np.lib.npyio.NpzFile] = {}
    rows = []
    for image_id, sources in sorted(owner.items()):
        arrays = [open_npz.setdefault(p, np.load(p))[image_id] for p, _w in sources]
        u8 = ensemble_u8(arrays, [w for _p, w in sources])
        mask = binarize(u8, threshold)
        truth = read_mask(args.raw / layout.MASK_DIR / layout.mask_file(image_id)).astype(bool)
        wide = -uncertain_share(u8, mask, 26, 229)  # p between 0.1 and 0.9
        rows.append((image_id, dice(mask, truth), predicted_dice(u8, mask), wide, soft_dice(u8, mask)))
    true = np.array([r[1] for r in rows])
    k = max(1, round(args.worst * len(rows)))
    print(f"{len(rows)} OOF photos of {args.models} at threshold {threshold:.4f}: mean true Dice {true.mean():.5f}")
    served = np.array([r[2] for r in rows])
    print(
        f"mean predicted Dice {served.mean():.5f}, mean absolute error against the true Dice "
        f"{np.abs(served - true).mean():.5f}"
    )
    print(f"truly worst {k} ({args.worst:.0%}): mean Dice {np.sort(true)[:k].mean():.5f}")
    print("| confidence | Spearman rho | true Dice of the worst-ranked 5 % | of them truly worst 5 % |")
    print("|---|---:|---:|---:|")
    truly = set(np.argsort(true)[:k])
    names = ("predicted Dice (served: 0.25 < p < 0.75)", "uncertain share, 0.1 < p < 0.9", "soft Dice of mask and map")
    for col, name in enumerate(names, 2):
        score = np.array([r[col] for r in rows])
        rho = spearmanr(score, true).statistic
        ranked = np.argsort(score, kind="stable")[:k]
        print(f"| {name} | {rho:.3f} | {true[ranked].mean():.5f} | {len(truly & set(ranked))} of {k} |")
    print("\nlowest predicted Dice: photo, predicted, true")
    for r in sorted(rows, key=lambda r: r[2])[:5]:
        print(f"  {r[0]}  {r[2]:.4f}  {r[1]:.4f}")


if __name__ == "__main__":
    main()
