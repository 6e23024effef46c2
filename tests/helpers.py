"""Helpers the test modules share (tiny Kaggle layouts, tiny models, running Snakemake); fixtures live in conftest.

Test modules import from here, never from one another."""

from __future__ import annotations

import json
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
        for _ in range(count):
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


def snakemake(repo: Path, workdir: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``.venv/bin/snakemake ARGS -s repo/Snakefile -d workdir`` (the environment's own Snakemake, by path)."""
    return subprocess.run(
        [SNAKEMAKE, *args, "-s", str(repo / "Snakefile"), "-d", str(workdir)],
        capture_output=True,
        text=True,
        timeout=timeout,
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
            model = build_model(v["arch"], v["encoder"], None, v["name"])
            path = root / "models" / v["name"] / f"fold{f}" / "best.pt"
            save_checkpoint(path, model, {"variant": dict(v, encoder_weights=None)})
            paths.append(path)
    return paths


def settings(cls, **overrides):
    """The ``carvana_seg.settings`` dataclass ``cls`` holding the schema's defaults, with ``overrides`` replaced
    (what a stage builds from its validated slice, for tests that call library functions directly)."""
    import dataclasses

    from carvana_seg.pipeline import config as cfgmod
    from carvana_seg.settings.build import build

    section = cfgmod.resolve(
        {"name": "t", "data": {"source": "synthetic"}, "variants": [{"name": "v", "width": 32, "height": 32}]}
    )
    for part in cls.SECTION.split("."):
        section = section[part][0] if part == "variants" else section[part]
    return dataclasses.replace(build(cls, section), **overrides)


# ---- training: a tiny config, cache and train command -------------------------------------------------------

PY = [sys.executable, "-m", "carvana_seg"]


def tiny_config(**train: object) -> dict:
    """A resolved config with one 32x32 resnet18 variant (tiny, so training takes seconds), 2 epochs, CPU."""
    raw = {
        "name": "tiny",
        "seed": 0,
        "data": {"source": "synthetic"},
        "folds": {"k": 3},
        "variants": [
            {"name": "tiny", "encoder": "resnet18", "width": 32, "height": 32, "batch_size": 8, "epochs": 2, "lr": 1e-3}
        ],
        "train": {"device": "cpu", "num_workers": 0, **train},
    }
    from carvana_seg.pipeline import config as cfgmod

    return cfgmod.resolve(raw)


def build_tiny_cache(root: Path) -> dict[str, Path]:
    """3 cars x 16 views (96x64 photos), folds.csv with k=3, a 64x64 resize cache and a 32x32 one for training."""
    from carvana_seg.core import layout
    from carvana_seg.data import folds, resize_cache

    raw = make_layout(root / "raw", n_cars=3, w=96, h=64, n_test_cars=1, seed=1)
    table = folds.assign_folds(folds.mask_areas(raw), k=3, seed=0)
    table.to_csv(root / "folds.csv", index=False)
    ids = layout.list_ids(raw / layout.TRAIN_DIR)
    resize_cache.build(raw, ids, (64, 64), root / "cache")
    resize_cache.build(raw, ids, (32, 32), root / "cache32")
    return {"root": root, "raw": raw, "folds": root / "folds.csv", "cache": root / "cache", "cache32": root / "cache32"}


def train_cmd(c: dict[str, Path], cfg: dict, out: Path, *extra: str) -> list[str]:
    """``python -m carvana_seg train`` of the tiny variant on fold 0 of a tiny cache, writing into ``out``."""
    return [
        *PY,
        "train",
        "--cfg",
        json.dumps(cfg),
        "--variant",
        "tiny",
        "--fold",
        "0",
        "--folds",
        str(c["folds"]),
        "--cache",
        str(c["cache32"]),
        "--out-model",
        str(out / "best.pt"),
        "--out-metrics",
        str(out / "metrics.csv"),
        "--state-dir",
        str(out / "state"),
        "--threads",
        "2",
        *extra,
    ]


# ---- outliers: a fabricated ensemble output with one planted small car --------------------------------------

OUTLIER_HW = (48, 64)
PLANTED = "00000000dead"  # a 1/3-size car whose view 5 also has a stray blob


def ellipse(scale: float, view: int) -> np.ndarray:
    """A 'car' whose area follows the view angle like a turntable silhouette."""
    H, W = OUTLIER_HW
    yy, xx = np.mgrid[0:H, 0:W]
    rx = W * scale * (0.22 + 0.12 * abs(np.sin(2 * np.pi * (view - 1) / 16)))
    ry = OUTLIER_HW[0] * scale * 0.22
    return ((xx - W / 2) / rx) ** 2 + ((yy - OUTLIER_HW[0] / 2) / ry) ** 2 <= 1


def fabricate_outliers(root: Path, n_train: int = 8, n_test: int = 6) -> dict:
    """The outlier stage's inputs: raw layout (train masks, test photos), folds.csv, ensemble shards + variant
    masks + manifest, threshold."""
    import pandas as pd

    from carvana_seg.core import rle
    from carvana_seg.core.images import write_jpeg
    from carvana_seg.inference import variant_masks
    from carvana_seg.pipeline.staging import NpzWriter

    H, W = OUTLIER_HW
    rng = np.random.default_rng(0)
    raw = root / "raw"
    for d in ("train", "test"):
        (raw / d).mkdir(parents=True)
    write_jpeg(raw / "train" / "000000000001_01.jpg", np.zeros((H, W, 3), np.uint8))
    train, folds = [], []
    for c in range(n_train):
        car, s = f"{c + 1:012x}", rng.uniform(0.9, 1.1)
        for v in range(1, 17):
            m = ellipse(s, v)
            train.append(f"{car}_{v:02d}.jpg,{rle.encode(m)}")
            folds.append({"img": f"{car}_{v:02d}", "car": car, "view": v, "fold": c % 2, "area": m.mean()})
    (raw / "train_masks.csv").write_text("img,rle_mask\n" + "\n".join(train) + "\n")
    pd.DataFrame(folds).to_csv(root / "folds.csv", index=False)
    cars = [f"{c + 100:012x}" for c in range(n_test - 1)] + [PLANTED]
    probs = {}
    for car in cars:
        s = 0.35 if car == PLANTED else rng.uniform(0.9, 1.1)
        for v in range(1, 17):
            m = ellipse(s, v)
            if car == PLANTED and v == 5:
                m[4:8, 4:8] = True  # a stray blob (aligned with the 1/4 grid): the fix must remove it
            probs[f"{car}_{v:02d}"] = np.where(m, 240, 10).astype(np.uint8)
    ids = sorted(probs)
    (raw / "sample_submission.csv").write_text("img,rle_mask\n" + "".join(f"{i}.jpg,1 1\n" for i in ids))
    (root / "probs").mkdir()
    shards = []
    for k, chunk in enumerate((ids[:50], ids[50:])):
        writers = [
            NpzWriter(root / "probs" / f"shard_{k:05d}.npz"),
            NpzWriter(root / "probs" / variant_masks.file_name(k)),
        ]
        for i in chunk:
            write_jpeg(raw / "test" / f"{i}.jpg", np.full((H, W, 3), 200, np.uint8))
            writers[0].add(i, probs[i])
            writers[1].add(i, variant_masks.pack((H, W), [probs[i] / 255.0] * 2))
        for w in writers:
            w.close()
        shards.append({"file": f"shard_{k:05d}.npz", "n_images": len(chunk)})
    vm = {"files": [variant_masks.file_name(k) for k in range(2)], "variants": ["a", "b"], "scale": 4}
    (root / "test_probs.json").write_text(
        json.dumps({"shard_dir": str(root / "probs"), "shards": shards, "variant_masks": vm})
    )
    (root / "threshold.json").write_text(json.dumps({"threshold": 0.5}))
    return {"raw": raw, "probs": probs, "ids": ids}


def outlier_cfg(**changes) -> dict:
    from carvana_seg.pipeline import config

    base = yaml.safe_load((config.PROJECT_ROOT / "config/demo.yaml").read_text())
    base["outliers"] = changes
    return config.stage_config(config.resolve(base), "outliers")


# ---- submission: fabricated shards and the submission command ------------------------------------------------

SUBMISSION_HW = (12, 16)
SUBMISSION_IDS = [f"{c:012x}_{v:02d}" for c in (0xABC, 0x123) for v in (1, 2, 3)]  # deliberately not sorted
SUBMISSION_IMGS = [f"{i}.jpg" for i in SUBMISSION_IDS]


def fabricate_shards(root: Path, seed: int = 0) -> tuple[Path, Path, Path, dict[str, np.ndarray]]:
    """Raw test layout, two shards of uint8 probabilities (image 0 all background), manifest, threshold JSON."""
    from carvana_seg.core.images import write_jpeg
    from carvana_seg.pipeline.staging import NpzWriter

    H, W = SUBMISSION_HW
    IDS, IMGS = SUBMISSION_IDS, SUBMISSION_IMGS
    rng = np.random.default_rng(seed)
    (root / "raw" / "test").mkdir(parents=True)
    (root / "raw" / "sample_submission.csv").write_text("img,rle_mask\n" + "".join(f"{i},1 1\n" for i in IMGS))
    probs = {i: rng.integers(0, 256, (H, W), dtype=np.uint8) for i in IDS}
    probs[IDS[0]][:] = 10
    for i in IDS:
        write_jpeg(root / "raw" / "test" / f"{i}.jpg", np.zeros((H, W, 3), np.uint8))
    (root / "probs").mkdir()
    shards = []
    for k, chunk in enumerate((IDS[:4], IDS[4:])):
        writer = NpzWriter(root / "probs" / f"shard_{k:05d}.npz")
        for i in chunk:
            writer.add(i, probs[i])
        writer.close()
        shards.append({"file": f"shard_{k:05d}.npz", "n_images": len(chunk)})
    manifest = root / "test_probs.json"
    manifest.write_text(json.dumps({"shard_dir": "probs", "shards": shards}))
    threshold = root / "threshold.json"
    threshold.write_text(json.dumps({"threshold": 0.5}))
    return root / "raw", manifest, threshold, probs


def write_submission(root: Path, raw: Path, manifest: Path, threshold: Path, threads: int = 1) -> tuple[int, Path]:
    from carvana_seg.pipeline import cli

    out = root / "submission.csv.gz"
    argv = [
        "submission",
        "--cfg",
        '{"name": "t"}',
        "--manifest",
        str(manifest),
        "--threshold",
        str(threshold),
        "--sample-submission",
        str(raw / "sample_submission.csv"),
        "--out",
        str(out),
        "--threads",
        str(threads),
    ]
    return cli.main(argv), out
