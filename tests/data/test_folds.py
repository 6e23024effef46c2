"""Folds grouped by car, stratified by area, deterministic for a seed."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from carvana_seg.core import layout
from carvana_seg.data.folds import assign_folds, mask_areas
from carvana_seg.pipeline.errors import ConfigError
from tests.helpers import make_layout


def _images(n_cars: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for c in range(n_cars):
        car = f"{c:012x}"
        area = rng.uniform(0.1, 0.3)
        rows += [{"img": f"{car}_{v:02d}", "car": car, "view": v, "area": area} for v in range(1, 17)]
    return pd.DataFrame(rows)


@pytest.mark.parametrize("stratify", [True, False])
def test_cars_stay_together_and_every_fold_used(stratify):
    folds = assign_folds(_images(23), k=5, seed=1, stratify_by_area=stratify)
    assert folds.groupby("car")["fold"].nunique().max() == 1
    assert sorted(folds["fold"].unique()) == [0, 1, 2, 3, 4]
    per_fold = folds.groupby("fold")["car"].nunique()
    assert per_fold.max() - per_fold.min() <= 2


def test_deterministic_for_seed_and_changes_with_seed():
    a = assign_folds(_images(20), k=4, seed=7)
    b = assign_folds(_images(20), k=4, seed=7)
    c = assign_folds(_images(20), k=4, seed=8)
    assert a.equals(b)
    assert not a["fold"].equals(c["fold"])


def test_stratification_balances_area():
    imgs = _images(40, seed=3)
    folds = assign_folds(imgs, k=4, seed=0, stratify_by_area=True)
    means = folds.groupby("fold")["area"].mean()
    assert means.max() - means.min() < 0.04


def test_too_few_cars_is_a_config_error():
    with pytest.raises(ConfigError, match="folds.k"):
        assign_folds(_images(2), k=3, seed=0)


def test_mask_areas_from_rle(tiny_layout):
    areas = mask_areas(tiny_layout)
    assert len(areas) == 3 * 16
    assert areas["car"].nunique() == 3
    assert ((areas["area"] > 0.05) & (areas["area"] < 0.5)).all()
    assert (areas["img"].map(layout.car_id) == areas["car"]).all()


def test_folds_cli_writes_csv(tmp_path, repo_root):
    import subprocess
    import sys

    raw = make_layout(tmp_path / "raw", n_cars=4)
    out = tmp_path / "folds.csv"
    cfg = '{"name":"t","folds":{"k":2,"seed":0,"stratify_by_area":true,"use":null}}'
    subprocess.run([sys.executable, "-m", "carvana_seg", "folds", "--cfg", cfg, "--raw", str(raw), "--out", str(out)],
                   check=True, cwd=repo_root)
    df = pd.read_csv(out)
    assert list(df.columns) == ["img", "car", "view", "area", "fold"]
    assert df.groupby("car")["fold"].nunique().max() == 1
