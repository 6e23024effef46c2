"""How well the outlier check finds the synthetic set's injected outlier cars, and what its fallback does to Dice.

Measurement code: it reads ``data/<name>/ground_truth/`` (the injected outlier cars and the true test masks),
which no pipeline stage may read. Run after the ``outliers`` stage (e.g. after the demo DAG):

    .venv/bin/python benchmarks/outliers_synthetic.py --name demo [--root .] [--json out.json]

Prints, per car: the share of injected outliers flagged and of normal cars falsely flagged, with the reasons;
and the mean Dice (ensemble binarised at the threshold, before; with the fixes applied, after) of the flagged
cars, the outlier cars and all cars.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd

from carvana_seg.core import layout, rle
from carvana_seg.core.masks import binarize
from carvana_seg.core.metrics import dice
from carvana_seg.data.synthetic import GROUND_TRUTH_DIR, OUTLIER_CARS_TXT, TEST_MASKS_CSV
from carvana_seg.inference.shards import shard_paths
from carvana_seg.submission.score import read_rle_csv
from carvana_seg.submission.writer import read_fixes


def per_image_dice(res: Path, truth_csv: Path) -> pd.DataFrame:
    """Dice before and after the fixes, per test image."""
    threshold = float(json.loads((res / "threshold.json").read_text())["threshold"])
    fixes, truth = read_fixes(res / "outlier_fixes.csv"), read_rle_csv(truth_csv)
    rows = []
    for path in shard_paths(res / "test_probs.json"):
        with np.load(path) as npz:
            for image_id in npz.files:
                prob = npz[image_id]
                name = layout.image_file(image_id)
                true = rle.decode(truth[name], prob.shape)
                before = binarize(prob, threshold)
                after = rle.decode(fixes[name], prob.shape) if name in fixes else before
                rows.append(
                    {
                        "img": image_id,
                        "car": layout.car_id(image_id),
                        "before": dice(before, true),
                        "after": dice(after, true),
                        "fixed": name in fixes,
                    }
                )
    return pd.DataFrame(rows)


def measure(res: Path, data: Path) -> dict:
    """Detection shares per car and Dice before/after, as a dict."""
    outliers = set((data / GROUND_TRUTH_DIR / OUTLIER_CARS_TXT).read_text().split())
    table = pd.read_csv(res / "outliers.csv", dtype={"car": str}, keep_default_na=False)
    flagged_cars = set(table["car"])
    reasons: dict[str, set[str]] = defaultdict(set)
    for car, rs in zip(table["car"], table["reasons"]):
        reasons[car].update(rs.split(";"))
    dice_df = per_image_dice(res, data / GROUND_TRUTH_DIR / TEST_MASKS_CSV)
    cars = set(dice_df["car"])
    normal = cars - outliers

    def mean(sel: set[str], col: str) -> float:
        d = dice_df[dice_df["car"].isin(sel)]
        return round(float(d[col].mean()), 5) if len(d) else float("nan")

    groups = {"flagged cars": flagged_cars, "outlier cars": outliers & cars, "normal cars": normal, "all cars": cars}
    per_car = dice_df.groupby("car")[["before", "after"]].mean()
    return {
        "n_cars": len(cars),
        "n_outlier_cars": len(outliers & cars),
        "n_flagged_cars": len(flagged_cars),
        "outliers_flagged": f"{len(outliers & flagged_cars)}/{len(outliers & cars)}",
        "normal_flagged": f"{len(normal & flagged_cars)}/{len(normal)}",
        "n_flagged_images": len(table),
        "n_fixed_images": int(dice_df["fixed"].sum()),
        "dice": {g: {"n": len(s), "before": mean(s, "before"), "after": mean(s, "after")} for g, s in groups.items()},
        "cars": {
            car: {
                "outlier": car in outliers,
                "flagged": car in flagged_cars,
                "reasons": sorted(reasons.get(car, set()) - {""}),
                "dice_before": round(float(per_car.loc[car, "before"]), 5),
                "dice_after": round(float(per_car.loc[car, "after"]), 5),
            }
            for car in sorted(cars)
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="demo", help="run name: results/<name>, data/<name>")
    parser.add_argument("--root", default=".", help="the working directory the pipeline ran in")
    parser.add_argument("--json", help="also write the numbers to this JSON file")
    args = parser.parse_args()
    root = Path(args.root)
    result = measure(root / "results" / args.name, root / "data" / args.name)
    print(
        f"outlier cars flagged: {result['outliers_flagged']}; normal cars flagged: {result['normal_flagged']}; "
        f"{result['n_flagged_images']} images flagged, {result['n_fixed_images']} masks changed"
    )
    print("\n| group | cars | Dice before | Dice after |\n|---|---|---|---|")
    for group, d in result["dice"].items():
        print(f"| {group} | {d['n']} | {d['before']:.5f} | {d['after']:.5f} |")
    print("\n| car | outlier | flagged | Dice before | Dice after | reasons |\n|---|---|---|---|---|---|")
    for car, c in result["cars"].items():
        print(
            f"| {car} | {'yes' if c['outlier'] else ''} | {'yes' if c['flagged'] else ''} | "
            f"{c['dice_before']:.5f} | {c['dice_after']:.5f} | {', '.join(c['reasons'])} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
