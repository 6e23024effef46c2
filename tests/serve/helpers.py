"""Helpers of the serve tests (test modules import from here, never from one another): a tiny results directory,
the reduced demo run, photos and multipart bodies."""

from __future__ import annotations

import io
import json
from pathlib import Path

import cv2
import numpy as np
import torch
import yaml
from PIL import Image

from carvana_seg.models.model import build_model, save_checkpoint
from tests.helpers import ROOT, snakemake

# config/demo.yaml with 3 training cars (one per fold), 2 test cars (one an outlier), 480x320 photos, EPOCHS epochs
# per model (enough for the page test's Dice >= 0.95 on a synthetic photo; an epoch is ~2 s, a job's imports ~5 s),
# and the guided-filter edge refinement on: every stage the served mask must reproduce runs (two
# variants of different sizes and their weights, the outlier check, the submission). The pseudo-label round is
# off to halve the DAG (about 3.5 minutes with it on a loaded 2-core machine); the round choice of the final
# ensemble is tested on its own (tests/inference/test_predict_export.py, tests/serve/test_service.py). One fold of
# the three is trained (folds.use): the served mask must reproduce the ensemble of whatever models the run has, and
# the averaging over several folds is tested on the stage itself (tests/inference/test_ensemble.py, two folds per
# variant); 2 train and 2 OOF jobs instead of 6 + 6, 96 -> 41 s.
EPOCHS = 4
REDUCED_DEMO = {
    "name": "serve",
    "data": {"synthetic": {"n_train_cars": 3, "n_test_cars": 2, "n_outlier_cars": 1, "width": 480, "height": 320}},
    "folds": {"use": [0]},
    "predict": {"edge_refine": {"method": "guided", "radius": 4, "eps": 1.0e-3, "scale": 2}},
    "pseudo_label": {"enabled": False},
}


def run_reduced(workdir: Path, override: dict, base: Path = ROOT / "config" / "demo.yaml") -> Path:
    """Run ``base`` + ``override`` up to its submission in ``workdir``; return ``results/<name>``."""
    cfg = yaml.safe_load(base.read_text())
    variants = [
        dict(v, epochs=v.get("epochs", 1) if "variants" in override else EPOCHS)
        for v in override.get("variants", cfg["variants"])
    ]
    (workdir / "override.yaml").write_text(yaml.safe_dump({**override, "variants": variants}))
    name = override.get("name", cfg["name"])
    res = snakemake(
        ROOT,
        workdir,
        f"results/{name}/submission.csv.gz",
        "--cores",
        "2",
        "--workflow-profile",
        "cpu",
        "--configfile",
        str(base),
        str(workdir / "override.yaml"),
        timeout=1200,
    )
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    return workdir / "results" / name


VARIANTS = [
    {
        "name": "a",
        "arch": "Unet",
        "encoder": "resnet18",
        "encoder_weights": None,
        "width": 64,
        "height": 32,
        "weight": 1.0,
    }
]


def tiny_run(root: Path, threshold: float = 1.0) -> Path:
    """results/tiny: one random-init variant x 1 fold, its ensemble manifest and threshold."""
    models = []
    for v in VARIANTS:
        torch.manual_seed(0)
        path = root / "models" / v["name"] / "fold0" / "best.pt"
        save_checkpoint(path, build_model(v["arch"], v["encoder"], None, v["name"]), {"variant": v})
        models.append(str(path))
    none = {"method": "none", "radius": 8, "eps": 1e-3, "scale": 4, "band": 0.0}
    (root / "test_probs.json").write_text(
        json.dumps(
            {"models": models, "tta_hflip": True, "edge_refine": none, "weights": {"a": 1.0}, "config_hash": "cafe01"}
        )
    )
    (root / "threshold.json").write_text(json.dumps({"threshold": threshold, "mean_dice": 0.5}))
    return root


def jpeg(w: int = 240, h: int = 160) -> bytes:
    """A smooth photo (small files even at 1918x1280, under the test server's 1 MB upload limit)."""
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.dstack([xx * 255 // w, yy * 255 // h, (xx + yy) * 127 // (w + h)]).astype(np.uint8)
    return cv2.imencode(".jpg", rgb)[1].tobytes()


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes]]) -> tuple[bytes, str]:
    """A multipart/form-data body (urllib has no encoder)."""
    boundary = "----carvanaseg7f3a"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode() for k, v in fields.items()
    ]
    for k, (name, data) in files.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"; filename="{name}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n".encode()
            + data
            + b"\r\n"
        )
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


# every bad input of the cut-out API: (files, fields, status, words of the message) for a server started with
# --max-upload-mb 1 --max-megapixels 4; the drop-in endpoints (test_dropin.py) get each of them too
BAD_INPUTS = {
    "not an image": ({"image_file": ("x.jpg", b"hello, not a photo")}, {}, 415, "image_file: not an image"),
    "zero bytes": ({"image_file": ("x.jpg", b"")}, {}, 400, "image_file: empty"),
    "truncated": ({"image_file": ("x.jpg", jpeg()[:3000])}, {}, 400, "image_file: truncated JPEG"),
    "png with alpha": ({"image_file": ("x.png", png(np.zeros((64, 64, 4), np.uint8)))}, {}, 422, "alpha channel"),
    "1x1": ({"image_file": ("x.png", png(np.zeros((1, 1, 3), np.uint8)))}, {}, 422, "1x1 pixels"),
    "huge": ({"image_file": ("x.png", png(np.zeros((3000, 3000), np.uint8)))}, {}, 413, "9.0 megapixels"),
    "upload limit": ({"image_file": ("x.jpg", b"\xff\xd8" + bytes(1_200_000))}, {}, 413, "upload limit"),
    "missing": ({}, {"format": "png"}, 422, "image_file: missing"),
    "bad format": (None, {"format": "gif"}, 422, "format: must be one of"),
    "bad colour": (None, {"bg_color": "not-a-colour"}, 422, "bg_color"),
    "bad margin": (None, {"crop": "true", "crop_margin": "lots"}, 422, "crop_margin"),
    "bad base64": ({}, {"image_file_b64": "%%%"}, 400, "image_file_b64: not valid base64"),
    "bad background": (
        {"image_file": ("x.jpg", jpeg()), "bg_image_file": ("b.jpg", b"nope")},
        {},
        415,
        "bg_image_file: not an image",
    ),
}
