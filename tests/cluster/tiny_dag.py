"""The tiny synthetic DAG the cluster tests run: every rule group (data, train, predict, outliers with zoom, a
pseudo-labelling round, report), one fold, 64x64 models, 2 training and 2 test cars (one an outlier)."""

from __future__ import annotations

import gzip
from pathlib import Path

NAME = "cl"
CONFIG = {
    "name": NAME,
    "seed": 0,
    "data": {
        "source": "synthetic",
        "synthetic": {"n_train_cars": 2, "n_test_cars": 2, "n_outlier_cars": 1, "width": 128, "height": 96, "seed": 0},
    },
    "folds": {"k": 2, "use": [0]},
    "resize": {"workers": 1},
    "variants": [{"name": "v", "width": 64, "height": 64, "batch_size": 8, "epochs": 4, "lr": 1.0e-3}],
    "train": {"num_workers": 0},
    "predict": {"batch_size": 16, "workers": 1, "shard_size": 16},
    "pseudo_label": {"enabled": True, "rounds": 2, "variants": ["v"], "select_share": 0.5, "epochs": 1},
    # a few-epoch model's masks are all odd: flag none, so that pseudo-labelling selects some images
    "outliers": {"z_max": 1000.0, "z_max_soft": 1000.0, "border_rate_min": 0.0},
}


def submission_rows(path: Path) -> bytes:
    """A submission's CSV text (gzip's header holds a time stamp)."""
    return gzip.decompress(Path(path).read_bytes())
