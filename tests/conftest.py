"""Shared fixtures: paths, the real Carvana sample (skipped when absent), tiny Kaggle layouts."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_SAMPLE = ROOT.parent / "shared" / "carvana-sample"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def real_sample() -> Path:
    """The real Carvana files in ../shared/carvana-sample; the test is skipped when they are absent."""
    if not (SHARED_SAMPLE / "train_masks.csv").is_file():
        pytest.skip(f"real Carvana sample not found at {SHARED_SAMPLE} (only present beside the project checkout)")
    return SHARED_SAMPLE


def make_layout(root: Path, n_cars: int = 3, w: int = 64, h: int = 48, n_test_cars: int = 1, seed: int = 0) -> Path:
    """A tiny Kaggle layout in ``root`` (cars x 16 views, ellipse 'cars' of varying size); returns root."""
    from carvana_seg import images, rle

    rng = np.random.default_rng(seed)
    for d in ("train", "train_masks", "test"):
        (root / d).mkdir(parents=True, exist_ok=True)
    rows, sub = [], []
    yy, xx = np.mgrid[0:h, 0:w]
    for split, count in (("train", n_cars), ("test", n_test_cars)):
        for c in range(count):
            car = f"{rng.integers(0, 16**12):012x}"
            for v in range(1, 17):
                rx, ry = w * rng.uniform(0.2, 0.4), h * rng.uniform(0.15, 0.3)
                mask = (((xx - w / 2) / rx) ** 2 + ((yy - h / 2) / ry) ** 2 <= 1).astype(np.uint8)
                img = np.full((h, w, 3), 220, np.uint8)
                img[mask == 1] = rng.integers(0, 120, 3)
                images.write_jpeg(root / split / f"{car}_{v:02d}.jpg", img, quality=95)
                if split == "train":
                    images.write_mask_gif(root / "train_masks" / f"{car}_{v:02d}_mask.gif", mask)
                    rows.append(f"{car}_{v:02d}.jpg,{rle.encode(mask)}")
                else:
                    sub.append(f"{car}_{v:02d}.jpg,1 1")
    (root / "train_masks.csv").write_text("img,rle_mask\n" + "\n".join(sorted(rows)) + "\n")
    (root / "sample_submission.csv").write_text("img,rle_mask\n" + "\n".join(sorted(sub)) + "\n")
    return root


@pytest.fixture
def tiny_layout(tmp_path: Path) -> Path:
    return make_layout(tmp_path / "raw")


os.environ.setdefault("PYTHONHASHSEED", "0")
