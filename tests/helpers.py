"""Helpers the test modules share (tiny Kaggle layouts, tiny models, running Snakemake); fixtures live in conftest.

Test modules import from here, never from one another."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
SHARED_SAMPLE = ROOT.parent / "shared" / "carvana-sample"


def make_layout(root: Path, n_cars: int = 3, w: int = 64, h: int = 48, n_test_cars: int = 1, seed: int = 0) -> Path:
    """A tiny Kaggle layout in ``root`` (cars x 16 views, ellipse 'cars' of varying size); returns root."""
    from carvana_seg.core import images, rle

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


def make_raw(root: Path) -> Path:
    """The shared tiny layout (2 training cars, 1 test car, 64x48) plus a metadata.csv."""
    make_layout(root, n_cars=2, n_test_cars=1)
    cars = sorted({name[:12] for name in os.listdir(root / "train") + os.listdir(root / "test")})
    (root / "metadata.csv").write_text('"id","year"\n' + "".join(f'"{c}","2014"\n' for c in cars))
    return root


SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


def snakemake(repo: Path, workdir: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    return subprocess.run(
        [SNAKEMAKE, *args, "-s", str(repo / "Snakefile"), "-d", str(workdir)],
        capture_output=True, text=True, env=env, timeout=300,
    )


def job_counts(output: str) -> dict[str, int]:
    """Parse snakemake's 'Job stats' table into {rule: count}."""
    counts = {}
    for line in output.splitlines():
        m = re.match(r"^(\w+)\s+(\d+)\s*$", line.strip())
        if m and m.group(1) != "total":
            counts[m.group(1)] = int(m.group(2))
    return counts


def write_config(tmp: Path, base: Path, **updates) -> Path:
    cfg = yaml.safe_load(base.read_text())
    for key, value in updates.items():
        cfg[key] = value
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


MODEL_VARIANTS = [
    {"name": "a", "arch": "Unet", "encoder": "resnet18", "width": 64, "height": 64, "weight": 1.0},
    {"name": "b", "arch": "Unet", "encoder": "resnet18", "width": 96, "height": 64, "weight": 2.0},
]


def make_models(root: Path, folds: int = 2, seed: int = 0) -> list[Path]:
    import torch

    from carvana_seg.models.model import build_model, save_checkpoint

    """Tiny random-init checkpoints ``root/models/<variant>/fold<k>/best.pt`` for every variant x fold."""
    paths = []
    for v in MODEL_VARIANTS:
        for f in range(folds):
            torch.manual_seed(seed * 100 + f + 10 * len(v["name"]) + ord(v["name"]))
            model = build_model(dict(v, encoder_weights=None))
            path = root / "models" / v["name"] / f"fold{f}" / "best.pt"
            save_checkpoint(path, model, {"variant": dict(v, encoder_weights=None)})
            paths.append(path)
    return paths
